"""One guest instance in its own wasmtime store (implements ``roost.sandbox.protocol.Sandbox``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import wasmtime
from wasmtime.component import Component, Func, Linker

from ..errors import (
    CpuDeadlineExceeded,
    GuestAbiError,
    GuestError,
    GuestTrap,
    MemoryLimitExceeded,
)
from ..limits import Limits
from ._cpu_deadline import MARKER as CPU_DEADLINE_MARKER
from ._cpu_deadline import CpuDeadline
from ._values import call_init, call_on_complete, call_on_event
from .protocol import TurnOutput, TurnSliceExceeded

T = TypeVar("T")

_MEMORY_MARKERS = ("MemoryError", "memory allocation", "out of memory", "capacity overflow")
_ABI_MARKERS = (
    "out of bounds of memory",
    "invalid utf-8",
    "discriminant",
    "beyond end of memory",
    "unaligned pointer",
)
"""What wasmtime says when it cannot lift a value the guest handed over (a return value or
an import's arguments): a broken canonical ABI, not a guest bug the guest could report."""
_DEV_DEADLINE = "roost_sdk.DeadlineExceeded: "
"""How the dev runtime's watchdog reports a turn it stopped short of the CPU deadline."""
_PYTHON_FRAMES = ("componentize_py", "libpython")
"""Names in the wasm backtrace of a Python guest: its frames are the interpreter's, so they
say nothing about the agent's code."""


class WasmSandbox:
    """A store, an instance and its three exports. Used by one thread at a time."""

    def __init__(
        self,
        store: wasmtime.Store,
        funcs: dict[str, Func],
        limits: Limits,
        deadline_ticks: int,
        epoch_tick_ms: int,
        cpu_deadline: CpuDeadline,
    ) -> None:
        self._store: wasmtime.Store | None = store
        self._funcs = funcs
        self._limits = limits
        self._deadline_ticks = deadline_ticks
        self._epoch_tick_ms = epoch_tick_ms
        self._cpu_deadline = cpu_deadline

    @classmethod
    def instantiate(
        cls,
        *,
        engine: wasmtime.Engine,
        component: Component,
        linker: Linker,
        exports: Mapping[str, Any],
        limits: Limits,
        deadline_ticks: int,
        epoch_tick_ms: int,
        slice_ms: int | None = None,
    ) -> WasmSandbox:
        store = wasmtime.Store(engine)
        store.set_wasi(wasmtime.WasiConfig())
        store.set_limits(memory_size=limits.max_memory_bytes)
        cpu_deadline = CpuDeadline(store, epoch_tick_ms)
        # The start functions run here: under the slice too, when there is one.
        ticks, sliced = _ticks(deadline_ticks, slice_ms, epoch_tick_ms)
        cpu_deadline.start(store, limits.cpu_deadline_ms, ticks, sliced)
        try:
            instance = linker.instantiate(store, component)
        except wasmtime.WasmtimeError as exc:
            error = _classify_trap(exc, "instantiation")
            if sliced and isinstance(error, CpuDeadlineExceeded):
                raise TurnSliceExceeded("instantiation ran past its slice") from None
            raise error from None
        funcs: dict[str, Func] = {}
        for name, index in exports.items():
            func = instance.get_func(store, index)
            if func is None:
                raise GuestAbiError(f"the component does not export {name!r}")
            funcs[name] = func
        return cls(store, funcs, limits, deadline_ticks, epoch_tick_ms, cpu_deadline)

    def init(self, config: bytes, state: bytes | None, *, slice_ms: int | None = None) -> None:
        error = self._call(slice_ms, "init", lambda f, s: call_init(f, s, config, state))
        if error is not None:
            raise _guest_failure(error, "init")

    def on_event(
        self, event_id: int, kind: str, payload: bytes, *, slice_ms: int | None = None
    ) -> TurnOutput:
        result = self._call(
            slice_ms, "on-event", lambda f, s: call_on_event(f, s, event_id, kind, payload)
        )
        return _turn_output(result, "on-event")

    def on_complete(
        self, op_id: int, ok: bool, value: bytes | str, *, slice_ms: int | None = None
    ) -> TurnOutput:
        if ok != isinstance(value, bytes):
            raise GuestAbiError("an ok op result carries bytes, an error carries text")
        result = self._call(
            slice_ms, "on-complete", lambda f, s: call_on_complete(f, s, op_id, ok, value)
        )
        return _turn_output(result, "on-complete")

    def close(self) -> None:
        self._store = None
        self._funcs = {}

    def _call(self, slice_ms: int | None, name: str, call: Callable[[Func, Any], T]) -> T:
        store = self._store
        if store is None:
            raise GuestAbiError("the sandbox was closed")
        func = self._funcs[name]
        ticks, sliced = _ticks(self._deadline_ticks, slice_ms, self._epoch_tick_ms)
        self._cpu_deadline.start(store, self._limits.cpu_deadline_ms, ticks, sliced)
        try:
            result = call(func, store)
            func.post_return(store)
        except wasmtime.WasmtimeError as exc:
            self.close()
            error = _classify_trap(exc, name)
            if sliced and isinstance(error, CpuDeadlineExceeded):
                raise TurnSliceExceeded(f"{name} ran past its slice") from None
            raise error from None
        return result


def _ticks(deadline_ticks: int, slice_ms: int | None, epoch_tick_ms: int) -> tuple[int, bool]:
    """The epoch deadline of a call, and whether the slice (not the CPU deadline) sets it."""
    if slice_ms is None:
        return deadline_ticks, False
    # Whole ticks, plus one: the next tick may come right after the call starts.
    slice_ticks = -(-slice_ms // epoch_tick_ms) + 1
    return min(deadline_ticks, slice_ticks), slice_ticks < deadline_ticks


def _turn_output(result: TurnOutput | str, export: str) -> TurnOutput:
    if isinstance(result, str):
        raise _guest_failure(result, export)
    return result


def _guest_failure(traceback_text: str, export: str) -> GuestError:
    lines = [line for line in traceback_text.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "guest failed without a message"
    error_type: Callable[..., GuestError] = GuestTrap
    if last.startswith(_DEV_DEADLINE):
        return CpuDeadlineExceeded(
            f"guest {export} {last[len(_DEV_DEADLINE) :]}", guest_traceback=traceback_text
        )
    if any(marker in last for marker in _MEMORY_MARKERS):
        error_type = MemoryLimitExceeded
    return error_type(f"guest {export} failed: {last}", guest_traceback=traceback_text)


def _classify_trap(exc: wasmtime.WasmtimeError, export: str) -> GuestError:
    text = str(exc)
    cause = _cause(text)
    if any(marker in cause for marker in _ABI_MARKERS):
        return GuestAbiError(
            f"guest {export} handed the host a malformed value: {cause}", guest_traceback=text
        )
    if "interrupt" in text or CPU_DEADLINE_MARKER in text:
        if any(name in text for name in _PYTHON_FRAMES):
            return CpuDeadlineExceeded(
                f"guest {export} ran past the kind's CPU deadline (limits.cpu_deadline_ms); "
                "it was stopped inside the interpreter, where no Python line is known: run "
                "the agent under `roost dev` or roost.testing to see the line it was on"
            )
        return CpuDeadlineExceeded(
            f"guest {export} ran past the kind's CPU deadline (limits.cpu_deadline_ms)",
            guest_traceback=text,
        )
    if any(marker in text for marker in _MEMORY_MARKERS) or "abort" in text:
        return MemoryLimitExceeded(
            f"guest {export} aborted, most likely out of linear memory (limits.max_memory_bytes)",
            guest_traceback=text,
        )
    return GuestTrap(f"guest {export} trapped: {cause}", guest_traceback=text)


def _cause(text: str) -> str:
    """The line that says what went wrong: wasmtime puts the backtrace first and the
    reason after ``Caused by:``."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if "Caused by:" in lines:
        after = lines[lines.index("Caused by:") + 1 :]
        if after:
            return after[0]
    return lines[0] if lines else "trap"
