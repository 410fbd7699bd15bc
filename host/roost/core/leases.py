"""The leases this host holds on agents: acquired before an agent is activated, renewed in
batches, released once nothing uses them, given up when the store says they were lost.

An agent's lease is what lets a host activate it and commit for it (see "Leases" in
``roost.store.protocol``). The registry holds one for every resident agent; a WebSocket
open to an agent and a continuation-form op in flight hold one too (``hold``), so that
pushes and the op's result stay with the host that has them. A lease nothing holds any
more is released with the next batch, unless it is used again first.

Renewal runs every third of the lease's time to live; a lease the store says is lost
(the host was paused or cut off past its expiry and another host took it) is dropped and
whoever used it is told (``on_lost``): its commits would fail anyway (LeaseLost).

On a store that is not shared (SQLite) every call is in memory, on the event loop.
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

import trio

from ..address import AgentAddress
from ..errors import OwnedElsewhere, RoostError
from ..store.async_store import AsyncStore
from ..store.protocol import Lease

logger = logging.getLogger("roost.leases")

_T = TypeVar("_T")


def incarnation(host_id: str) -> str:
    """A lease holder's name for one run of host ``host_id``: ``"<host id>/<nonce>"``."""
    return f"{host_id}/{secrets.token_hex(4)}"


class LeaseKeeper:
    """The leases one host incarnation holds (see the module docstring)."""

    def __init__(self, stores: AsyncStore, *, owner: str, ttl_s: float) -> None:
        self._stores = stores
        self._store = stores.store
        self._shared = bool(stores.store.shared)
        self.owner = owner
        self.ttl_s = ttl_s
        self.url: str | None = None
        """Where this host serves, announced with every renewal (for forwarding)."""
        self._held: dict[AgentAddress, int] = {}
        self._users: Counter[AgentAddress] = Counter()
        self._busy: dict[AgentAddress, trio.Event] = {}
        """Agents whose lease is being acquired or released right now."""
        self._wake = trio.Event()
        self.on_lost: list[Callable[[AgentAddress], None]] = []
        self.acquired = 0
        self.lost = 0

    @property
    def shared(self) -> bool:
        return self._shared

    def token(self, address: AgentAddress) -> int | None:
        """The fencing token of the agent's lease, if this host holds it."""
        return self._held.get(address)

    def holds(self, address: AgentAddress) -> bool:
        return address in self._held

    @property
    def held(self) -> int:
        return len(self._held)

    async def acquire(self, address: AgentAddress) -> int:
        """The agent's fencing token: the lease this host holds, or takes now. Raises
        OwnedElsewhere when another live host holds it."""
        while True:
            token = self._held.get(address)
            if token is not None:
                return token
            busy = self._busy.get(address)
            if busy is None:
                break
            await busy.wait()
        self._busy[address] = done = trio.Event()
        try:
            lease = await self._call(self._store.acquire_lease, address, self.owner, self.ttl_s)
        finally:
            del self._busy[address]
            done.set()
        if lease.owner != self.owner:
            raise _owned_elsewhere(lease)
        self.acquired += 1
        self._held[address] = lease.token
        return lease.token

    def hold(self, address: AgentAddress) -> int:
        """Count one more user of a lease this host holds (after :meth:`acquire`); its
        token."""
        token = self._held[address]
        self._users[address] += 1
        return token

    def unhold(self, address: AgentAddress) -> None:
        """One user less; a lease with none left is released with the next batch."""
        left = self._users[address] - 1
        if left > 0:
            self._users[address] = left
            return
        del self._users[address]
        if address in self._held:
            self._wake.set()

    def drop(self, address: AgentAddress) -> None:
        """A commit found the lease lost: forget it and tell its users."""
        if self._held.pop(address, None) is not None:
            self._lost(address)

    async def advertise(self, url: str) -> None:
        """Announce where this host serves (before it takes requests), and from then on
        with every renewal."""
        self.url = url
        await self._renew()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Renew held leases every third of their time to live, and release unused ones
        (sooner when one becomes unused)."""
        task_status.started()
        interval = self.ttl_s / 3
        next_renewal = trio.current_time() + interval
        while True:
            with trio.move_on_at(next_renewal):
                await self._wake.wait()
            self._wake = trio.Event()
            try:
                await self._release_unused()
                if trio.current_time() >= next_renewal:
                    next_renewal = trio.current_time() + interval
                    await self._renew()
            except RoostError as exc:
                logger.warning("lease renewal failed (retrying): %s", exc)
            # Batch releases: at most a few per second.
            await trio.sleep(min(0.2, interval))

    async def aclose(self) -> None:
        """Release every lease this host holds (a clean stop: others take them at once)."""
        tokens = dict(self._held)
        self._held.clear()
        self._users.clear()
        if tokens:
            try:
                await self._call(self._store.release_leases, self.owner, tokens)
            except RoostError as exc:
                logger.warning("releasing leases at shutdown failed: %s", exc)

    async def _release_unused(self) -> None:
        unused = {a: t for a, t in self._held.items() if a not in self._users}
        if not unused:
            return
        events = {}
        for address in unused:
            del self._held[address]
            events[address] = self._busy[address] = trio.Event()
        try:
            await self._call(self._store.release_leases, self.owner, unused)
        finally:
            for address, event in events.items():
                del self._busy[address]
                event.set()

    async def _renew(self) -> None:
        tokens = dict(self._held)
        lost = await self._call(self._store.renew_leases, self.owner, self.url, tokens, self.ttl_s)
        for address in lost:
            if self._held.get(address) == tokens.get(address):
                del self._held[address]
                self._lost(address)

    def _lost(self, address: AgentAddress) -> None:
        self.lost += 1
        logger.warning("lease on %s lost: another host serves it now", address)
        for callback in self.on_lost:
            callback(address)

    async def _call(self, method: Callable[..., _T], *args: object) -> _T:
        if self._shared:
            return await self._stores.run(method, *args)
        return method(*args)  # in memory: never blocks


def _owned_elsewhere(lease: Lease) -> OwnedElsewhere:
    where = f" at {lease.owner_url}" if lease.owner_url else ""
    return OwnedElsewhere(
        f"agent {lease.address} is served by host {lease.owner}{where}; retry there",
        address=str(lease.address),
        owner=lease.owner,
        owner_url=lease.owner_url,
    )
