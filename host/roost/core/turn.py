"""The context of one running turn, as host calls see it.

A turn runs on a worker thread inside a wasm call; host functions find their turn through a
thread-local binding. Everything a turn does is buffered here (kv writes, ops started) and
only reaches the store when the turn commits. A host-side fault is recorded, not raised into
wasm, and fails the turn after the guest returns.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..address import AgentAddress
from ..errors import GuestAbiError, QuotaExceeded, RoostError
from ..manifest import Budgets, Limits
from ..store.protocol import Delivery, StateStore

if TYPE_CHECKING:
    from ..telemetry import HostMetrics, TurnTrace

OpRunner = Callable[[], Awaitable[bytes]]
"""Runs an async op on the trio loop; returns the msgpack payload of its result."""


@dataclass(frozen=True, slots=True)
class Continuation:
    """Deliver an op's result as a new event calling ``handler`` (the agent may hibernate
    meanwhile) instead of resuming the turn that started it."""

    handler: str
    tag: Any


@dataclass(slots=True)
class StartedOp:
    """An async op the guest started; the actor runs it once the turn commits."""

    op_id: int
    capability: str
    run: OpRunner
    continuation: Continuation | None = None
    trace: TurnTrace | None = None
    """The span of the turn that started the op (None when tracing is off)."""


class HostServices(Protocol):
    """What capabilities need from the host beyond the turn itself."""

    async def ask(
        self,
        sender: AgentAddress,
        target: AgentAddress,
        message: Any,
        *,
        timeout_s: float,
        chain: tuple[str, ...],
    ) -> list[Any]:
        """Deliver an ``agent`` event and return the target's replies."""
        ...

    def settings(self) -> Any:
        """The host's settings (``HostConfig``)."""
        ...

    def http_client(self) -> Any:
        """The host's shared ``httpx.AsyncClient`` for outbound calls."""
        ...

    def metrics(self) -> HostMetrics:
        """The host's counters (LLM tokens are counted by the op that used them)."""
        ...


@dataclass(slots=True)
class TurnContext:
    """What one turn has read and written so far."""

    address: AgentAddress
    limits: Limits
    store: StateStore
    now: float
    """Wall-clock time at the start of the turn (unix seconds)."""
    kv_bytes: int
    """The agent's kv bytes including this turn's buffered writes."""
    next_op_id: Callable[[], int]
    budgets: Budgets = field(default_factory=lambda: Budgets.model_validate({}))
    day: str = ""
    """UTC day of ``now`` (``YYYY-MM-DD``), the unit of daily budgets."""
    cpu_ms: float = 0.0
    """CPU time the guest used in this turn (set by the worker thread)."""
    wall_ms: float = 0.0
    """Wall-clock time of the guest call (set by the worker thread)."""
    services: HostServices | None = None
    chain: tuple[str, ...] = ()
    """Addresses of the agents whose asks led to this event (to refuse cycles)."""
    on_token: Callable[[str], None] | None = None
    """Streams LLM tokens to whoever sent the event being handled."""
    kv_writes: dict[str, bytes | None] = field(default_factory=dict)
    ops: list[StartedOp] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    cancelled: set[str] = field(default_factory=set)
    fault: RoostError | None = None
    trace: TurnTrace | None = None
    """The turn's span, when tracing is on: host calls and ops started by the turn are its
    children, wherever they run."""
    slice_ms: int | None = None
    """Set when the turn runs on the event loop: stop it (``TurnSliceExceeded``) once it has
    run this long, short of the kind's CPU deadline."""

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

    def require_services(self) -> HostServices:
        if self.services is None:
            raise GuestAbiError("this host call needs host services the turn was not given")
        return self.services


_bound = threading.local()


class bind_turn:  # lower case: used like a function, ``with bind_turn(turn):``
    """Make ``turn`` the current turn of this thread while the guest runs (a plain class,
    not ``@contextmanager``: it wraps every guest call)."""

    __slots__ = ("_previous", "_turn")

    def __init__(self, turn: TurnContext) -> None:
        self._turn = turn
        self._previous: TurnContext | None = None

    def __enter__(self) -> TurnContext:
        self._previous = getattr(_bound, "turn", None)
        _bound.turn = self._turn
        return self._turn

    def __exit__(self, *_exc: object) -> None:
        _bound.turn = self._previous


def current_turn() -> TurnContext:
    turn: TurnContext | None = getattr(_bound, "turn", None)
    if turn is None:
        raise GuestAbiError("a host function was called outside of a turn")
    return turn
