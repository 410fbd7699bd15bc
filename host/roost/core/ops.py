"""Async ops: what a turn started, running them, and the ones that outlive their turn.

An op a handler awaits runs in the actor's nursery while the agent stays resident; its
result re-enters the guest as an ``on-complete`` turn. A continuation-form op (``then=``)
runs detached here, and its result becomes a ``continuation`` delivery, so the agent may
hibernate meanwhile.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from ..address import AgentAddress
from ..capabilities import Continuation, OpRunner
from ..errors import CapabilityError
from ..payload import pack, unpack
from ..store.protocol import Commit, Delivery, Usage
from ..wall_clock import utc_day
from .services import CoreServices

if TYPE_CHECKING:
    from ..telemetry import TurnTrace

logger = logging.getLogger("roost.ops")


@dataclass(slots=True)
class StartedOp:
    """An async op the guest started; it runs once the turn that started it commits."""

    op_id: int
    capability: str
    run: OpRunner
    continuation: Continuation | None = None
    trace: TurnTrace | None = None
    """The span of the turn that started the op (None when tracing is off)."""


@dataclass(frozen=True, slots=True)
class Completion:
    """How an op ended: ``value`` is its msgpack result when ``ok``, else the error text."""

    op_id: int
    ok: bool
    value: bytes | str
    usage: Usage | None = None


async def run_op(op: StartedOp, address: AgentAddress) -> Completion:
    """Run ``op`` (with the span of the turn that started it as the current span, so what
    it sends on is traced under that turn). Failures come back as an error completion."""
    try:
        if op.trace is None:
            result = await op.run()
        else:
            with op.trace.activated():
                result = await op.run()
    except CapabilityError as exc:
        return Completion(op.op_id, False, str(exc))
    except Exception as exc:
        logger.exception("agent %s: %s op failed", address, op.capability)
        return Completion(op.op_id, False, f"{op.capability} failed: {exc}")
    return Completion(op.op_id, True, result.value, result.usage)


class Continuations:
    """Runs continuation-form ops detached from the agent's instance; each result is
    committed as a ``continuation`` delivery for the agent (with the op's usage)."""

    def __init__(self, services: CoreServices, nursery: trio.Nursery) -> None:
        self._services = services
        self._nursery = nursery

    def start(self, address: AgentAddress, op: StartedOp) -> None:
        self._nursery.start_soon(self._run, address, op)

    async def _run(self, address: AgentAddress, op: StartedOp) -> None:
        continuation = op.continuation
        assert continuation is not None
        completion = await run_op(op, address)
        value = unpack(completion.value) if isinstance(completion.value, bytes) else None
        payload = pack(
            {
                "handler": continuation.handler,
                "tag": continuation.tag,
                "ok": completion.ok,
                "value": value if completion.ok else completion.value,
            }
        )
        now = self._services.clock.now()
        delivery = Delivery(
            address=address,
            delivery_id=f"c-{uuid.uuid4().hex}",
            due_at=now,
            event_kind="continuation",
            payload=payload,
        )
        await self._services.stores.commit(
            Commit(
                address,
                at=now,
                turn=False,
                deliveries=[delivery],
                usage=completion.usage,
                usage_day=utc_day(now),
            )
        )
        self._services.deliveries_due.ring()
