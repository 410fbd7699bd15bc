"""Events into agents: encoding, idempotency, asks, and pushes to subscribers.

:class:`Dispatcher` is the one way an event reaches an agent, whoever sends it (the facade,
the delivery loop, another agent's ``ask``). Each event gets a message id (the id of the
delivery it came from, or a new one) that names it in the agent's inbox and journal should
its handler span turns. A message with an idempotency key is handled once per key, across
crashes: a retry waits for a handler of the same key still running, returns the recorded
replies once there are some, picks up the key's inbox entry if a crash cut its handler
short, and is refused (IdempotencyKeyReused) if the key answered another message.

When several hosts share the store, an event for an agent another live host serves (its
lease, ``core/leases.py``) is forwarded to that host (``CoreServices.peers``), its replies
and tokens streamed back: callers see the same result wherever they sent the event.
Deliveries from the store are not forwarded: the owner's own delivery loop takes them.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from ..address import AgentAddress
from ..errors import (
    AgentUnavailable,
    AlreadyHandled,
    IdempotencyKeyReused,
    InvalidMessage,
    OwnedElsewhere,
)
from ..payload import pack, unpack
from ..store.protocol import Delivery, Handled
from .envelope import Envelope, EventTiming
from .kind import Kind, KindTable
from .registry import Registry
from .services import CoreServices

logger = logging.getLogger("roost.dispatch")

IDEMPOTENCY_KEY_MAX = 255
_FORWARD_RETRY_S = 0.25
_FORWARD_GRACE_S = 2.0
"""How long past a lease's time to live a forwarded event keeps trying its agent's host."""
_PUSH_BUFFER = 256


class Dispatcher:
    """Delivers events to agents through the registry."""

    def __init__(
        self,
        services: CoreServices,
        kinds: KindTable,
        registry: Registry,
        *,
        max_asks_in_flight: int,
    ) -> None:
        self._services = services
        self._kinds = kinds
        self._registry = registry
        self._max_asks_in_flight = max_asks_in_flight
        self._ask_slots: dict[tuple[str, int], trio.CapacityLimiter] = {}
        """Asks running, by the chain's first agent and the depth of the chain of asks."""
        self._idempotent_in_flight: dict[tuple[AgentAddress, str], trio.Event] = {}
        self._handling: set[tuple[AgentAddress, str]] = set()
        self._reads = 0
        self._finished: dict[tuple[AgentAddress, str], int] = {}
        """Events handled since a read of due deliveries began, by the read's number."""

    def is_handling(self, address: AgentAddress, message_id: str) -> bool:
        """Whether this host is handling the event of that delivery (or inbox entry) now."""
        return (address, message_id) in self._handling

    def begin_read(self) -> int:
        """Number a read of due deliveries about to start (see :meth:`stale`)."""
        self._reads += 1
        for key in [k for k, read in self._finished.items() if read < self._reads - 1]:
            del self._finished[key]
        return self._reads

    def stale(self, address: AgentAddress, message_id: str, read: int) -> bool:
        """Whether a delivery found by read number ``read`` must be left alone: this host
        is handling its event now, or finished handling it after that read began (the row
        may have been read before its handler's commit removed it)."""
        key = (address, message_id)
        return self.is_handling(address, message_id) or self._finished.get(key, 0) >= read

    async def deliver(
        self,
        address: AgentAddress,
        event_kind: str,
        payload: Any,
        *,
        idempotency_key: str | None = None,
        on_reply: Callable[[Any], None] | None = None,
        on_token: Callable[[str], None] | None = None,
        chain: tuple[str, ...] = (),
        handled: Handled | None = None,
        timing: EventTiming | None = None,
        after_commit: Callable[[], None] | None = None,
        forward: bool = True,
    ) -> list[Any]:
        """Deliver one event and return the replies of its whole handler (see
        ``Host.send``). ``handled`` names the stored delivery (or inbox entry) the event
        comes from. ``forward=False`` refuses (OwnedElsewhere) an event for an agent
        another host serves instead of forwarding it there (an event forwarded already)."""
        forward = forward and handled is None
        kind = self._kinds.of(address)
        packed = pack(payload)
        envelope = Envelope(
            event_kind,
            packed,
            message_id=handled.delivery_id if handled is not None else _new_message_id(),
            replay=handled is not None,
            idempotency_key=idempotency_key,
            on_reply=on_reply,
            on_token=on_token,
            chain=chain,
            handled=handled,
            trace_context=self._services.telemetry.current_context(),
            timing=timing,
            after_commit=after_commit,
        )
        if idempotency_key is None:
            return await self._post(address, kind, envelope, forward)
        check_idempotency_key(idempotency_key)
        envelope.request_sha = _request_digest(event_kind, packed)
        slot = (address, idempotency_key)
        while (running := self._idempotent_in_flight.get(slot)) is not None:
            await running.wait()
        # No checkpoint between the check above and taking the slot: one runner per key.
        self._idempotent_in_flight[slot] = done = trio.Event()
        try:
            recorded = await self._recorded(address, idempotency_key, envelope.request_sha)
            if recorded is not None:
                return _replay(recorded, on_reply)
            if handled is None:
                # A message of this key may sit in the inbox, its handler cut short by a
                # crash: handle that entry (replaying its journal), not a second copy.
                envelope.message_id = _inbox_id(address, idempotency_key)
                inbox = await self._inbox_entry(address, envelope.message_id)
                if inbox is not None:
                    if _request_digest(inbox.event_kind, inbox.payload) != envelope.request_sha:
                        raise IdempotencyKeyReused(
                            f"idempotency key {idempotency_key!r} is taken by another message "
                            f"to {address} (still being handled); use a new key for a new "
                            "message",
                            address=str(address),
                        )
                    envelope.handled = Handled(inbox.delivery_id, None, inbox.due_at)
                    envelope.replay = True
            try:
                return await self._post(address, self._kinds.of(address), envelope, forward)
            except AlreadyHandled:
                recorded = await self._recorded(address, idempotency_key, envelope.request_sha)
                if recorded is None:
                    raise
                return _replay(recorded, on_reply)
        finally:
            del self._idempotent_in_flight[slot]
            done.set()

    async def _post(
        self, address: AgentAddress, kind: Kind, envelope: Envelope, forward: bool
    ) -> list[Any]:
        handling = (address, envelope.message_id)
        self._handling.add(handling)
        try:
            # An owner that does not answer (it died, or is stopping) keeps its lease until
            # the lease expires: try again until then, when this host takes the agent over.
            deadline = trio.current_time() + self._services.leases.ttl_s + _FORWARD_GRACE_S
            while True:
                try:
                    return await self._registry.deliver(address, kind, envelope)
                except OwnedElsewhere as exc:
                    peers = self._services.peers
                    if not forward or peers is None or exc.owner_url is None:
                        raise
                    try:
                        return await peers.deliver(
                            exc.owner_url,
                            address,
                            envelope.kind,
                            envelope.payload,
                            idempotency_key=envelope.idempotency_key,
                            chain=envelope.chain,
                            on_reply=envelope.on_reply,
                            on_token=envelope.on_token,
                        )
                    except AgentUnavailable:
                        if trio.current_time() > deadline:
                            raise
                        await trio.sleep(_FORWARD_RETRY_S)
        finally:
            self._handling.discard(handling)
            if envelope.handled is not None:  # a stored delivery or inbox entry
                self._finished[handling] = self._reads

    async def _recorded(
        self, address: AgentAddress, key: str, request_sha: str | None
    ) -> bytes | None:
        """The response recorded under ``key``; IdempotencyKeyReused if it answered
        another message."""
        stores = self._services.stores
        record = await stores.run(stores.store.read_response, address, key)
        if record is None:
            return None
        if record.request_sha is not None and record.request_sha != request_sha:
            raise IdempotencyKeyReused(
                f"idempotency key {key!r} already answered a different message to {address}; "
                "use a new key for a new message",
                address=str(address),
            )
        return record.response

    async def _inbox_entry(self, address: AgentAddress, message_id: str) -> Delivery | None:
        stores = self._services.stores
        deliveries = await stores.run(stores.store.read_deliveries, address)
        return next((d for d in deliveries if d.delivery_id == message_id), None)

    async def ask(
        self,
        sender: AgentAddress,
        target: AgentAddress,
        message: Any,
        *,
        timeout_s: float,
        chain: tuple[str, ...],
        idempotency_key: str | None = None,
    ) -> list[Any]:
        """An ``agent`` event from ``sender``, and the target's replies (the agents
        capability's ``ask``). An ask op run again after a crash carries the same key, and
        the target handles it once."""
        key = None
        if idempotency_key is not None:
            digest = hashlib.sha256(f"{sender}\0{idempotency_key}".encode()).hexdigest()
            key = f"ask-{digest[:40]}"
        with trio.fail_after(timeout_s):
            async with self._ask_slot(chain[0], len(chain)):
                return await self.deliver(
                    target,
                    "agent",
                    {"sender": str(sender), "message": message},
                    chain=chain,
                    idempotency_key=key,
                )

    @asynccontextmanager
    async def _ask_slot(self, root: str, depth: int) -> AsyncIterator[None]:
        """One of the slots for asks at this depth of the chains of asks that agent
        ``root`` began; past ``max_asks_in_flight`` an ask waits (within its timeout) for
        one to free, first come first served. Asks are accepted work, never refused for
        load; the bound keeps one agent's asks, fanning out and asking again, from
        flooding the host with activations and turns at its neighbours' expense, while
        the asks of other agents go on. Slots are per depth, so an ask holding one never
        waits on a slot that only its own nested asks could free."""
        slot = (root, depth)
        limiter = self._ask_slots.get(slot)
        if limiter is None:
            limiter = self._ask_slots[slot] = trio.CapacityLimiter(self._max_asks_in_flight)
        try:
            async with limiter:
                yield
        finally:
            stats = limiter.statistics()
            if not stats.borrowed_tokens and not stats.tasks_waiting:
                self._ask_slots.pop(slot, None)


_BOOT = secrets.token_hex(8)
_MESSAGE_NUMBERS = itertools.count(1)


def _new_message_id() -> str:
    """A message id unique across restarts (a random prefix per process, then a count)."""
    return f"in-{_BOOT}-{next(_MESSAGE_NUMBERS)}"


def _request_digest(event_kind: str, payload: bytes) -> str:
    return hashlib.sha256(event_kind.encode() + b"\0" + payload).hexdigest()


def _inbox_id(address: AgentAddress, key: str) -> str:
    """The inbox entry of the message with idempotency key ``key``: one per key."""
    return "in-" + hashlib.sha256(f"{address}\0{key}".encode()).hexdigest()[:32]


def _replay(recorded: bytes, on_reply: Callable[[Any], None] | None) -> list[Any]:
    replies: list[Any] = unpack(recorded)
    if on_reply is not None:
        for reply in replies:
            on_reply(reply)
    return replies


class Pushes:
    """Replies agents produce for events nobody waits on (timers, messages from other
    agents, continuations), handed to whoever subscribed to the agent (WebSockets)."""

    def __init__(self) -> None:
        self._subscribers: dict[AgentAddress, set[trio.MemorySendChannel[Any]]] = {}

    @asynccontextmanager
    async def subscribe(
        self, address: AgentAddress
    ) -> AsyncIterator[trio.MemoryReceiveChannel[Any]]:
        send, receive = trio.open_memory_channel[Any](_PUSH_BUFFER)
        self._subscribers.setdefault(address, set()).add(send)
        try:
            yield receive
        finally:
            subscribers = self._subscribers.get(address, set())
            subscribers.discard(send)
            if not subscribers:
                self._subscribers.pop(address, None)
            send.close()

    def publish(self, address: AgentAddress, reply: Any) -> None:
        """Hand a reply to the agent's subscribers; a subscriber that fell too far behind
        loses it rather than holding up the agent."""
        for channel in list(self._subscribers.get(address, ())):
            try:
                channel.send_nowait(reply)
            except trio.WouldBlock:
                logger.warning("push to a slow subscriber of %s dropped", address)
            except trio.ClosedResourceError:
                pass

    def count(self, address: AgentAddress) -> int:
        """Subscribers of ``address`` now."""
        return len(self._subscribers.get(address, ()))


def check_idempotency_key(key: str) -> None:
    if not 0 < len(key) <= IDEMPOTENCY_KEY_MAX or not key.isprintable():
        raise InvalidMessage(f"idempotency keys are 1-{IDEMPOTENCY_KEY_MAX} printable characters")
