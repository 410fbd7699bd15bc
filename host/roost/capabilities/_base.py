"""What every capability is: a grant model, host calls, and their wiring into wasm.

A capability class names its WIT interface (``name``, matching its file name), parses its
grant from the manifest (``Grant``, unknown keys rejected) and offers host calls: methods
marked with :func:`host_call` that take the current :class:`TurnContext` and the WIT
arguments. A capability instance is bound to one kind's grant; per-agent scoping comes from
the turn (its address, limits and buffers).

Host calls must never raise into wasm. :func:`host_call` declares what the call returns
when it fails: calls whose WIT result is ``result<_, string>`` return the error text to the
guest; the others return ``fallback`` and fail the turn.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

from ..core.turn import TurnContext, current_turn
from ..errors import CapabilityError, RoostError
from ..telemetry import fail_span

if TYPE_CHECKING:
    from opentelemetry.trace import Span

logger = logging.getLogger("roost.capabilities")

F = TypeVar("F", bound=Callable[..., Any])

_NO_FALLBACK = object()


class BaseGrant(BaseModel):
    """Base of every capability's grant parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True)
class HostCallSpec:
    wit_name: str
    """The function's name in the capability's WIT interface."""
    returns_error_text: bool
    """True when the WIT result is ``result<T, string>``: errors go back to the guest."""
    fallback: Any
    """What to return when the call fails and the error cannot go back to the guest."""
    ok_is_text: bool = False
    """The WIT result is ``result<string, string>``: the runtime must tag its cases."""


@dataclass(frozen=True, slots=True)
class HostCallError:
    """A failed call whose error goes back to the guest as ``err(message)``."""

    message: str


def host_call(
    wit_name: str, *, fallback: Any = _NO_FALLBACK, ok_is_text: bool = False
) -> Callable[[F], F]:
    """Mark a method as the implementation of WIT function ``wit_name``.

    Without ``fallback`` the WIT result must be ``result<T, string>``: a
    :class:`CapabilityError` is returned to the guest as its message. With ``fallback``,
    any error fails the turn and ``fallback`` is returned to the guest meanwhile.
    """

    def mark(method: F) -> F:
        method.__roost_host_call__ = HostCallSpec(  # type: ignore[attr-defined]
            wit_name,
            fallback is _NO_FALLBACK,
            None if fallback is _NO_FALLBACK else fallback,
            ok_is_text,
        )
        return method

    return mark


class Capability:
    """Base class of capabilities. Subclasses set ``name`` and ``Grant``."""

    name: ClassVar[str]
    Grant: ClassVar[type[BaseGrant]]

    def __init__(self, grant: BaseGrant) -> None:
        self.grant = grant
        self._denied = 0
        self._denied_lock = threading.Lock()

    @property
    def denied(self) -> int:
        """Calls refused so far (outside the grant, over a quota or budget)."""
        return self._denied

    def _record_denial(self, turn: TurnContext, call: str, exc: CapabilityError) -> None:
        with self._denied_lock:
            self._denied += 1
        logger.warning(
            "agent %s: %s.%s refused: %s",
            turn.address,
            self.name,
            call,
            exc,
            extra={"agent_kind": turn.address.kind, "agent_id": turn.address.id},
        )

    @classmethod
    def host_calls(cls) -> dict[str, tuple[str, HostCallSpec]]:
        """WIT function name -> (method name, spec)."""
        calls = {}
        for attr in dir(cls):
            spec = getattr(getattr(cls, attr), "__roost_host_call__", None)
            if isinstance(spec, HostCallSpec):
                calls[spec.wit_name] = (attr, spec)
        return calls

    def guarded(self, method_name: str, spec: HostCallSpec) -> Callable[..., Any]:
        """The method wrapped so that it never raises: see the module docstring. With
        tracing on, each call is a span under the turn's span."""
        method = getattr(self, method_name)
        span_name = f"{self.name}.{spec.wit_name}"

        def call(*args: Any) -> Any:
            try:
                turn = current_turn()
            except RoostError:
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
        spec: HostCallSpec,
        turn: TurnContext,
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
