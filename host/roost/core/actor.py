"""The per-agent actor: a bounded mailbox, serial turns, pending async ops, an idle timer.

An actor exists while its agent is resident. It handles one event at a time, to the end:
the event's first turn, then one turn per completion of each async op the handler awaits.
Each turn's effects are committed before the next turn starts; the caller gets the replies
once the handler finished. A failed turn commits nothing (but the error and the CPU it
spent count in the agent's usage) and discards the instance; the next event starts from the
last committed state.

With tracing on, each turn is a span whose parent is the context the event was sent from;
it travels with the turn (``TurnContext.trace``) to the worker thread and to the ops.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack
import trio

from .._lifetime import open_service_nursery
from ..address import AgentAddress
from ..errors import (
    AgentBusy,
    AgentUnavailable,
    CapabilityError,
    GuestAbiError,
    GuestError,
    LimitExceeded,
    QuotaExceeded,
    RoostError,
)
from ..sandbox.protocol import Sandbox, TurnOutput, TurnSliceExceeded
from ..store.protocol import TurnCommit, Usage
from ..telemetry import end_span
from .turn import StartedOp, TurnContext

logger = logging.getLogger("roost.agent")

if TYPE_CHECKING:
    from .kind import Kind
    from .registry import Supervisor


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
    payload: bytes
    idempotency_key: str | None = None
    """When set, the final turn records the replies under this key in the same commit."""
    on_reply: Callable[[Any], None] | None = None
    """Called with each reply once the turn that produced it has committed."""
    on_token: Callable[[str], None] | None = None
    """Called with LLM tokens streamed while the event is handled."""
    chain: tuple[str, ...] = ()
    """The chain of asks that led to this event."""
    handled: tuple[str, float | None] | None = None
    """The stored delivery this event comes from: removed (or re-armed) by its final turn."""
    trace_context: Any = None
    """The trace context the event was sent from (tracing on): parent of its turns."""
    timing: EventTiming | None = None
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


@dataclass(frozen=True, slots=True)
class _Completion:
    op_id: int
    ok: bool
    value: bytes | str


class AgentActor:
    """The resident form of one agent."""

    def __init__(self, address: AgentAddress, kind: Kind, supervisor: Supervisor) -> None:
        self.address = address
        self.kind = kind
        self._supervisor = supervisor
        limits = kind.manifest.limits
        self._send, self._receive = trio.open_memory_channel[Envelope](limits.mailbox_size)
        self._sandbox: Sandbox | None = None
        self._kv_bytes = 0
        self._state_bytes = 0
        self._state_loaded = False
        self._op_ids = itertools.count(1)
        self._event_ids = itertools.count(1)
        self._idle_scope: trio.CancelScope | None = None
        self.closed = False
        self.finished = trio.Event()
        """Set once the actor's task has ended and its instance is gone."""
        self.activated = False
        self.activation_s: float | None = None
        """How long the last activation took (instantiate + init), until it is recorded."""
        """True once an instance was created; a stopping actor then counts as hibernated."""
        self.last_active = trio.current_time()
        """Trio time of the last committed turn (or of the actor's start)."""
        self.pending_ops = 0
        """Ops the event being handled awaits (they keep the agent resident)."""
        self.in_turn = False
        self._inline = True
        """Whether event turns may run on the event loop (a light kind's, until one runs
        past its slice)."""

    # -- called from the supervisor (trio loop, synchronous) ----------------------------
    def post(self, envelope: Envelope) -> None:
        """Queue an event, or raise AgentBusy when the mailbox is full."""
        if self.closed:
            raise AgentUnavailable("agent is hibernating", address=str(self.address))
        try:
            self._send.send_nowait(envelope)
        except trio.WouldBlock:
            raise AgentBusy(
                f"agent {self.address} has {self.kind.manifest.limits.mailbox_size} events "
                "queued (limits.mailbox_size); retry shortly",
                address=str(self.address),
            ) from None

    @property
    def idle(self) -> bool:
        """Waiting for events with nothing queued: safe to hibernate now."""
        return self._idle_scope is not None and self._mailbox_empty()

    def hibernate_now(self) -> bool:
        """Ask an idle actor to hibernate; returns False if it is busy."""
        if not self.idle or self._idle_scope is None:
            return False
        self.closed = True
        self._idle_scope.cancel()
        return True

    @property
    def has_instance(self) -> bool:
        return self._sandbox is not None

    def stop(self) -> None:
        """Hibernate as soon as the current event (if any) is handled; queue nothing more."""
        self.closed = True
        if self._idle_scope is not None:
            self._idle_scope.cancel()

    def _mailbox_empty(self) -> bool:
        return self._receive.statistics().current_buffer_used == 0

    @property
    def queued(self) -> int:
        """Events waiting in the mailbox."""
        return int(self._receive.statistics().current_buffer_used)

    def held_by(self, now: float) -> tuple[str, ...]:
        """Why the agent is still resident when no turn has committed for longer than its
        idle timeout (empty otherwise): ``pending_op``, ``turn_running``,
        ``mailbox_not_empty``."""
        if self.closed or now - self.last_active <= self.kind.manifest.limits.idle_timeout_s:
            return ()
        reasons = []
        if self.pending_ops:
            reasons.append("pending_op")
        if self.in_turn:
            reasons.append("turn_running")
        if not self._mailbox_empty():
            reasons.append("mailbox_not_empty")
        return tuple(reasons)

    # -- the actor's task ---------------------------------------------------------------
    async def run(self) -> None:
        idle_timeout = self.kind.manifest.limits.idle_timeout_s
        try:
            # The event the actor was started for is queued already: the task's start was
            # its scheduling point, so take it without the idle timer or another yield.
            first = None if self.closed else self._take_queued()
            if first is not None:
                await self._handle(first)
                self.last_active = trio.current_time()
            while not self.closed:
                with trio.CancelScope(deadline=trio.current_time() + idle_timeout) as scope:
                    self._idle_scope = scope
                    envelope = await self._receive.receive()
                self._idle_scope = None
                if scope.cancelled_caught:
                    if self._mailbox_empty():
                        self.closed = True
                    continue
                await self._handle(envelope)
                self.last_active = trio.current_time()
        finally:
            self.closed = True
            self._idle_scope = None
            self._drop_instance()
            self._fail_queued(AgentUnavailable("agent stopped", address=str(self.address)))
            self._supervisor.actor_stopped(self)
            self.finished.set()

    def _take_queued(self) -> Envelope | None:
        try:
            return self._receive.receive_nowait()
        except trio.WouldBlock:
            return None

    def _fail_queued(self, error: RoostError) -> None:
        while True:
            try:
                envelope = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return
            envelope.finish(error)

    def _drop_instance(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None

    # -- one event ----------------------------------------------------------------------
    async def _handle(self, envelope: Envelope) -> None:
        error: RoostError | None = None
        try:
            await self._handle_in(envelope)
        except RoostError as exc:
            error = exc
        except Exception as exc:  # a host bug must not take the host down
            logger.exception("agent %s: internal error handling an event", self.address)
            error = RoostError(f"internal error handling the event: {exc!r}")
        if error is not None:
            self._drop_instance()
            if isinstance(error, GuestError):
                self._supervisor.metrics.trap(self.address.kind, error)
        self.pending_ops = 0
        envelope.finish(error)

    async def _handle_in(self, envelope: Envelope) -> None:
        event_id = next(self._event_ids)
        activate = None if self._sandbox is not None else self._prepare_activation()

        def first(turn: TurnContext) -> TurnOutput:
            # Loading the state, activation and the first turn share one worker-thread trip.
            if activate is not None:
                activate(turn)
                turn.kv_bytes = self._kv_bytes
            sandbox = self._sandbox
            if sandbox is None:
                raise GuestAbiError("no instance to run the event in")
            return sandbox.on_event(turn, event_id, envelope.kind, envelope.payload)

        supervisor = self._supervisor
        inline = self._inline and self.kind.factory.light and supervisor.inline_slice_ms > 0
        try:
            output, awaited = await self._turn(first, envelope, event_id, "on-event", inline=inline)
        except TurnSliceExceeded:
            # Too long for the event loop. Nothing of it counts: run it again, from the
            # committed state, on a worker thread, as every later turn of this agent.
            self._inline = False
            self._drop_instance()
            activate = self._prepare_activation()
            output, awaited = await self._turn(first, envelope, event_id, "on-event")
        if event_id in output.done:
            return  # ops the handler started without awaiting them end with the event
        async with open_service_nursery() as ops:
            await self._await_ops(envelope, event_id, output, awaited, ops)
            ops.cancel_scope.cancel()

    async def _await_ops(
        self,
        envelope: Envelope,
        event_id: int,
        output: TurnOutput,
        awaited: list[StartedOp],
        ops: trio.Nursery,
    ) -> None:
        """Run the ops the handler awaits and one turn per completion, until it finishes."""
        completions_send, completions = trio.open_memory_channel[_Completion](math.inf)
        outstanding = 0
        while True:
            if event_id in output.done:
                return
            for op in awaited:
                ops.start_soon(self._run_op, op, completions_send)
            outstanding += len(awaited)
            self.pending_ops = outstanding
            if outstanding == 0:
                raise GuestAbiError(
                    "the handler neither finished nor awaits an async op",
                    address=str(self.address),
                )
            waited_from = time.perf_counter()
            completion = await completions.receive()
            if envelope.timing is not None:
                envelope.timing.ops_s += time.perf_counter() - waited_from
            outstanding -= 1
            self.pending_ops = outstanding
            sandbox = self._sandbox
            if sandbox is None:
                raise GuestAbiError("the instance went away while an op was pending")

            def resume(
                turn: TurnContext, c: _Completion = completion, sandbox: Sandbox = sandbox
            ) -> TurnOutput:
                return sandbox.on_complete(turn, c.op_id, c.ok, c.value)

            output, awaited = await self._turn(resume, envelope, event_id, "on-complete")

    def _prepare_activation(self) -> Callable[[TurnContext], Sandbox]:
        """The function that loads the committed state, instantiates the guest and runs its
        ``init``, as part of the given turn (a ``roost.activate`` span under the turn's)."""
        config = msgpack.packb(
            {"kind": self.address.kind, "id": self.address.id, "config": self.kind.config},
            use_bin_type=True,
        )
        init_turn = self._new_turn()
        limits = self.kind.manifest.limits

        def activate(turn: TurnContext) -> Sandbox:
            trace = turn.trace
            span = None if trace is None else trace.child("roost.activate")
            init_turn.trace = trace
            init_turn.slice_ms = turn.slice_ms
            started = time.perf_counter()
            try:
                record = self._supervisor.store.read_agent(self.address)
                state = None if record is None else record.state
                self._kv_bytes = init_turn.kv_bytes = 0 if record is None else record.kv_bytes
                sandbox = self.kind.factory.instantiate(limits)
                try:
                    sandbox.init(init_turn, config, state)
                    if init_turn.fault is not None:
                        raise init_turn.fault
                except BaseException:
                    sandbox.close()
                    raise
            except BaseException as exc:
                if span is not None:
                    end_span(span, exc, {})
                raise
            self._sandbox = sandbox
            self._state_bytes = len(state or b"")
            self.activated = True
            self.activation_s = time.perf_counter() - started
            if span is not None:
                end_span(
                    span,
                    None,
                    {
                        "roost.activation.restored": state is not None,
                        "roost.state.bytes": len(state or b""),
                    },
                )
            return sandbox

        return activate

    def _new_turn(self, envelope: Envelope | None = None) -> TurnContext:
        now = self._supervisor.clock.now()
        return TurnContext(
            address=self.address,
            limits=self.kind.manifest.limits,
            budgets=self.kind.manifest.budgets,
            day=utc_day(now),
            store=self._supervisor.store,
            now=now,
            kv_bytes=self._kv_bytes,
            next_op_id=lambda: next(self._op_ids),
            services=self._supervisor.services,
            chain=envelope.chain if envelope is not None else (),
            on_token=envelope.on_token if envelope is not None else None,
        )

    async def _turn(
        self,
        call: Callable[[TurnContext], TurnOutput],
        envelope: Envelope,
        event_id: int,
        export: str,
        *,
        inline: bool = False,
    ) -> tuple[TurnOutput, list[StartedOp]]:
        """Run one turn, check its limits, commit it, start its continuation ops; time it
        and, with tracing on, record it as a span. Returns the guest's output and the ops
        the handler awaits, for the caller to run. ``inline`` runs the turn on the event
        loop, within the host's slice."""
        supervisor = self._supervisor
        turn = self._new_turn(envelope)
        if inline:
            turn.slice_ms = supervisor.inline_slice_ms
        if supervisor.telemetry.tracing:
            turn.trace = supervisor.telemetry.start_turn(
                self.address, envelope.kind, export, envelope.trace_context
            )
        started = time.perf_counter()
        self.in_turn = True
        try:
            output, awaited = await self._commit_turn(call, turn, envelope, event_id)
        except TurnSliceExceeded:
            if turn.trace is not None:
                attributes = self._turn_attributes(turn, None)
                turn.trace.end(None, {**attributes, "roost.turn.slice_exceeded": True})
            raise
        except BaseException as exc:
            if turn.trace is not None:
                turn.trace.end(exc, self._turn_attributes(turn, None))
            if isinstance(exc, Exception):
                await self._record_failure(turn, exc)
            raise
        finally:
            self.in_turn = False
            supervisor.metrics.observe_turn(self.address.kind, time.perf_counter() - started)
        if turn.trace is not None:
            turn.trace.end(None, self._turn_attributes(turn, output))
        return output, awaited

    def _turn_attributes(self, turn: TurnContext, output: TurnOutput | None) -> dict[str, Any]:
        tick_ms = self._supervisor.epoch_tick_ms
        deadline_ms = self.kind.manifest.limits.cpu_deadline_ms
        attributes: dict[str, Any] = {
            "roost.turn.cpu_ms": turn.cpu_ms,
            "roost.turn.epoch_ticks": int(turn.wall_ms // tick_ms),
            "roost.turn.epoch_deadline_ticks": -(-deadline_ms // tick_ms) + 1,
            "roost.turn.kv_writes": len(turn.kv_writes),
            "roost.turn.ops_started": len(turn.ops),
            "roost.state.bytes": self._state_bytes,
        }
        if output is not None:
            attributes["roost.turn.replies"] = len(output.replies)
            attributes["roost.turn.state_changed"] = output.state is not None
        return attributes

    async def _record_failure(self, turn: TurnContext, error: Exception) -> None:
        """A failed turn commits nothing, but its error and CPU count in the usage."""
        try:
            await self._supervisor.store.add_usage(
                self.address, turn.day, Usage(errors=1, cpu_ms=turn.cpu_ms)
            )
        except Exception as exc:
            logger.warning(
                "agent %s: could not record a failed turn's usage: %s",
                self.address,
                exc,
                extra={"agent_kind": self.address.kind, "agent_id": self.address.id},
            )

    async def _commit_turn(
        self,
        call: Callable[[TurnContext], TurnOutput],
        turn: TurnContext,
        envelope: Envelope,
        event_id: int,
    ) -> tuple[TurnOutput, list[StartedOp]]:
        """Run the turn and commit it, in one worker-thread trip (or on the event loop when
        the turn has a slice), then hand out its replies and start its ops."""
        budgets = self.kind.manifest.budgets
        store = self._supervisor.store

        def run_checked() -> tuple[TurnOutput, TurnCommit, list[Any], int]:
            if budgets.cpu_ms_per_day is not None:
                used = store.read_usage(self.address, turn.day).cpu_ms
                turn.check_budget("cpu_ms_per_day", used, 0, budgets.cpu_ms_per_day)
            if turn.trace is None:
                output = _timed(call, turn)
            else:
                with turn.trace.activated():
                    output = _timed(call, turn)
            if turn.fault is not None:
                raise turn.fault
            return output, *self._checked_commit(output, turn, envelope, event_id)

        def committed() -> tuple[TurnOutput, list[Any], int]:
            output, commit, decoded, reply_bytes = run_checked()
            store.write_turn(commit)
            return output, decoded, reply_bytes

        try:
            if turn.slice_ms is None:
                output, decoded, reply_bytes = await self._supervisor.run_guest(committed)
            else:
                output, commit, decoded, reply_bytes = run_checked()
                if not store.try_write_turn(commit):
                    await store.commit_turn(commit)
        finally:
            if self.activation_s is not None:
                self._supervisor.record_activation(self.activation_s)
                self._supervisor.metrics.observe_wake(self.address.kind, self.activation_s)
                self.activation_s = None
        if turn.deliveries:
            self._supervisor.deliveries_changed()
        self._kv_bytes = turn.kv_bytes
        if output.state is not None:
            self._state_bytes = len(output.state)
        self.last_active = trio.current_time()
        self._supervisor.record_turn()
        envelope.replies.extend(decoded)
        envelope.reply_bytes = reply_bytes
        if envelope.on_reply is not None:
            for reply in decoded:
                envelope.on_reply(reply)
        awaited = []
        for op in turn.ops:
            if op.continuation is None:
                awaited.append(op)
            else:
                self._supervisor.start_continuation(self.address, op)
        return output, awaited

    def _checked_commit(
        self, output: TurnOutput, turn: TurnContext, envelope: Envelope, event_id: int
    ) -> tuple[TurnCommit, list[Any], int]:
        """Check the turn's output against the kind's limits and budgets. Returns the commit
        that records it, its decoded replies and the bytes of every reply to the event."""
        limits = self.kind.manifest.limits
        budgets = self.kind.manifest.budgets
        replies = []
        for reply in output.replies:
            if reply.event_id != event_id:
                raise GuestAbiError(f"reply tagged with unknown event {reply.event_id}")
            replies.append(reply.payload)
        reply_bytes = envelope.reply_bytes + sum(len(p) for p in replies)
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
        if budgets.storage_bytes is not None and output.state is not None:
            stored = len(output.state) + turn.kv_bytes
            if stored > budgets.storage_bytes:
                raise QuotaExceeded(
                    f"agent {self.address} would store {stored} bytes of state and kv; "
                    f"budgets.storage_bytes = {budgets.storage_bytes}",
                )
        decoded = [_decode_reply(p) for p in replies]
        final = event_id in output.done
        record_response = final and envelope.idempotency_key is not None
        # Every turn commits, if only its usage.
        response = None
        if record_response:
            response = msgpack.packb(envelope.replies + decoded, use_bin_type=True)
        commit = TurnCommit(
            address=self.address,
            state=output.state,
            kv_writes=dict(turn.kv_writes),
            kv_bytes=turn.kv_bytes,
            at=turn.now,
            idempotency_key=envelope.idempotency_key if record_response else None,
            response=response,
            deliveries=list(turn.deliveries),
            cancelled=sorted(turn.cancelled),
            handled=envelope.handled if final else None,
            usage=Usage(turns=1, cpu_ms=turn.cpu_ms),
            usage_day=turn.day,
        )
        return commit, decoded, reply_bytes

    async def _run_op(
        self, op: StartedOp, completions: trio.MemorySendChannel[_Completion]
    ) -> None:
        try:
            value = await run_op(op)
        except CapabilityError as exc:
            await completions.send(_Completion(op.op_id, False, str(exc)))
        except Exception as exc:
            logger.exception("agent %s: %s op failed", self.address, op.capability)
            await completions.send(_Completion(op.op_id, False, f"{op.capability} failed: {exc}"))
        else:
            await completions.send(_Completion(op.op_id, True, value))


def _timed(call: Callable[[TurnContext], TurnOutput], turn: TurnContext) -> TurnOutput:
    """Run the guest call, measuring its CPU and wall time on this (worker) thread."""
    cpu_started = time.thread_time()
    wall_started = time.perf_counter()
    try:
        return call(turn)
    finally:
        turn.cpu_ms = (time.thread_time() - cpu_started) * 1000
        turn.wall_ms = (time.perf_counter() - wall_started) * 1000


async def run_op(op: StartedOp) -> bytes:
    """Run an op's task with the span of the turn that started it as the current span
    (tracing on), so what it sends on (an ``ask``'s event) is traced under that turn."""
    if op.trace is None:
        return await op.run()
    with op.trace.activated():
        return await op.run()


def utc_day(unix_time: float) -> str:
    """The UTC day of ``unix_time``, the unit of daily budgets."""
    return time.strftime("%Y-%m-%d", time.gmtime(unix_time))


def _decode_reply(payload: bytes) -> Any:
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:
        raise GuestAbiError(f"a reply is not valid msgpack: {exc}") from None
