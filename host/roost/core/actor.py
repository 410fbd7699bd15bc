"""The per-agent actor: a bounded mailbox, its lifecycle, and the ops a handler awaits.

An actor exists while its agent is resident. It handles one event at a time, to the end:
the event's first turn, then one turn per completion of each async op the handler awaits
(each turn is :mod:`.turn`'s). It idles on its mailbox until the kind's idle timeout, then
hibernates: the instance is dropped, the state is already committed. A failed turn drops the
instance too; the next event starts from the last committed state.

With tracing on, each turn is a span whose parent is the context the event was sent from.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable

import trio

from .._lifetime import open_service_nursery
from ..address import AgentAddress
from ..capabilities import OpContext, bound_turn
from ..errors import (
    AgentBusy,
    AgentUnavailable,
    CpuDeadlineExceeded,
    GuestAbiError,
    GuestError,
    RoostError,
)
from ..payload import pack
from ..sandbox.protocol import Sandbox, TurnOutput, TurnSliceExceeded
from ..telemetry import end_span
from .envelope import Envelope
from .kind import Kind
from .ops import Completion, Continuations, StartedOp, replayed, run_op
from .services import CoreServices
from .turn import GuestCall, Handling, TurnContext, TurnResult, TurnRunner

logger = logging.getLogger("roost.actor")


class AgentActor:
    """The resident form of one agent."""

    __slots__ = (
        "_activation_s",
        "_continuations",
        "_event_ids",
        "_idle_scope",
        "_inline",
        "_on_deadline",
        "_on_handled",
        "_on_stopped",
        "_receive",
        "_redeployed",
        "_sandbox",
        "_send",
        "_services",
        "_turns",
        "activated",
        "address",
        "closed",
        "fence",
        "finished",
        "in_turn",
        "kind",
        "last_active",
        "pending_ops",
    )

    def __init__(
        self,
        address: AgentAddress,
        kind: Kind,
        services: CoreServices,
        continuations: Continuations,
        *,
        on_stopped: Callable[[AgentActor], None],
        on_deadline: Callable[[AgentAddress], None] = lambda _address: None,
        on_handled: Callable[[AgentAddress], None] = lambda _address: None,
        fence: int | None = None,
    ) -> None:
        self.address = address
        self.kind = kind
        self.fence = fence
        """The fencing token of the agent's lease this host holds."""
        self._services = services
        self._continuations = continuations
        self._on_stopped = on_stopped
        self._on_deadline = on_deadline
        self._on_handled = on_handled
        self._turns = TurnRunner(address, kind, services, fence)
        limits = kind.manifest.limits
        self._send, self._receive = trio.open_memory_channel[Envelope](limits.mailbox_size)
        self._sandbox: Sandbox | None = None
        self._event_ids = itertools.count(1)
        self._idle_scope: trio.CancelScope | None = None
        self.closed = False
        self.finished = trio.Event()
        """Set once the actor's task has ended and its instance is gone."""
        self.activated = False
        """True once an instance was created; a stopping actor then counts as hibernated."""
        self._activation_s: float | None = None
        """How long the last activation took (instantiate + init), until it is recorded."""
        self.last_active = trio.current_time()
        """Trio time of the last committed turn (or of the actor's start)."""
        self.pending_ops = 0
        """Ops the event being handled awaits (they keep the agent resident)."""
        self.in_turn = False
        self._inline = True
        """Whether event turns may run on the event loop (a light kind's, until one runs
        past its slice)."""
        self._redeployed: Kind | None = None
        """The agent's kind was redeployed: switch to this one before the next event."""

    # -- called by the registry (trio loop, synchronous) --------------------------------
    def redeploy(self, kind: Kind) -> None:
        """Run the events after the current one on ``kind``, a new version of the agent's
        kind: one instance at a time, in the order the events came."""
        self._redeployed = kind

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
        try:
            # The event the actor was started for is queued already: the task's start was
            # its scheduling point, so take it without the idle timer or another yield.
            first = None if self.closed else self._take_queued()
            if first is not None:
                await self._handle(first)
                self.last_active = trio.current_time()
            while not self.closed:
                idle_timeout = (self._redeployed or self.kind).manifest.limits.idle_timeout_s
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
            if self.activated:
                self._services.counters.hibernations += 1
            self._on_stopped(self)
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
            # Freeing a large linear memory takes a while: not on the event loop.
            self._services.workers.dispose(self._sandbox.close)
            self._sandbox = None

    # -- one event ----------------------------------------------------------------------
    async def _handle(self, envelope: Envelope) -> None:
        if self._redeployed is not None:
            self._drop_instance()
            self.kind, self._redeployed = self._redeployed, None
            self._turns = TurnRunner(self.address, self.kind, self._services, self.fence)
            self._inline = True
        handling = Handling(envelope.message_id, replay=envelope.replay)
        error: RoostError | None = None
        try:
            await self._handle_in(envelope, handling)
        except RoostError as exc:
            error = exc
        except Exception as exc:  # a host bug must not take the host down
            logger.exception("agent %s: internal error handling an event", self.address)
            error = RoostError(f"internal error handling the event: {exc!r}")
        if error is not None:
            self._drop_instance()
            if isinstance(error, GuestError):
                self._services.metrics.trap(self.address.kind, error)
            if isinstance(error, CpuDeadlineExceeded):
                self._on_deadline(self.address)
            await self._turns.record_failure(envelope, handling, error)
        else:
            self._on_handled(self.address)
        self.pending_ops = 0
        envelope.finish(error)

    async def _handle_in(self, envelope: Envelope, handling: Handling) -> None:
        event_id = next(self._event_ids)
        activate = None if self._sandbox is not None else self._activation()

        def first(turn: TurnContext) -> TurnOutput:
            # Loading the state, activation and the first turn share one worker-thread trip.
            if activate is not None:
                activate(turn)
            sandbox = self._sandbox
            if sandbox is None:
                raise GuestAbiError("no instance to run the event in")
            return sandbox.on_event(
                event_id, envelope.kind, envelope.payload, slice_ms=turn.slice_ms
            )

        inline = self._inline and self.kind.factory.light and self._services.inline_slice_ms > 0
        try:
            result = await self._turn(
                first,
                envelope,
                handling,
                event_id,
                "on-event",
                inline=inline,
                waking=activate is not None,
            )
        except TurnSliceExceeded:
            # Too long for the event loop. Nothing of it counts: run it again, from the
            # committed state, on a worker thread, as every later turn of this agent.
            self._inline = False
            self._drop_instance()
            handling = Handling(handling.message_id, replay=handling.replay)
            activate = self._activation()
            result = await self._turn(first, envelope, handling, event_id, "on-event", waking=True)
        if result.final:
            return  # ops the handler started without awaiting them end with the event
        async with open_service_nursery() as ops:
            await self._await_ops(envelope, handling, event_id, result.awaited, ops)
            ops.cancel_scope.cancel()

    async def _await_ops(
        self,
        envelope: Envelope,
        handling: Handling,
        event_id: int,
        awaited: list[StartedOp],
        ops: trio.Nursery,
    ) -> None:
        """Run the ops the handler awaits (or replay their journaled results) and one turn
        per completion, until the handler finishes."""
        completions_send, completions = trio.open_memory_channel[Completion](math.inf)

        async def run(op: StartedOp) -> None:
            if op.replayed is not None:
                await completions_send.send(replayed(op))
                return
            capability = self.kind.capabilities[op.capability]
            context = OpContext(
                address=self.address,
                idempotency_key=f"{handling.message_id}/{op.seq}",
                chain=envelope.chain,
                on_token=envelope.on_token,
                trace=op.trace,
            )
            runner = capability.op(op.call, op.request, context)
            await completions_send.send(await run_op(op, runner, self.address))

        outstanding = 0
        while True:
            for op in awaited:
                ops.start_soon(run, op)
            outstanding += len(awaited)
            self.pending_ops = handling.ops_running = outstanding
            if outstanding == 0:
                raise GuestAbiError(
                    "the handler neither finished nor awaits an async op",
                    address=str(self.address),
                )
            waited_from = time.perf_counter()
            counters = self._services.counters
            counters.waiting_on_ops += 1
            try:
                completion = await completions.receive()
            finally:
                counters.waiting_on_ops -= 1
            if envelope.timing is not None:
                envelope.timing.ops_s += time.perf_counter() - waited_from
            outstanding -= 1
            self.pending_ops = handling.ops_running = outstanding
            sandbox = self._sandbox
            if sandbox is None:
                raise GuestAbiError("the instance went away while an op was pending")

            def resume(
                turn: TurnContext, c: Completion = completion, sandbox: Sandbox = sandbox
            ) -> TurnOutput:
                return sandbox.on_complete(c.op.op_id, c.ok, c.value, slice_ms=turn.slice_ms)

            result = await self._turn(
                resume, envelope, handling, event_id, "on-complete", completion=completion
            )
            if result.final:
                return
            awaited = result.awaited

    async def _turn(
        self,
        call: GuestCall,
        envelope: Envelope,
        handling: Handling,
        event_id: int,
        export: str,
        *,
        inline: bool = False,
        completion: Completion | None = None,
        waking: bool = False,
    ) -> TurnResult:
        self.in_turn = True
        try:
            result = await self._turns.run(
                call,
                envelope,
                handling,
                event_id,
                export,
                inline=inline,
                completion=completion,
                waking=waking,
            )
        finally:
            self.in_turn = False
            if self._activation_s is not None:
                self._services.counters.activations += 1
                self._services.metrics.observe_wake(self.address.kind, self._activation_s)
                self._activation_s = None
        self.last_active = trio.current_time()
        for pending in result.continued:
            self._continuations.start(pending)
        return result

    def _activation(self) -> Callable[[TurnContext], None]:
        """The function that loads the committed state, instantiates the guest and runs its
        ``init``, as part of the given turn (a ``roost.activate`` span under the turn's)."""
        config = pack(
            {"kind": self.address.kind, "id": self.address.id, "config": self.kind.config}
        )
        turns = self._turns
        limits = self.kind.manifest.limits
        # On the event loop (it reads the clock). What init does through capabilities is
        # not committed: init restores; events change.
        init_turn = turns.new_turn(Handling("init", replay=False))

        def activate(turn: TurnContext) -> None:
            trace = turn.trace
            span = None if trace is None else trace.child("roost.activate")
            init_turn.trace = trace
            started = time.perf_counter()
            try:
                record = turn.reads.read_agent(self.address)
                state = None if record is None else record.state
                sandbox = self.kind.factory.instantiate(limits, slice_ms=turn.slice_ms)
                try:
                    with bound_turn(init_turn):
                        sandbox.init(config, state, slice_ms=turn.slice_ms)
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
            turns.state_bytes = len(state or b"")
            self.activated = True
            self._activation_s = time.perf_counter() - started
            if span is not None:
                end_span(
                    span,
                    None,
                    {
                        "roost.activation.restored": state is not None,
                        "roost.state.bytes": len(state or b""),
                    },
                )

        return activate
