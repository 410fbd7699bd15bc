"""``approval``: an agent asks a person before an action with a large blast radius.

``await ctx.approval("refund 40 EUR", {...})`` is an async op whose result is the decision.
The op records the request in the store (:meth:`StateStore.request_approval`), where it
shows in the agent's status and export, and waits until an authorised caller decides it
(``POST /v1/agents/{kind}/{id}/approvals/{id}``, or :meth:`Host.decide_approval`), or until
it expires. Its id comes from the op's idempotency key, so an op run again after a crash
(an awaited one re-run with its handler, a continuation resumed after a restart) finds the
same row, and a decision taken meanwhile is not lost: the decision is durable, the op
only waits for it.

How long it may wait is the grant's: the awaited form keeps the agent resident (its handler
coroutine lives in the instance), so ``max_wait_s`` is short by default (10 minutes) and an
approval nobody decides in time completes as ``expired``. The continuation form
(``then="handler"``) lets the agent hibernate; the wait is a host task of a few hundred
bytes, resumed after a restart, up to ``max_continuation_wait_s`` (7 days by default).

A decision wakes the waiting op at once when the host that took it runs the op. Several
hosts sharing a PostgreSQL store need no routing for it: the decision is a row in the
shared store, and an op waiting on a shared store reads its row again every
``approval_poll_s`` (2 s by default), so a decision taken through any host reaches the op
within that (docs/decisions/0006-agents-that-act.md).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import trio
from pydantic import Field

from ..address import AgentAddress
from ..config import DEFAULT_APPROVAL_POLL_S
from ..errors import (
    ApprovalDecided,
    CapabilityDenied,
    CapabilityError,
    QuotaExceeded,
    UnknownApproval,
)
from ..payload import pack, unpack
from ..store.async_store import AsyncStore
from ..store.protocol import Approval as StoredApproval
from ..store.protocol import ApprovalDecision
from ..wall_clock import WallClock
from ._base import (
    BaseGrant,
    Capability,
    HostServices,
    OpContext,
    OpResult,
    OpRunner,
    TurnView,
    host_call,
)
from ._ops import continuation_of, decode_request, encode_result

MAX_ACTION_CHARS = 500
EXPIRED_BY = "roost"
"""``decided_by`` of an approval that expired."""


class ApprovalGrant(BaseGrant):
    max_wait_s: float = Field(600.0, gt=0)
    """Longest wait of the awaited form (the agent stays resident while it waits)."""
    max_continuation_wait_s: float = Field(7 * 86400.0, gt=0)
    """Longest wait of the continuation form (the agent may hibernate meanwhile)."""
    max_pending: int = Field(10, ge=1)
    """Undecided approvals one agent may have at once."""
    max_request_bytes: int = Field(16 * 1024, ge=64)
    """Size of one request (its action and details, msgpack)."""


@dataclass(slots=True)
class ApprovalTurn:
    asked: int = 0
    """Approvals the handler asked for (not in the store yet)."""


class Approval(Capability[ApprovalTurn]):
    """Ask a person to approve or reject an action; the decision is the op's result."""

    name = "approval"
    Grant = ApprovalGrant
    grant: ApprovalGrant

    def __init__(self, grant: ApprovalGrant, services: HostServices) -> None:
        super().__init__(grant, services)
        self._desk = services.approvals

    def begin_turn(self, turn: TurnView) -> ApprovalTurn:
        return ApprovalTurn()

    @host_call("request")
    def request(self, turn: TurnView, request: bytes) -> int:
        fields = decode_request("approval.request", request)
        action = fields.get("action")
        if not isinstance(action, str) or not action.strip():
            raise CapabilityDenied("approval.request needs an action (a non-empty text)")
        if len(action) > MAX_ACTION_CHARS:
            raise CapabilityDenied(f"approval.request: the action is over {MAX_ACTION_CHARS} chars")
        continuation = continuation_of(fields)
        if continuation is None:
            cap, key = self.grant.max_wait_s, "max_wait_s"
        else:
            cap, key = self.grant.max_continuation_wait_s, "max_continuation_wait_s"
        timeout = fields.get("timeout_s")
        timeout_s = cap if timeout is None else float(timeout)
        if not 0 < timeout_s <= cap:
            raise QuotaExceeded(
                f"approval.request: timeout {timeout_s:g} s is outside the approval grant's "
                f"{key} = {cap:g} s" + ("" if continuation else "; use then= to wait longer")
            )
        if self._desk is None:
            raise CapabilityError("approval: this host takes no decisions")
        state = self.state(turn)
        waiting = sum(1 for a in turn.reads.read_approvals(turn.address) if a.decision is None)
        if waiting + state.asked >= self.grant.max_pending:
            raise QuotaExceeded(
                f"agent {turn.address} has {waiting + state.asked} approvals waiting; the "
                f"approval grant allows max_pending = {self.grant.max_pending}"
            )
        body = pack({"action": action, "details": fields.get("details"), "timeout_s": timeout_s})
        if len(body) > self.grant.max_request_bytes:
            raise QuotaExceeded(
                f"approval.request: the request is {len(body)} bytes; the approval grant allows "
                f"max_request_bytes = {self.grant.max_request_bytes}"
            )
        state.asked += 1
        return turn.start_op(self.name, "request", body, continuation)

    def op(self, call: str, request: bytes, context: OpContext) -> OpRunner:
        fields: dict[str, Any] = unpack(request)
        desk = self._desk
        approval_id = approval_id_of(context.idempotency_key)

        async def run() -> OpResult:
            if desk is None:
                raise CapabilityError("approval: this host takes no decisions")
            asked = pack({"action": fields["action"], "details": fields.get("details")})
            decided = await desk.wait(context.address, approval_id, asked, fields["timeout_s"])
            return OpResult(encode_result(decision_of(decided)))

        return run


def approval_id_of(idempotency_key: str) -> str:
    """An approval's id: stable for one op across re-runs, URL-safe."""
    return "ap-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:24]


def decision_of(approval: StoredApproval) -> dict[str, Any]:
    """The op's result: the decision as the agent gets it."""
    asked = unpack(approval.request)
    return {
        "id": approval.approval_id,
        "action": asked.get("action"),
        "approved": approval.decision == "approved",
        "decision": approval.decision,
        "by": approval.decided_by,
        "note": approval.note,
        "decided_at": approval.decided_at,
    }


class ApprovalDesk:
    """The host's approvals: the ops waiting for decisions, and the decisions taken (by
    the API, or :meth:`Host.decide_approval`). Decisions live in the store; the desk only
    wakes the op that waits for one."""

    def __init__(
        self, stores: AsyncStore, clock: WallClock, *, poll_s: float = DEFAULT_APPROVAL_POLL_S
    ) -> None:
        self._stores = stores
        self._clock = clock
        self._poll_s = poll_s if stores.store.shared else math.inf
        """Decisions other hosts take reach this one only through a shared store."""
        self._decided: dict[tuple[AgentAddress, str], trio.Event] = {}
        """Set when the approval is decided, for the ops waiting for it."""
        self._waiters: dict[tuple[AgentAddress, str], int] = {}

    async def wait(
        self, address: AgentAddress, approval_id: str, request: bytes, timeout_s: float
    ) -> StoredApproval:
        """Record the approval (unless it is recorded already) and return it once decided,
        or decided ``expired`` when nobody decided it before it expired."""
        now = self._clock.now()
        asked = StoredApproval(address, approval_id, request, now, now + timeout_s)
        store = self._stores.store
        stored = await self._stores.run(store.request_approval, asked)
        key = (address, approval_id)
        self._waiters[key] = self._waiters.get(key, 0) + 1
        try:
            while stored.decision is None:
                event = self._decided.setdefault(key, trio.Event())
                remaining = math.inf if stored.expires_at is None else stored.expires_at - now
                with trio.move_on_after(max(min(remaining, self._poll_s), 0.0)):
                    await event.wait()
                now = self._clock.now()
                if event.is_set() or remaining > self._poll_s:
                    # Woken by a decision here, or time to look for one taken elsewhere.
                    stored = await self._stores.run(store.request_approval, asked)
                    continue
                decided = await self._stores.run(
                    store.decide_approval,
                    address,
                    approval_id,
                    "expired",
                    at=now,
                    by=EXPIRED_BY,
                    note=f"nobody decided within {timeout_s:g} s",
                )
                if decided is None:  # the agent was erased meanwhile
                    raise CapabilityError(f"approval {approval_id} is gone (agent erased)")
                stored = decided
        finally:
            self._waiters[key] -= 1
            if not self._waiters[key]:
                del self._waiters[key]
                self._decided.pop(key, None)
        return stored

    def waiting(self) -> int:
        """Approvals ops of this host wait for now."""
        return len(self._waiters)

    async def decide(
        self,
        address: AgentAddress,
        approval_id: str,
        decision: ApprovalDecision,
        *,
        by: str,
        note: str | None = None,
    ) -> StoredApproval:
        """Decide an approval the agent asked for and wake the op waiting for it. Deciding
        it again the same way returns it as decided; the other way, ApprovalDecided."""
        stored = await self._stores.run(
            self._stores.store.decide_approval,
            address,
            approval_id,
            decision,
            at=self._clock.now(),
            by=by,
            note=note,
        )
        if stored is None:
            raise UnknownApproval(
                f"agent {address} has no approval {approval_id}", address=str(address)
            )
        if stored.decision != decision:
            raise ApprovalDecided(
                f"approval {approval_id} of agent {address} was {stored.decision} already",
                address=str(address),
            )
        event = self._decided.pop((address, approval_id), None)
        if event is not None:
            event.set()
        return stored
