"""One turn: its context, running it against the sandbox, its limits and budgets, and the
commit that records it.

A turn is one call into the guest (``init`` aside: ``on-event`` or ``on-complete``). It runs
on a worker thread (or, for a light kind's event turn, on the event loop within a slice),
with the turn bound for host calls. A host-side fault is recorded rather than raised into
wasm, and fails the turn once the guest returns.

Exactly once per message. The turns that handle one event share a :class:`Handling`: what
they did through capabilities (kv writes, timers, messages sent), the state the guest last
handed back, the usage, and the ops started. Nothing of it is committed until the
handler's final turn, whose commit applies all of it at once, with the event's recorded
response and the removal of the delivery it came from. The turns before commit only what
makes a crash survivable: the message itself, in the agent's inbox (a delivery the host
re-runs after a restart), and the results of the ops they consumed, in the journal. A
handler re-run after a crash starts from the last committed state and gets the journaled
results of its ops again, in order, instead of running them again. So whatever the
handler awaits and whenever the host dies, its effects apply once.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..address import AgentAddress
from ..capabilities import Capability, Continuation, TurnEffects, bound_turn
from ..errors import GuestAbiError, LimitExceeded, QuotaExceeded, ReplyTooDeep, RoostError
from ..limits import Budgets, Limits
from ..payload import MAX_DEPTH, nested_deeper, pack, unpack
from ..sandbox.protocol import TurnOutput, TurnSliceExceeded
from ..store.protocol import Commit, Delivery, Handled, JournalEntry, PendingOp, TurnReads, Usage
from ..telemetry import TurnTrace, trap_name
from ..wall_clock import utc_day
from .envelope import Envelope
from .kind import Kind
from .ops import Completion, StartedOp
from .services import CoreServices

logger = logging.getLogger("roost.turn")

GuestCall = Callable[["TurnContext"], TurnOutput]
"""Runs the guest for one turn (given the turn: its ``slice_ms``); returns its output."""


@dataclass(slots=True)
class Handling:
    """One event's handler, across the turns it takes (see the module docstring)."""

    message_id: str
    """Names the message in the inbox and the journal (a delivery's id, or a new one)."""
    replay: bool
    """The handler may have run before a crash: look for journaled op results."""
    effects: dict[str, tuple[Capability[Any], Any]] = field(default_factory=dict)
    """Each capability's state, held until the final turn."""
    state: bytes | None = None
    """The state the guest last handed back, not committed yet."""
    turns: int = 0
    cpu_ms: float = 0.0
    ops_started: int = 0
    ops_running: int = 0
    """Ops started and not completed yet (kept by the actor)."""
    journal: dict[int, JournalEntry] | None = None
    """Journaled op results (read on the first op of a replay)."""
    journaled: bool = False
    """Entries exist in the journal for this message (to clear at the end)."""
    continued: list[StartedOp] | None = None
    """Continuation-form ops, started once the final commit is in."""
    started_cost: Usage = field(default_factory=Usage)
    """What the ops of the turns committed so far may cost (``Capability.started_cost``):
    charged if the handler fails before its final commit."""
    recorded_llm_tokens: int = 0
    """LLM tokens of op results the committed turns consumed, already in the usage."""

    def next_seq(self) -> int:
        """The number of the next op the handler starts (1, 2, ...)."""
        self.ops_started += 1
        return self.ops_started


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
    handling: Handling
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
    denials: dict[str, int] | None = None
    """Host calls refused in this turn, by capability."""

    def fail(self, error: RoostError) -> None:
        """Record a host-side fault; the first one wins and fails the turn."""
        if self.fault is None:
            self.fault = error

    def note_denial(self, capability: str) -> int:
        if self.denials is None:
            self.denials = {}
        count = self.denials[capability] = self.denials.get(capability, 0) + 1
        return count

    def start_op(
        self,
        capability: str,
        call: str,
        request: bytes,
        continuation: Continuation | None = None,
    ) -> int:
        handling = self.handling
        if len(self.ops) >= self.limits.max_ops_per_turn:
            raise QuotaExceeded(
                f"more than {self.limits.max_ops_per_turn} async ops in one turn "
                "(limits.max_ops_per_turn)"
            )
        if continuation is None and (
            handling.ops_running + len(self.ops) >= self.limits.max_pending_ops
        ):
            raise QuotaExceeded(
                f"{handling.ops_running + len(self.ops)} async ops are running for agent "
                f"{self.address}; the kind allows limits.max_pending_ops = "
                f"{self.limits.max_pending_ops}"
            )
        op = StartedOp(
            op_id=self.next_op_id(),
            seq=handling.next_seq(),
            capability=capability,
            call=call,
            request=request,
            continuation=continuation,
            trace=self.trace,
        )
        if continuation is None and handling.replay:
            if handling.journal is None:
                entries = self.reads.read_journal(self.address, handling.message_id)
                handling.journal = {entry.seq: entry for entry in entries}
                handling.journaled = bool(entries)
            entry = handling.journal.get(op.seq)
            if entry is not None:
                if (entry.capability, entry.call, entry.request_sha) == (
                    capability,
                    call,
                    op.request_sha,
                ):
                    op.replayed = entry
                else:
                    logger.warning(
                        "agent %s: op %d of message %s differs from the one journaled before "
                        "the restart (%s.%s); it runs again",
                        self.address,
                        op.seq,
                        handling.message_id,
                        entry.capability,
                        entry.call,
                    )
        self.ops.append(op)
        return op.op_id

    def check_budget(self, what: str, used: float, adding: float, budget: float | None) -> None:
        """Refuse with QuotaExceeded when ``used + adding`` passes ``budget``."""
        if budget is not None and used + adding > budget:
            raise QuotaExceeded(
                f"agent {self.address} is over its {what} budget ({used:g} used of {budget:g} "
                f"today; budgets.{what})"
            )

    def local(self, capability: Capability[Any]) -> Any:
        """``capability``'s state in this handler, made on first use."""
        entry = self.handling.effects.get(capability.name)
        if entry is None:
            entry = (capability, capability.begin_turn(self))
            self.handling.effects[capability.name] = entry
        return entry[1]

    def effects(self) -> TurnEffects:
        """What the capabilities this handler used add to its commit."""
        effects = TurnEffects()
        for capability, state in self.handling.effects.values():
            capability.add_effects(state, effects)
        return effects


@dataclass(frozen=True, slots=True)
class TurnResult:
    """A turn that ran (and committed what it had to)."""

    output: TurnOutput
    final: bool
    """The handler finished in this turn."""
    awaited: list[StartedOp]
    """The ops the handler awaits, for the actor to run."""
    continued: list[PendingOp]
    """Continuation-form ops the final commit kept, to run detached now."""


class TurnRunner:
    """Runs the turns of one resident agent, one at a time."""

    __slots__ = ("_op_ids", "_services", "address", "fence", "kind", "state_bytes")

    def __init__(
        self, address: AgentAddress, kind: Kind, services: CoreServices, fence: int | None = None
    ) -> None:
        self.address = address
        self.kind = kind
        self.fence = fence
        """The fencing token of the agent's lease: every commit carries it."""
        self._services = services
        self._op_ids = itertools.count(1)
        self.state_bytes = 0
        """Size of the last committed state (set when the agent is activated)."""

    def new_turn(self, handling: Handling, envelope: Envelope | None = None) -> TurnContext:
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
            handling=handling,
            day=utc_day(now),
            chain=envelope.chain if envelope is not None else (),
            on_token=envelope.on_token if envelope is not None else None,
        )

    async def run(
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
        """Run one turn, check it, commit what it must, and hand out its replies. ``inline``
        runs it on the event loop within the host's slice (TurnSliceExceeded when it
        overruns); ``completion`` is the op result this turn receives; ``waking`` says the
        call instantiates the agent first (background work for the workers)."""
        services = self._services
        turn = self.new_turn(handling, envelope)
        if inline:
            turn.slice_ms = services.inline_slice_ms
        if services.telemetry.tracing:
            turn.trace = services.telemetry.start_turn(
                self.address, envelope.kind, export, envelope.trace_context
            )
        started = turn_started = time.perf_counter()
        outcome = "ok"
        try:
            if inline:
                output, commit, replies = self._execute(call, turn, envelope, event_id, completion)
                if commit is not None:
                    await services.stores.commit(commit)
            else:

                def on_worker() -> tuple[TurnOutput, Commit | None, list[Any]]:
                    nonlocal turn_started
                    turn_started = time.perf_counter()
                    executed = self._execute(call, turn, envelope, event_id, completion)
                    if executed[1] is not None:
                        services.store.commit(executed[1])
                    if envelope.after_commit is not None and event_id in executed[0].done:
                        envelope.after_commit()
                    return executed

                output, commit, replies = await services.workers.run(
                    on_worker, owner=self.address.kind, background=waking
                )
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
            raise
        finally:
            seconds = time.perf_counter() - started
            services.metrics.observe_turn(self.address, seconds, export, outcome)
            if envelope.admitted_at:  # the event's first turn: how long did it queue?
                services.queue_delay.observe(self.address.kind, turn_started - envelope.admitted_at)
                envelope.admitted_at = 0.0
        final = event_id in output.done
        if turn.trace is not None:
            turn.trace.end(None, self._attributes(turn, output))
        if commit is not None:
            if any(d.delivery_id != handling.message_id for d in commit.deliveries):
                # Timers and messages for other agents wake the delivery loop; the inbox
                # copy of the message this agent is handling now does not (the loop would
                # read every message in flight only to skip them: it finds the copy by its
                # periodic recheck if this host stops before the handler ends).
                services.deliveries_due.ring()
            if final and commit.state is not None:
                self.state_bytes = len(commit.state)
            if not final and commit.deliveries:  # the message is in the inbox now
                inbox = commit.deliveries[0]
                envelope.handled = Handled(inbox.delivery_id, None, inbox.due_at)
            if commit.journal:
                handling.journaled = True
            if not final and commit.usage is not None:
                handling.recorded_llm_tokens += commit.usage.llm_tokens
        if not final and turn.ops:
            handling.started_cost = _started_cost(handling)
        services.counters.turns += 1
        envelope.replies.extend(replies)
        if envelope.on_reply is not None:
            for reply in replies:
                envelope.on_reply(reply)
        awaited = turn.ops
        continued: list[PendingOp] = []
        if turn.ops and any(op.continuation is not None for op in turn.ops):
            awaited = [op for op in turn.ops if op.continuation is None]
            new_continued = [op for op in turn.ops if op.continuation is not None]
            handling.continued = (handling.continued or []) + new_continued
            if final and commit is not None:
                continued = list(commit.ops_started)
        return TurnResult(output, final, awaited, continued)

    def _execute(
        self,
        call: GuestCall,
        turn: TurnContext,
        envelope: Envelope,
        event_id: int,
        completion: Completion | None,
    ) -> tuple[TurnOutput, Commit | None, list[Any]]:
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
            turn.handling.cpu_ms += turn.cpu_ms
        if turn.fault is not None:
            raise turn.fault
        replies = self._checked_replies(output, envelope, event_id)
        handling = turn.handling
        handling.turns += 1
        if output.state is not None:
            if len(output.state) > self.kind.manifest.limits.max_state_bytes:
                raise LimitExceeded(
                    f"state is {len(output.state)} bytes; the kind allows "
                    f"limits.max_state_bytes = {self.kind.manifest.limits.max_state_bytes}",
                    address=str(self.address),
                )
            handling.state = output.state
        commit: Commit | None
        if event_id in output.done:
            commit = self._final_commit(turn, envelope, replies, completion)
        else:
            commit = self._progress_commit(turn, envelope, completion)
        return output, commit, replies

    def _checked_replies(self, output: TurnOutput, envelope: Envelope, event_id: int) -> list[Any]:
        limits = self.kind.manifest.limits
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
        replies = [_decode_reply(p) for p in payloads]
        for reply in replies:
            if nested_deeper(reply, MAX_DEPTH):
                raise ReplyTooDeep(
                    f"a reply nests lists and maps more than {MAX_DEPTH} levels deep, more than "
                    "a JSON reply may; flatten it",
                    address=str(self.address),
                )
        envelope.reply_bytes = reply_bytes
        return replies

    def _progress_commit(
        self, turn: TurnContext, envelope: Envelope, completion: Completion | None
    ) -> Commit | None:
        """What a turn that did not finish the handler commits: the message into the
        inbox (the first time), the op result it consumed into the journal. None when
        there is nothing to keep."""
        handling = turn.handling
        deliveries = []
        if envelope.handled is None:
            deliveries.append(
                Delivery(
                    address=self.address,
                    delivery_id=handling.message_id,
                    due_at=turn.now,
                    event_kind=envelope.kind,
                    payload=envelope.payload,
                    idempotency_key=envelope.idempotency_key,
                )
            )
        journal = []
        usage = None
        if completion is not None and completion.fresh:
            journal.append(completion.journal_entry(handling.message_id))
            usage = completion.usage
        if not deliveries and not journal:
            return None
        return Commit(
            address=self.address,
            at=turn.now,
            turn=False,
            deliveries=deliveries,
            journal=journal,
            usage=usage,
            usage_day=turn.day,
            fence=self.fence,
        )

    def _final_commit(
        self,
        turn: TurnContext,
        envelope: Envelope,
        replies: list[Any],
        completion: Completion | None,
    ) -> Commit:
        """The handler's effects, all of them, with the event's response and the removal
        of the delivery (or inbox entry) it came from."""
        budgets = self.kind.manifest.budgets
        handling = turn.handling
        effects = turn.effects()
        if budgets.storage_bytes is not None and (
            handling.state is not None or effects.kv_bytes is not None
        ):
            record = turn.reads.read_agent(self.address)
            state_bytes = (
                len(handling.state)
                if handling.state is not None
                else (0 if record is None or record.state is None else len(record.state))
            )
            kv_bytes = effects.kv_bytes
            if kv_bytes is None:
                kv_bytes = 0 if record is None else record.kv_bytes
            stored = state_bytes + kv_bytes
            if stored > budgets.storage_bytes:
                raise QuotaExceeded(
                    f"agent {self.address} would store {stored} bytes of state and kv; "
                    f"budgets.storage_bytes = {budgets.storage_bytes}",
                )
        usage = effects.usage + Usage(turns=handling.turns, cpu_ms=handling.cpu_ms)
        if completion is not None and completion.fresh and completion.usage is not None:
            usage += completion.usage
        key = envelope.idempotency_key
        continued = [
            PendingOp(
                address=self.address,
                op_key=f"{handling.message_id}/{op.seq}",
                capability=op.capability,
                call=op.call,
                request=op.request,
                handler=op.continuation.handler,
                tag=pack(op.continuation.tag),
            )
            for op in (handling.continued or []) + turn.ops
            if op.continuation is not None
        ]
        return Commit(
            address=self.address,
            at=turn.now,
            turns=handling.turns,
            state=handling.state,
            kv_writes=effects.kv_writes,
            kv_bytes=effects.kv_bytes,
            idempotency_key=key,
            response=pack(envelope.replies + replies) if key is not None else None,
            request_sha=envelope.request_sha if key is not None else None,
            deliveries=effects.deliveries,
            cancelled=effects.cancelled,
            handled=envelope.handled,
            clear_journal=handling.message_id if handling.journaled else None,
            ops_started=continued,
            usage=usage,
            usage_day=turn.day,
            fence=self.fence,
        )

    async def record_failure(
        self, envelope: Envelope, handling: Handling, error: BaseException
    ) -> None:
        """A failed handler commits nothing of its effects, but its error, its CPU and
        what the ops it started may cost count in the usage (so a handler cannot spend past
        its budgets by failing). A message that failed leaves the inbox (its sender was
        told; a retry is a new attempt), while a delivery stays for the delivery loop to
        retry."""
        now = self._services.clock.now()
        started = handling.started_cost
        usage = Usage(
            errors=1,
            cpu_ms=handling.cpu_ms,
            http_calls=started.http_calls,
            llm_output_tokens=max(0, started.llm_tokens - handling.recorded_llm_tokens),
        )
        inbox_entry = (
            envelope.handled
            if envelope.handled is not None
            and envelope.handled.delivery_id == handling.message_id
            and not handling.replay
            else None
        )
        try:
            await self._services.stores.commit(
                Commit(
                    self.address,
                    at=now,
                    turn=False,
                    handled=inbox_entry,
                    clear_journal=handling.message_id
                    if inbox_entry is not None and handling.journaled
                    else None,
                    usage=usage,
                    usage_day=utc_day(now),
                    fence=self.fence,
                )
            )
        except Exception as exc:
            logger.warning(
                "agent %s: could not record a failed handler's usage: %s",
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


def _started_cost(handling: Handling) -> Usage:
    cost = Usage()
    for capability, state in handling.effects.values():
        cost += capability.started_cost(state)
    return cost
