"""Leases kept in memory, for a store that one host uses alone (SQLite).

The same protocol as a shared store's (``roost.store.protocol``, "Leases"), in a dict under a
lock: tokens grow per agent for as long as the process lives, expiry follows the wall clock.
A new process starts with no leases, which is right for a store only one host opens.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

from ..address import AgentAddress
from ..errors import LeaseLost
from .protocol import Lease, owner_host


class MemoryLeases:
    """Agents' leases and the hosts' announced URLs, in memory (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._leases: dict[AgentAddress, Lease] = {}
        self._urls: dict[str, str | None] = {}

    def acquire(self, address: AgentAddress, owner: str, ttl_s: float) -> Lease:
        now = time.time()
        with self._lock:
            held = self._leases.get(address)
            if held is not None and held.owner == owner and held.expires_at > now:
                lease = Lease(address, owner, held.token, now + ttl_s)
            elif held is None or takeable(held.owner, held.expires_at, owner, now):
                token = 1 if held is None else held.token + 1
                lease = Lease(address, owner, token, now + ttl_s)
            else:
                return Lease(
                    address, held.owner, held.token, held.expires_at, self._urls.get(held.owner)
                )
            self._leases[address] = lease
            return Lease(address, owner, lease.token, lease.expires_at, self._urls.get(owner))

    def renew(
        self, owner: str, url: str | None, tokens: Mapping[AgentAddress, int], ttl_s: float
    ) -> set[AgentAddress]:
        now = time.time()
        lost: set[AgentAddress] = set()
        with self._lock:
            self._urls[owner] = url
            for address, token in tokens.items():
                held = self._leases.get(address)
                if (
                    held is None
                    or held.owner != owner
                    or held.token != token
                    or held.expires_at <= now
                ):
                    lost.add(address)
                else:
                    self._leases[address] = Lease(address, owner, token, now + ttl_s)
        return lost

    def release(self, owner: str, tokens: Mapping[AgentAddress, int]) -> None:
        now = time.time()
        with self._lock:
            for address, token in tokens.items():
                held = self._leases.get(address)
                if held is not None and held.owner == owner and held.token == token:
                    self._leases[address] = Lease(address, "", token, now)

    def check(self, address: AgentAddress, fence: int) -> None:
        """LeaseLost unless ``fence`` is the agent's lease now and has not expired."""
        with self._lock:
            held = self._leases.get(address)
            if held is None or held.token != fence or not held.owner:
                raise LeaseLost(f"the lease on {address} (token {fence}) is no longer held")
            if held.expires_at <= time.time():
                raise LeaseLost(f"the lease on {address} (token {fence}) expired")

    def may_take(self, address: AgentAddress, owner: str) -> bool:
        """Whether ``owner`` holds the agent's lease or could take it now."""
        with self._lock:
            held = self._leases.get(address)
        return (
            held is None
            or held.owner == owner
            or takeable(held.owner, held.expires_at, owner, time.time())
        )


def takeable(holder: str, expires_at: float, owner: str, now: float) -> bool:
    """Whether ``owner`` may take a lease that ``holder`` has until ``expires_at``: it is
    free, expired, or held by an earlier incarnation of ``owner``'s host."""
    return (
        not holder
        or expires_at <= now
        or (holder != owner and owner_host(holder) == owner_host(owner))
    )
