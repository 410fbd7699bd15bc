"""An event on its way to an agent, and where its outcome lands."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from ..store.protocol import Handled


@dataclass(slots=True)
class EventTiming:
    """Where an event's time went, filled in while it is handled (``Host.send(timing=)``)."""

    ops_s: float = 0.0
    """Seconds the handler waited on its async ops (LLM and HTTP calls, asks, sleeps):
    the part of the reply time the host does not add."""


@dataclass(eq=False)
class Envelope:
    """One event on its way to an agent, and the slot its outcome lands in."""

    kind: str
    """``message``, ``timer``, ``agent`` or ``continuation``."""
    payload: bytes
    """msgpack."""
    message_id: str
    """Names the event in the agent's inbox and journal: the id of the delivery it came
    from, or one made for it."""
    replay: bool = False
    """The event may have been handled partly before a crash (it came from the store)."""
    idempotency_key: str | None = None
    """When set, the final turn records the replies under this key in the same commit."""
    request_sha: str | None = None
    """A digest of the message, recorded with the replies under the idempotency key."""
    on_reply: Callable[[Any], None] | None = None
    """Called with each reply once the turn that produced it has committed."""
    on_token: Callable[[str], None] | None = None
    """Called with LLM tokens streamed while the event is handled."""
    chain: tuple[str, ...] = ()
    """The chain of asks that led to this event."""
    handled: Handled | None = None
    """The stored delivery this event comes from (or its inbox entry, once its handler
    spans turns): removed or re-armed by its final commit."""
    trace_context: Any = None
    """The trace context the event was sent from (tracing on): parent of its turns."""
    timing: EventTiming | None = None
    after_commit: Callable[[], None] | None = None
    """Called on the worker thread of the handler's final commit, right after it (a read of
    what the commit left, in the same thread trip); not called when that commit ran on the
    event loop or the handler failed."""
    admitted_at: float = 0.0
    """When the registry admitted it (``time.perf_counter``); 0 once its handler started."""
    replies: list[Any] = field(default_factory=list)
    reply_bytes: int = 0
    error: BaseException | None = None
    done: trio.Event = field(default_factory=trio.Event)

    def finish(self, error: BaseException | None = None) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()

    async def outcome(self) -> list[Any]:
        await self.done.wait()
        if self.error is not None:
            raise self.error
        return self.replies
