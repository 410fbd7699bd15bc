"""Async ops: what a handler started, running them, and the ones that outlive their turn.

An op is data: the capability, the call and the request bytes its host call checked. The
capability's ``op()`` turns it into the coroutine that runs it, with an idempotency key
that is the same every time the op runs (``<message id>/<seq>``), so a provider that
honours ``Idempotency-Key`` serves a re-run after a crash once.

An op the handler awaits runs in the actor's nursery while the agent stays resident; its
result re-enters the guest as an ``on-complete`` turn, and is journaled so that a handler
re-run after a crash replays it rather than running the op again. A continuation-form op
(``then=``) is committed with the handler's final commit as a pending op; it runs detached
here, and the commit that hands its result to the agent (a ``continuation`` delivery)
removes it, so an op in flight when the host died runs again after the restart.

A continuation op holds its agent's lease while it runs (``core/leases.py``), so no other
host sharing the store runs it too, and its result is committed under that lease. On a
shared store the ops of agents whose lease lapsed (their host died) are picked up by the
hosts that take the lease, every ``CoreServices.recheck_s``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from ..address import AgentAddress
from ..capabilities import Continuation, OpContext, OpFailed, OpRunner, op_error_text
from ..errors import CapabilityError, OwnedElsewhere, RoostError, UnknownKind
from ..payload import pack, unpack
from ..store.protocol import Commit, Delivery, JournalEntry, PendingOp, Usage
from ..wall_clock import utc_day
from .kind import KindTable
from .services import CoreServices

if TYPE_CHECKING:
    from ..telemetry import TurnTrace

logger = logging.getLogger("roost.ops")

PENDING_OPS_BATCH = 1000
"""Pending ops read at once when resuming them after a start."""


@dataclass(slots=True)
class StartedOp:
    """An async op the guest started."""

    op_id: int
    """The guest's handle for it (unique within the instance)."""
    seq: int
    """Its place among the ops the handler started (1, 2, ...): how a re-run handler's op
    finds its journaled result."""
    capability: str
    call: str
    request: bytes
    continuation: Continuation | None = None
    trace: TurnTrace | None = None
    """The span of the turn that started the op (None when tracing is off)."""
    replayed: JournalEntry | None = None
    """The op's result, journaled before a crash: it completes with it, without running."""

    @property
    def request_sha(self) -> str:
        return request_digest(self.capability, self.call, self.request)


def request_digest(capability: str, call: str, request: bytes) -> str:
    """What identifies an op's request in the journal."""
    return hashlib.sha256(f"{capability}.{call}\0".encode() + request).hexdigest()


@dataclass(frozen=True, slots=True)
class Completion:
    """How an op ended: ``value`` is its msgpack result when ``ok``, else the error text."""

    op: StartedOp
    ok: bool
    value: bytes | str
    usage: Usage | None = None
    fresh: bool = True
    """Ran now (not replayed from the journal): its result is journaled."""

    def journal_entry(self, message_id: str) -> JournalEntry:
        value = self.value if isinstance(self.value, bytes) else self.value.encode()
        return JournalEntry(
            message_id=message_id,
            seq=self.op.seq,
            capability=self.op.capability,
            call=self.op.call,
            request_sha=self.op.request_sha,
            ok=self.ok,
            value=value,
        )


def replayed(op: StartedOp) -> Completion:
    """The completion of an op whose result was journaled before a crash."""
    entry = op.replayed
    assert entry is not None
    value: bytes | str = entry.value if entry.ok else entry.value.decode()
    return Completion(op, entry.ok, value, None, fresh=False)


async def run_op(op: StartedOp, runner: OpRunner, address: AgentAddress) -> Completion:
    """Run ``op`` (with the span of the turn that started it as the current span, so what
    it sends on is traced under that turn). Failures come back as an error completion."""
    try:
        if op.trace is None:
            result = await runner()
        else:
            with op.trace.activated():
                result = await runner()
    except OpFailed as exc:
        return Completion(op, False, op_error_text(exc), exc.usage)
    except CapabilityError as exc:
        return Completion(op, False, op_error_text(exc))
    except Exception as exc:
        logger.exception("agent %s: %s op failed", address, op.capability)
        return Completion(op, False, f"{op.capability} failed: {exc}")
    return Completion(op, True, result.value, result.usage)


class Continuations:
    """Runs continuation-form ops detached from the agent's instance, from their pending
    rows, and resumes the ones a previous run of the host left in flight."""

    def __init__(self, services: CoreServices, kinds: KindTable, nursery: trio.Nursery) -> None:
        self._services = services
        self._kinds = kinds
        self._nursery = nursery
        self._running: set[tuple[AgentAddress, str]] = set()
        self._waiting: dict[str, list[PendingOp]] = {}
        """Pending ops of kinds not deployed yet, by kind."""

    def start(self, pending: PendingOp) -> None:
        """Run a committed pending op (once per process), under its agent's lease, which
        this host holds (the actor that committed it, or :meth:`resume`)."""
        key = (pending.address, pending.op_key)
        if key in self._running or not self._services.leases.holds(pending.address):
            return
        try:
            kind = self._kinds.of(pending.address)
        except UnknownKind:
            self._waiting.setdefault(pending.address.kind, []).append(pending)
            return
        capability = kind.capabilities.get(pending.capability)
        if capability is None:
            logger.error(
                "agent %s: pending %s op %s dropped: the kind no longer grants %s",
                pending.address,
                pending.capability,
                pending.op_key,
                pending.capability,
            )
            self._nursery.start_soon(
                self._hand_over,
                pending,
                Completion(
                    StartedOp(0, 0, pending.capability, pending.call, pending.request),
                    False,
                    f"{pending.capability} is no longer granted to this kind",
                ),
            )
            return
        context = OpContext(address=pending.address, idempotency_key=pending.op_key)
        runner = capability.op(pending.call, pending.request, context)
        self._running.add(key)
        self._services.leases.hold(pending.address)
        self._nursery.start_soon(self._run, pending, runner)

    async def resume(self) -> None:
        """Start every pending op left in the store that this host may run (after a
        restart); on a shared store, look again every ``recheck_s`` for those whose host
        died."""
        services = self._services
        stores = services.stores
        leases = services.leases
        while True:
            try:
                found = await stores.run(
                    stores.store.pending_ops, PENDING_OPS_BATCH, owner=leases.owner
                )
            except RoostError as exc:
                logger.warning("reading pending ops failed: %s", exc)
                found = []
            for pending in found:
                if (pending.address, pending.op_key) in self._running:
                    continue
                try:
                    await leases.acquire(pending.address)
                except OwnedElsewhere:
                    continue
                except RoostError as exc:
                    logger.warning("taking the lease of %s failed: %s", pending.address, exc)
                    continue
                await self._start_if_pending(pending)
            if not leases.shared:
                return
            await trio.sleep(services.recheck_s)

    def kind_deployed(self, kind: str) -> None:
        for pending in self._waiting.pop(kind, []):
            self._nursery.start_soon(self._start_owned, pending)

    async def _start_owned(self, pending: PendingOp) -> None:
        try:
            await self._services.leases.acquire(pending.address)
        except RoostError:  # another host runs it (or will, once it can take the lease)
            return
        await self._start_if_pending(pending)

    async def _start_if_pending(self, pending: PendingOp) -> None:
        """:meth:`start` an op read from the store a while ago, once its agent's lease is
        held, only if it is still pending: a run that finished it since (on this host, or
        on the host that held the lease before) must not be followed by a second run. Read
        under the lease, the answer holds: no other host can finish the op meanwhile, and
        the op is marked running here while it is read, so this host does not start it."""
        key = (pending.address, pending.op_key)
        if key in self._running:
            return
        stores = self._services.stores
        self._running.add(key)
        try:
            still = await stores.run(stores.store.op_pending, pending.address, pending.op_key)
        except RoostError as exc:  # run it: its hand-over is checked all the same
            logger.warning("agent %s: reading op %s failed: %s", pending.address, key[1], exc)
            still = True
        finally:
            self._running.discard(key)
        if still:
            self.start(pending)

    async def _run(self, pending: PendingOp, runner: OpRunner) -> None:
        op = StartedOp(0, 0, pending.capability, pending.call, pending.request)
        try:
            completion = await run_op(op, runner, pending.address)
            await self._hand_over(pending, completion)
        finally:
            self._running.discard((pending.address, pending.op_key))
            self._services.leases.unhold(pending.address)

    async def _hand_over(self, pending: PendingOp, completion: Completion) -> None:
        """:meth:`_deliver`, where a commit that cannot be made is logged, not raised: the
        lease was lost (the agent's new host runs the op again), or the op was finished
        already (``AlreadyHandled``: it ran twice, its result was handed over once)."""
        try:
            await self._deliver(pending, completion)
        except RoostError as exc:
            address, key = pending.address, pending.op_key
            logger.warning("agent %s: result of op %s not handed over: %s", address, key, exc)

    async def _deliver(self, pending: PendingOp, completion: Completion) -> None:
        """Hand the result to the agent: a ``continuation`` delivery, committed with the
        removal of the pending op (and the op's usage)."""
        value = unpack(completion.value) if isinstance(completion.value, bytes) else None
        payload = pack(
            {
                "handler": pending.handler,
                "tag": unpack(pending.tag),
                "ok": completion.ok,
                "value": value if completion.ok else completion.value,
            }
        )
        fence = self._services.leases.token(pending.address)
        if fence is None:  # the lease was lost: the agent's new host runs the op again
            return
        now = self._services.clock.now()
        delivery = Delivery(
            address=pending.address,
            delivery_id=f"c-{pending.op_key}",
            due_at=now,
            event_kind="continuation",
            payload=payload,
        )
        await self._services.stores.commit(
            Commit(
                pending.address,
                at=now,
                turn=False,
                deliveries=[delivery],
                op_finished=pending.op_key,
                usage=completion.usage,
                usage_day=utc_day(now),
                fence=fence,
            )
        )
        self._services.deliveries_due.ring()
