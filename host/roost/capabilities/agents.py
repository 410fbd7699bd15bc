"""``agents``: messages to other agents.

``send`` is an outbox entry committed with the turn (a delivery due at once for the target),
so a turn that fails sends nothing and a crash after the commit still delivers it. ``ask``
is an async op that delivers an ``agent`` event and completes with the target's replies.
The grant names the kinds an agent may reach. An ask that would reach an agent already
waiting in the same chain of asks is refused at once; other cycles end at the timeout.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field

import trio
from pydantic import Field

from ..address import AgentAddress
from ..errors import CapabilityDenied, InvalidAddress, QuotaExceeded, RoostError
from ..payload import pack, unpack
from ..store.protocol import Delivery
from ._base import (
    BaseGrant,
    Capability,
    HostServices,
    OpContext,
    OpResult,
    OpRunner,
    TurnEffects,
    TurnView,
    host_call,
)
from ._ops import continuation_of, decode_request, encode_result

DEFAULT_ASK_TIMEOUT_S = 30.0


class AgentsGrant(BaseGrant):
    kinds: list[str] = Field(default_factory=list)
    """Kinds this agent may send to and ask; empty means none."""
    max_sends_per_turn: int = Field(100, ge=1)
    max_asks_per_turn: int = Field(16, ge=1)
    max_ask_timeout_s: float = Field(300.0, gt=0)


@dataclass(slots=True)
class AgentsTurn:
    """What a handler sent and asked."""

    sent: list[Delivery] = field(default_factory=list)
    asks: int = 0


class Agents(Capability[AgentsTurn]):
    """Send to and ask other agents."""

    name = "agents"
    Grant = AgentsGrant
    grant: AgentsGrant

    def __init__(self, grant: AgentsGrant, services: HostServices) -> None:
        super().__init__(grant, services)
        self._ask = services.ask

    def begin_turn(self, turn: TurnView) -> AgentsTurn:
        return AgentsTurn()

    def add_effects(self, state: AgentsTurn, effects: TurnEffects) -> None:
        effects.deliveries.extend(state.sent)

    def _target(self, turn: TurnView, kind: str, agent_id: str) -> AgentAddress:
        if kind not in self.grant.kinds:
            raise CapabilityDenied(
                f"agent {turn.address} may not message kind {kind!r}: add it to "
                f"[capabilities.agents] kinds (granted: {', '.join(self.grant.kinds) or 'none'})"
            )
        try:
            return AgentAddress(kind, agent_id)
        except InvalidAddress as exc:
            raise CapabilityDenied(str(exc)) from None

    @host_call("send")
    def send(self, turn: TurnView, kind: str, agent_id: str, message: bytes) -> None:
        target = self._target(turn, kind, agent_id)
        sent = self.state(turn).sent
        if len(sent) >= self.grant.max_sends_per_turn:
            raise QuotaExceeded(
                f"more than {self.grant.max_sends_per_turn} sends in one turn "
                "(agents grant max_sends_per_turn)"
            )
        try:
            decoded = unpack(message)
        except Exception as exc:
            raise CapabilityDenied(f"agents.send: message is not msgpack: {exc}") from None
        payload = pack({"sender": str(turn.address), "message": decoded})
        sent.append(
            Delivery(
                address=target,
                delivery_id=f"m-{uuid.uuid4().hex}",
                due_at=turn.now,
                event_kind="agent",
                payload=payload,
            )
        )

    @host_call("ask")
    def ask(self, turn: TurnView, request: bytes) -> int:
        fields = decode_request("agents.ask", request)
        target = self._target(turn, str(fields.get("kind")), str(fields.get("id")))
        timeout_s = float(fields.get("timeout_s") or DEFAULT_ASK_TIMEOUT_S)
        if not math.isfinite(timeout_s) or not 0 < timeout_s <= self.grant.max_ask_timeout_s:
            raise CapabilityDenied(
                f"agents.ask timeout_s must be in (0, {self.grant.max_ask_timeout_s}] "
                "(agents grant max_ask_timeout_s)"
            )
        state = self.state(turn)
        if state.asks >= self.grant.max_asks_per_turn:
            raise QuotaExceeded(
                f"more than {self.grant.max_asks_per_turn} asks in one handler "
                "(agents grant max_asks_per_turn)"
            )
        chain = (*turn.chain, str(turn.address))
        if str(target) in chain:
            raise CapabilityDenied(
                f"ask cycle: {' -> '.join((*chain, str(target)))}; the asked agent is "
                "already waiting on this chain of asks"
            )
        state.asks += 1
        ask = {
            "kind": target.kind,
            "id": target.id,
            "message": fields.get("message"),
            "timeout_s": timeout_s,
        }
        return turn.start_op(self.name, "ask", pack(ask), continuation_of(fields))

    def op(self, call: str, request: bytes, context: OpContext) -> OpRunner:
        fields = unpack(request)
        target = AgentAddress(fields["kind"], fields["id"])
        timeout_s = float(fields["timeout_s"])
        sender = context.address
        chain = (*context.chain, str(sender))
        ask = self._ask

        async def run() -> OpResult:
            try:
                with trio.fail_after(timeout_s):
                    replies = await ask(
                        sender,
                        target,
                        fields["message"],
                        timeout_s=timeout_s,
                        chain=chain,
                        idempotency_key=context.idempotency_key,
                    )
            except trio.TooSlowError:
                raise CapabilityDenied(
                    f"ask {sender} -> {target} timed out after {timeout_s}s "
                    "(is the target busy, or asking back in a cycle?)"
                ) from None
            except RoostError as exc:
                raise CapabilityDenied(f"ask {sender} -> {target} failed: {exc}") from None
            return OpResult(encode_result(replies))

        return run
