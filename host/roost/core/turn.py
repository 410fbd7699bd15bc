"""One turn: its context, running it against the sandbox, its limits and budgets, and the
commit that records it.

A turn is one call into the guest (``init`` aside: ``on-event`` or ``on-complete``). It runs
on a worker thread (or, for a light kind's event turn, on the event loop within a slice),
with the turn bound for host calls. Everything it does is buffered (in the per-turn state of
each capability it used, and the ops it started) and reaches the store in one commit, built
and written on the same thread: state, kv writes, timers and messages, usage and, for the
event's final turn, its recorded response and the delivery it handled. A host-side fault is
recorded rather than raised into wasm, and fails the turn once the guest returns. A failed
turn commits nothing but its usage (an error, the CPU it spent).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..address import AgentAddress
from ..capabilities import Capability, Continuation, OpRunner, TurnEffects, bound_turn
from ..errors import GuestAbiError, LimitExceeded, QuotaExceeded, RoostError
from ..limits import Budgets, Limits
from ..payload import pack, unpack
from ..sandbox.protocol import TurnOutput, TurnSliceExceeded
from ..store.protocol import Commit, TurnReads, Usage
from ..telemetry import TurnTrace, trap_name
from ..wall_clock import utc_day
from .envelope import Envelope
from .kind import Kind
from .ops import StartedOp
from .services import CoreServices

if TYPE_CHECKING:
    pass

logger = logging.getLogger("roost.turn")

GuestCall = Callable[["TurnContext"], TurnOutput]
"""Runs the guest for one turn (given the turn: its ``slice_ms``); returns its output."""

_MISSING = object()


@dataclass(slots=True)
class TurnContext:
    """What one turn has read and done so far; what host calls see of it
    (``roost.capabilities.TurnView``)."""

    address: AgentAddress
    limits: Limits
    budgets: Budgets
    reads: TurnReads
    now: float
    """Wall-clock time at the start of the turn (unix seconds)."""
    next_op_id: Callable[[], int]
    day: str = ""
    """UTC day of ``now`` (``YYYY-MM-DD``), the unit of daily budgets."""
    chain: tuple[str, ...] = ()
    """Addresses of the agents whose asks led to this event (to refuse cycles)."""
    on_token: Callable[[str], None] | None = None
    """Streams LLM tokens to whoever sent the event being handled."""
    trace: TurnTrace | None = None
    """The turn's span, when tracing is on."""
    slice_ms: int | None = None
    """Set when the turn runs on the event loop: stop it once it has run this long."""
    cpu_ms: float = 0.0
    """CPU time the guest used in this turn (set by the thread that ran it)."""
    wall_ms: float = 0.0
    """Wall-clock time of the guest call."""
    ops: list[StartedOp] = field(default_factory=list)
    fault: RoostError | None = None
    _locals: dict[str, tuple[Capability[Any], Any]] = field(default_factory=dict)

    def fail(self, error: RoostError) -> None:
        """Record a host-side fault; the first one wins and fails the turn."""
        if self.fault is None:
            self.fault = error

    def start_op(
        self, capability: str, run: OpRunner, continuation: Continuation | None = None
    ) -> int:
        op_id = self.next_op_id()
        self.ops.append(StartedOp(op_id, capability, run, continuation, self.trace))
        return op_id

    def check_budget(self, what: str, used: float, adding: float, budget: float | None) -> None:
        """Refuse with QuotaExceeded when ``used + adding`` passes ``budget``."""
        if budget is not None and used + adding > budget:
            raise QuotaExceeded(
                f"agent {self.address} is over its {what} budget ({used:g} used of {budget:g} "
                f"today; budgets.{what})"
            )

    def local(self, capability: Capability[Any]) -> Any:
        """``capability``'s state in this turn, made on first use."""
        entry = self._locals.get(capability.name)
        if entry is None:
            entry = (capability, capability.begin_turn(self))
            self._locals[capability.name] = entry
        return entry[1]

    def effects(self) -> TurnEffects:
        """What the capabilities this turn used add to its commit."""
        effects = TurnEffects()
        for capability, state in self._locals.values():
            capability.add_effects(state, effects)
        return effects


@dataclass(frozen=True, slots=True)
class TurnResult:
    """A committed turn."""

    output: TurnOutput
    awaited: list[StartedOp]
    """The ops the handler awaits, for the actor to run."""
    continued: list[StartedOp]
    """Continuation-form ops, to run detached."""


class TurnRunner:
    """Runs the turns of one resident agent, one at a time."""

    def __init__(self, address: AgentAddress, kind: Kind, services: CoreServices) -> None:
        self.address = address
        self.kind = kind
        self._services = services
        self._op_ids = itertools.count(1)
        self.state_bytes = 0
        """Size of the last committed state (set when the agent is activated)."""

    def new_turn(self, envelope: Envelope | None = None) -> TurnContext:
        """A fresh context for a turn of the event in ``envelope`` (or for ``init``)."""
        now = self._services.clock.now()
        manifest = self.kind.manifest
        return TurnContext(
            address=self.address,
            limits=manifest.limits,
            budgets=manifest.budgets,
            reads=self._services.store,
            now=now,
            next_op_id=self._op_ids.__next__,
            day=utc_day(now),
            chain=envelope.chain if envelope is not None else (),
            on_token=envelope.on_token if envelope is not None else None,
        )

    async def run(
        self,
        call: GuestCall,
        envelope: Envelope,
        event_id: int,
        export: str,
        *,
        inline: bool = False,
        op_usage: Usage | None = None,
    ) -> TurnResult:
        """Run one turn, check it, commit it, and hand out its replies. ``inline`` runs it
        on the event loop within the host's slice (TurnSliceExceeded when it overruns);
        ``op_usage`` is what the op whose result this turn receives used."""
        services = self._services
        turn = self.new_turn(envelope)
        if inline:
            turn.slice_ms = services.inline_slice_ms
        if services.telemetry.tracing:
            turn.trace = services.telemetry.start_turn(
                self.address, envelope.kind, export, envelope.trace_context
            )
        started = time.perf_counter()
        outcome = "ok"
        try:
            if inline:
                output, commit, replies = self._execute(call, turn, envelope, event_id, op_usage)
                await services.stores.commit(commit)
            else:

                def on_worker() -> tuple[TurnOutput, Commit, list[Any]]:
                    executed = self._execute(call, turn, envelope, event_id, op_usage)
                    services.store.commit(executed[1])
                    return executed

                output, commit, replies = await services.workers.run(on_worker)
        except TurnSliceExceeded as exc:
            outcome = trap_name(exc)
            if turn.trace is not None:
                attributes = self._attributes(turn, None)
                turn.trace.end(None, {**attributes, "roost.turn.slice_exceeded": True})
            raise
        except BaseException as exc:
            outcome = trap_name(exc)
            if turn.trace is not None:
                turn.trace.end(exc, self._attributes(turn, None))
            if isinstance(exc, Exception):
                await self._record_failure(turn)
            raise
        finally:
            seconds = time.perf_counter() - started
            services.metrics.observe_turn(self.address, seconds, export, outcome)
        if turn.trace is not None:
            turn.trace.end(None, self._attributes(turn, output))
        if commit.deliveries:
            services.deliveries_due.ring()
        if output.state is not None:
            self.state_bytes = len(output.state)
        services.counters.turns += 1
        envelope.replies.extend(replies)
        if envelope.on_reply is not None:
            for reply in replies:
                envelope.on_reply(reply)
        awaited = [op for op in turn.ops if op.continuation is None]
        continued = [op for op in turn.ops if op.continuation is not None]
        return TurnResult(output, awaited, continued)

    def _execute(
        self,
        call: GuestCall,
        turn: TurnContext,
        envelope: Envelope,
        event_id: int,
        op_usage: Usage | None,
    ) -> tuple[TurnOutput, Commit, list[Any]]:
        """Run the guest and build the commit (on the thread the turn runs on)."""
        budgets = self.kind.manifest.budgets
        if budgets.cpu_ms_per_day is not None:
            used = turn.reads.read_usage(self.address, turn.day).cpu_ms
            turn.check_budget("cpu_ms_per_day", used, 0, budgets.cpu_ms_per_day)
        cpu_started = time.thread_time()
        wall_started = time.perf_counter()
        try:
            with bound_turn(turn):
                if turn.trace is None:
                    output = call(turn)
                else:
                    with turn.trace.activated():
                        output = call(turn)
        finally:
            turn.cpu_ms = (time.thread_time() - cpu_started) * 1000
            turn.wall_ms = (time.perf_counter() - wall_started) * 1000
        if turn.fault is not None:
            raise turn.fault
        commit, replies = self._commit_of(output, turn, envelope, event_id, op_usage)
        return output, commit, replies

    def _commit_of(
        self,
        output: TurnOutput,
        turn: TurnContext,
        envelope: Envelope,
        event_id: int,
        op_usage: Usage | None,
    ) -> tuple[Commit, list[Any]]:
        """Check the turn's output against the kind's limits and budgets; the commit that
        records it and its decoded replies."""
        limits = self.kind.manifest.limits
        budgets = self.kind.manifest.budgets
        payloads = []
        for reply in output.replies:
            if reply.event_id != event_id:
                raise GuestAbiError(f"reply tagged with unknown event {reply.event_id}")
            payloads.append(reply.payload)
        reply_bytes = envelope.reply_bytes + sum(len(p) for p in payloads)
        if reply_bytes > limits.max_reply_bytes:
            raise LimitExceeded(
                f"replies to one event total {reply_bytes} bytes; the kind allows "
                f"limits.max_reply_bytes = {limits.max_reply_bytes}",
                address=str(self.address),
            )
        if output.state is not None and len(output.state) > limits.max_state_bytes:
            raise LimitExceeded(
                f"state is {len(output.state)} bytes; the kind allows "
                f"limits.max_state_bytes = {limits.max_state_bytes}",
                address=str(self.address),
            )
        effects = turn.effects()
        if budgets.storage_bytes is not None and output.state is not None:
            kv_bytes = effects.kv_bytes
            if kv_bytes is None:
                record = turn.reads.read_agent(self.address)
                kv_bytes = 0 if record is None else record.kv_bytes
            stored = len(output.state) + kv_bytes
            if stored > budgets.storage_bytes:
                raise QuotaExceeded(
                    f"agent {self.address} would store {stored} bytes of state and kv; "
                    f"budgets.storage_bytes = {budgets.storage_bytes}",
                )
        replies = [_decode_reply(p) for p in payloads]
        envelope.reply_bytes = reply_bytes
        final = event_id in output.done
        record_response = final and envelope.idempotency_key is not None
        usage = effects.usage + Usage(turns=1, cpu_ms=turn.cpu_ms)
        if op_usage is not None:
            usage += op_usage
        commit = Commit(
            address=self.address,
            at=turn.now,
            state=output.state,
            kv_writes=effects.kv_writes,
            kv_bytes=effects.kv_bytes,
            idempotency_key=envelope.idempotency_key if record_response else None,
            response=pack(envelope.replies + replies) if record_response else None,
            deliveries=effects.deliveries,
            cancelled=effects.cancelled,
            handled=envelope.handled if final else None,
            usage=usage,
            usage_day=turn.day,
        )
        return commit, replies

    async def _record_failure(self, turn: TurnContext) -> None:
        """A failed turn commits nothing, but its error and CPU count in the usage."""
        try:
            await self._services.stores.commit(
                Commit(
                    self.address,
                    at=turn.now,
                    turn=False,
                    usage=Usage(errors=1, cpu_ms=turn.cpu_ms),
                    usage_day=turn.day,
                )
            )
        except Exception as exc:
            logger.warning(
                "agent %s: could not record a failed turn's usage: %s",
                self.address,
                exc,
                extra={"agent_kind": self.address.kind, "agent_id": self.address.id},
            )

    def _attributes(self, turn: TurnContext, output: TurnOutput | None) -> dict[str, Any]:
        tick_ms = self._services.epoch_tick_ms
        deadline_ms = self.kind.manifest.limits.cpu_deadline_ms
        attributes: dict[str, Any] = {
            "roost.turn.cpu_ms": turn.cpu_ms,
            "roost.turn.epoch_ticks": int(turn.wall_ms // tick_ms),
            "roost.turn.epoch_deadline_ticks": -(-deadline_ms // tick_ms) + 1,
            "roost.turn.ops_started": len(turn.ops),
            "roost.state.bytes": self.state_bytes,
        }
        if output is not None:
            attributes["roost.turn.replies"] = len(output.replies)
            attributes["roost.turn.state_changed"] = output.state is not None
        return attributes


def _decode_reply(payload: bytes) -> Any:
    try:
        return unpack(payload)
    except Exception as exc:
        raise GuestAbiError(f"a reply is not valid msgpack: {exc}") from None
