"""Events into agents: encoding, idempotency, asks, and pushes to subscribers.

:class:`Dispatcher` is the one way an event reaches an agent, whoever sends it (the facade,
the delivery loop, another agent's ``ask``). A message with an idempotency key is handled
at most once per key: a retry waits for a handler of the same key still running, then
returns the recorded replies.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from ..address import AgentAddress
from ..errors import InvalidMessage
from ..payload import pack, unpack
from .envelope import Envelope, EventTiming
from .kind import KindTable
from .registry import Registry
from .services import CoreServices

logger = logging.getLogger("roost.dispatch")

IDEMPOTENCY_KEY_MAX = 255
_PUSH_BUFFER = 256


class Dispatcher:
    """Delivers events to agents through the registry."""

    def __init__(self, services: CoreServices, kinds: KindTable, registry: Registry) -> None:
        self._services = services
        self._kinds = kinds
        self._registry = registry
        self._idempotent_in_flight: dict[tuple[AgentAddress, str], trio.Event] = {}

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
        handled: tuple[str, float | None] | None = None,
        timing: EventTiming | None = None,
    ) -> list[Any]:
        """Deliver one event and return the replies of its whole handler (see
        ``Host.send``)."""
        kind = self._kinds.of(address)
        envelope = Envelope(
            event_kind,
            pack(payload),
            idempotency_key,
            on_reply,
            on_token=on_token,
            chain=chain,
            handled=handled,
            trace_context=self._services.telemetry.current_context(),
            timing=timing,
        )
        if idempotency_key is None:
            return await self._registry.deliver(address, kind, envelope)
        check_idempotency_key(idempotency_key)
        slot = (address, idempotency_key)
        while (running := self._idempotent_in_flight.get(slot)) is not None:
            await running.wait()
        # No checkpoint between the check above and taking the slot: one runner per key.
        self._idempotent_in_flight[slot] = done = trio.Event()
        try:
            stores = self._services.stores
            cached = await stores.run(stores.store.read_response, address, idempotency_key)
            if cached is not None:
                replies: list[Any] = unpack(cached)
                if on_reply is not None:
                    for reply in replies:
                        on_reply(reply)
                return replies
            return await self._registry.deliver(address, self._kinds.of(address), envelope)
        finally:
            del self._idempotent_in_flight[slot]
            done.set()

    async def ask(
        self,
        sender: AgentAddress,
        target: AgentAddress,
        message: Any,
        *,
        timeout_s: float,
        chain: tuple[str, ...],
    ) -> list[Any]:
        """An ``agent`` event from ``sender``, and the target's replies (the agents
        capability's ``ask``)."""
        with trio.fail_after(timeout_s):
            return await self.deliver(
                target, "agent", {"sender": str(sender), "message": message}, chain=chain
            )


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
