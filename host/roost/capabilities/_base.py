"""What every capability is: one factor of the host, in one file.

A capability class (one per file in this package, ``name`` == the file name == its WIT
interface ``roost:agent/<name>``) owns everything about one WIT interface:

- its **grant**: ``Grant``, a model parsed from the manifest's ``[capabilities.<name>]``
  table when a kind is deployed (unknown keys rejected);
- its **slice of host services**: the constructor takes the grant and the host's
  :class:`HostServices` and keeps only what it uses (an HTTP client, a setting, ``ask``);
- its **host calls**: methods marked with :func:`host_call`, called with the running turn
  (a :class:`TurnView`) and the WIT arguments;
- its **per-turn state**: :meth:`Capability.begin_turn` makes it the first time a turn uses
  the capability (buffered writes, timers set...), :meth:`Capability.state` finds it;
- the **effects it adds to the commit**: :meth:`Capability.add_effects` moves that state
  into the turn's :class:`TurnEffects`, which the turn commits atomically;
- its **async ops**, if any: a host call checks the request and starts the op with
  ``turn.start_op(name, call, request)``: data (the capability, the call, the request
  bytes), not a closure, so that the host can run it later, replay its journaled result
  after a crash, or run it again with the same idempotency key. :meth:`Capability.op`
  turns that data into the coroutine that runs it.

Host calls must never raise into wasm. :func:`host_call` declares what a call returns when
it fails: calls whose WIT result is ``result<_, string>`` return the error text to the
guest; the others return ``fallback`` and fail the turn.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

from ..abi import HostCallError, HostFunction
from ..address import AgentAddress
from ..errors import CapabilityError, RoostError
from ..limits import Budgets, Limits
from ..store.protocol import Approval as StoredApproval
from ..store.protocol import Delivery, TurnReads, Usage
from ..telemetry import fail_span
from ._mcp_sessions import McpSessions

if TYPE_CHECKING:
    import httpx
    from opentelemetry.trace import Span

    from ..config import HostConfig
    from ..telemetry import HostMetrics, TurnTrace

logger = logging.getLogger("roost.capabilities")

F = TypeVar("F", bound=Callable[..., Any])
S = TypeVar("S")

_NO_FALLBACK = object()


@dataclass(frozen=True, slots=True)
class OpResult:
    """What an async op completed with."""

    value: bytes
    """The result handed to the guest (msgpack)."""
    usage: Usage | None = None
    """What the op used (LLM tokens), committed with the turn that receives the result."""


OpRunner = Callable[[], Awaitable[OpResult]]
"""Runs an async op on the trio loop. A failure the guest should see is a CapabilityError
(an :class:`OpFailed` when the failed op still used something)."""


class OpFailed(CapabilityError):
    """An op failed in a way the guest is told about, having used ``usage`` (an HTTP call
    that was made, LLM tokens spent before a stream broke). ``details`` reach the guest
    with the message (see :func:`op_error_text`)."""

    def __init__(self, message: str, usage: Usage, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.usage = usage
        self._details = details

    def details(self) -> dict[str, Any] | None:
        return self._details


def op_error_text(error: CapabilityError) -> str:
    """The text of an op's error as the guest gets it (``op-result.err``): the message; or,
    for an error that carries details (a provider's status, code, ``retryable``), a JSON
    object ``{"message": ..., **details}``, which the SDKs parse (docs/capabilities.md,
    "Op errors")."""
    details = getattr(error, "details", None)
    found = details() if callable(details) else None
    if not found:
        return str(error)
    return json.dumps({"message": str(error), **found}, separators=(",", ":"), default=str)


@dataclass(frozen=True, slots=True)
class OpContext:
    """What an op runs with, besides its request."""

    address: AgentAddress
    """The agent that started it."""
    idempotency_key: str
    """Stable across re-runs of the op (after a crash): sent to providers so that a
    request they already served is not served twice."""
    chain: tuple[str, ...] = ()
    """The chain of asks that led to the event that started it."""
    on_token: Callable[[str], None] | None = None
    """Streams LLM tokens to whoever sent that event (None once nobody listens)."""
    trace: TurnTrace | None = None
    """The span of the turn that started it (tracing on)."""


class BaseGrant(BaseModel):
    """Base of every capability's grant parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True)
class Continuation:
    """Deliver an op's result as a new event calling ``handler`` (the agent may hibernate
    meanwhile) instead of resuming the turn that started it."""

    handler: str
    tag: Any


class Ask(Protocol):
    """Deliver an ``agent`` event from ``sender`` to ``target`` and return its replies;
    the target handles an ask of one ``idempotency_key`` once."""

    async def __call__(
        self,
        sender: AgentAddress,
        target: AgentAddress,
        message: Any,
        *,
        timeout_s: float,
        chain: tuple[str, ...],
        idempotency_key: str | None = None,
    ) -> list[Any]: ...


class Approvals(Protocol):
    """Where approval ops wait for a person's decision (``approval.ApprovalDesk``)."""

    async def wait(
        self, address: AgentAddress, approval_id: str, request: bytes, timeout_s: float
    ) -> StoredApproval: ...


@dataclass(frozen=True, slots=True)
class HostServices:
    """Everything the host offers capabilities; each takes the slice it needs when bound."""

    settings: HostConfig
    http_client: httpx.AsyncClient
    """The host's shared client for outbound calls."""
    metrics: HostMetrics
    ask: Ask
    approvals: Approvals | None = None
    """Decisions approval ops wait for (None: the host takes none)."""
    mcp_sessions: McpSessions = field(default_factory=lambda: McpSessions())
    """The MCP sessions of agents, kept across their hibernation."""


@dataclass(slots=True)
class TurnEffects:
    """What the capabilities a turn used add to its commit."""

    kv_writes: dict[str, bytes | None] = field(default_factory=dict)
    kv_bytes: int | None = None
    """The agent's kv bytes after the turn, when its kv changed."""
    deliveries: list[Delivery] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)


class TurnView(Protocol):
    """What a host call sees of the running turn (the core's ``TurnContext``)."""

    @property
    def address(self) -> AgentAddress: ...
    @property
    def now(self) -> float:
        """Wall-clock time at the start of the turn (unix seconds)."""
        ...

    @property
    def day(self) -> str:
        """The UTC day of ``now`` (``YYYY-MM-DD``), the unit of daily budgets."""
        ...

    @property
    def limits(self) -> Limits: ...
    @property
    def budgets(self) -> Budgets: ...
    @property
    def reads(self) -> TurnReads:
        """The store's committed data, for this agent only (pass ``address``)."""
        ...

    @property
    def chain(self) -> tuple[str, ...]:
        """Addresses of the agents whose asks led to this event (to refuse cycles)."""
        ...

    @property
    def on_token(self) -> Callable[[str], None] | None:
        """Streams LLM tokens to whoever sent the event being handled."""
        ...

    @property
    def trace(self) -> TurnTrace | None:
        """The turn's span (tracing on): host calls and ops are its children."""
        ...

    def fail(self, error: RoostError) -> None:
        """Record a host-side fault; the first one wins and fails the turn."""
        ...

    def note_denial(self, capability: str) -> int:
        """Count a refused host call of ``capability``: how many this turn has had."""
        ...

    def start_op(
        self,
        capability: str,
        call: str,
        request: bytes,
        continuation: Continuation | None = None,
    ) -> int:
        """Start an async op (see :meth:`Capability.op`); returns its op id."""
        ...

    def check_budget(self, what: str, used: float, adding: float, budget: float | None) -> None:
        """Raise QuotaExceeded when ``used + adding`` passes ``budget``."""
        ...

    def local(self, capability: Capability[S]) -> S:
        """``capability``'s state in this turn, made by its ``begin_turn`` on first use."""
        ...


def host_call(
    wit_name: str, *, fallback: Any = _NO_FALLBACK, ok_is_text: bool = False
) -> Callable[[F], F]:
    """Mark a method as the implementation of WIT function ``wit_name``.

    Without ``fallback`` the WIT result must be ``result<T, string>``: a
    :class:`CapabilityError` is returned to the guest as its message. With ``fallback``,
    any error fails the turn and ``fallback`` is returned to the guest meanwhile.
    """

    def mark(method: F) -> F:
        method.__roost_host_call__ = _HostCallSpec(  # type: ignore[attr-defined]
            wit_name,
            fallback is _NO_FALLBACK,
            None if fallback is _NO_FALLBACK else fallback,
            ok_is_text,
        )
        return method

    return mark


@dataclass(frozen=True, slots=True)
class _HostCallSpec:
    wit_name: str
    returns_error_text: bool
    """True when the WIT result is ``result<T, string>``: errors go back to the guest."""
    fallback: Any
    """What to return when the call fails and the error cannot go back to the guest."""
    ok_is_text: bool


class Capability(Generic[S]):
    """Base class of capabilities. Subclasses set ``name`` and ``Grant``; the type
    parameter is their per-turn state (None when they keep none)."""

    name: ClassVar[str]
    Grant: ClassVar[type[BaseGrant]]

    def __init__(self, grant: BaseGrant, services: HostServices) -> None:
        self.grant = grant
        self._denied = 0
        self._denied_lock = threading.Lock()

    # -- per-turn state and effects --------------------------------------------------------

    def begin_turn(self, turn: TurnView) -> S:
        """This capability's state for a turn that just used it for the first time."""
        return None  # type: ignore[return-value]

    def state(self, turn: TurnView) -> S:
        """This capability's state in ``turn``."""
        return turn.local(self)

    def add_effects(self, state: S, effects: TurnEffects) -> None:
        """Add what the turn did through this capability to its commit."""

    def started_cost(self, state: S) -> Usage:
        """What the ops the handler started through this capability may cost, counted
        against the day's usage if the handler fails before its final commit: an op that
        started ran (or runs), whatever became of the handler."""
        return Usage()

    def op(self, call: str, request: bytes, context: OpContext) -> OpRunner:
        """The coroutine that runs an op this capability's host call ``call`` started with
        ``request`` (already checked when it started)."""
        raise NotImplementedError(f"the {self.name} capability starts no async ops")

    # -- host calls ------------------------------------------------------------------------

    @property
    def denied(self) -> int:
        """Calls refused so far (outside the grant, over a quota or budget)."""
        return self._denied

    @classmethod
    def host_call_names(cls) -> dict[str, str]:
        """WIT function name -> method name, for every host call of the class."""
        names = {}
        for attr in dir(cls):
            spec = getattr(getattr(cls, attr), "__roost_host_call__", None)
            if isinstance(spec, _HostCallSpec):
                names[spec.wit_name] = attr
        return names

    def host_functions(self) -> list[HostFunction]:
        """The host calls, wrapped so that they never raise, ready to link."""
        functions = []
        for wit_name, attr in sorted(self.host_call_names().items()):
            spec: _HostCallSpec = getattr(type(self), attr).__roost_host_call__
            functions.append(HostFunction(wit_name, self._guarded(attr, spec), spec.ok_is_text))
        return functions

    def _guarded(self, method_name: str, spec: _HostCallSpec) -> Callable[..., Any]:
        """The method wrapped so that it never raises: see the module docstring. With
        tracing on, each call is a span under the turn's span."""
        method = getattr(self, method_name)
        span_name = f"{self.name}.{spec.wit_name}"

        def call(*args: Any) -> Any:
            turn = _bound_turn()
            if turn is None:
                return HostCallError("no turn") if spec.returns_error_text else spec.fallback
            trace = turn.trace
            if trace is None:
                return self._call(method, spec, turn, args, None)
            span = trace.child(span_name, {"roost.capability": self.name})
            try:
                return self._call(method, spec, turn, args, span)
            finally:
                span.end()

        return call

    def _call(
        self,
        method: Callable[..., Any],
        spec: _HostCallSpec,
        turn: TurnView,
        args: tuple[Any, ...],
        span: Span | None,
    ) -> Any:
        try:
            return method(turn, *args)
        except CapabilityError as exc:
            self._record_denial(turn, spec.wit_name, exc)
            if span is not None:
                span.set_attribute("roost.capability.denied", True)
                fail_span(span, exc)
            if spec.returns_error_text:
                return HostCallError(str(exc))
            turn.fail(exc)
        except RoostError as exc:
            turn.fail(exc)
            if span is not None:
                fail_span(span, exc)
        except Exception as exc:  # a bug in a host call must not crash the host
            turn.fail(RoostError(f"host call {self.name}.{spec.wit_name} failed: {exc!r}"))
            if span is not None:
                fail_span(span, exc)
        return HostCallError("host call failed") if spec.returns_error_text else spec.fallback

    def _record_denial(self, turn: TurnView, call: str, exc: CapabilityError) -> None:
        """Count a refused call; log the first of each capability in a turn as a warning
        and the others at debug level (a guest calling again and again cannot flood the
        host's log: ``roost_capability_denials_total`` counts them all)."""
        with self._denied_lock:
            self._denied += 1
        first = turn.note_denial(self.name) == 1
        logger.log(
            logging.WARNING if first else logging.DEBUG,
            "agent %s: %s.%s refused: %s%s",
            turn.address,
            self.name,
            call,
            exc,
            " (further refusals of this capability in this turn are logged at debug level)"
            if first
            else "",
            extra={"agent_kind": turn.address.kind, "agent_id": turn.address.id},
        )


_bound = threading.local()


class bound_turn:  # lower case: used like a function, ``with bound_turn(turn):``
    """Make ``turn`` the turn that host calls on this thread act for, while its guest runs
    (a plain class, not ``@contextmanager``: it wraps every guest call)."""

    __slots__ = ("_previous", "_turn")

    def __init__(self, turn: TurnView) -> None:
        self._turn = turn
        self._previous: TurnView | None = None

    def __enter__(self) -> None:
        self._previous = getattr(_bound, "turn", None)
        _bound.turn = self._turn

    def __exit__(self, *_exc: object) -> None:
        _bound.turn = self._previous


def _bound_turn() -> TurnView | None:
    return getattr(_bound, "turn", None)
