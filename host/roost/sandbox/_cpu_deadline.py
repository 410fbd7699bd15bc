"""CPU-time deadlines on wasmtime's wall-clock epochs.

The engine's epoch advances every tick of wall-clock time. A store's epoch deadline alone
would stop a call after so much *wall* time, and a call that waits for the CPU (a busy
core, or a worker thread at background priority) would be stopped short of the CPU time
it was given. So each store has an epoch-deadline callback: when the deadline comes, it
reads the CPU time the calling thread has used since the call began (the callback runs on
that thread), and lets the call go on for the CPU time it has left, or stops it. A call
under an inline slice (on the event loop) is stopped at the slice's wall-clock end: there,
wall time is what matters. So is a call that has taken ``WALL_FACTOR`` times its CPU
deadline in wall time, however little CPU it got.
"""

from __future__ import annotations

import ctypes
import math
import time

import wasmtime
from wasmtime import _ffi as ffi

WALL_FACTOR = 20
"""A call is stopped after this many times its CPU deadline in wall time, whatever its CPU
time (a thread that hardly gets the CPU still ends)."""
MARKER = "roost: the guest ran past its CPU deadline"
"""The text of the trap the callback raises (``instance._classify_trap`` looks for it)."""

_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_size_t,
    ctypes.POINTER(ffi.wasmtime_context_t),
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint64),
    ctypes.POINTER(ffi.wasmtime_update_deadline_kind_t),
)
_FINALIZER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_NO_FINALIZER = _FINALIZER(0)
_CONTINUE = 0
"""``WASMTIME_UPDATE_DEADLINE_CONTINUE``."""


class CpuDeadline:
    """The epoch-deadline callback of one store and the budget of the call it runs."""

    def __init__(self, store: wasmtime.Store, epoch_tick_ms: int) -> None:
        self._tick_s = epoch_tick_ms / 1000
        self._budget_s = 0.0
        self._cpu_started = 0.0
        self._wall_until = 0.0
        self._sliced = False
        self._callback = _CALLBACK(self._on_deadline)  # kept alive as long as the store
        ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), self._callback, None, _NO_FINALIZER)

    def start(self, store: wasmtime.Store, cpu_deadline_ms: int, ticks: int, sliced: bool) -> None:
        """A call begins on this thread: ``ticks`` until the first look (the slice's, when
        ``sliced``), ``cpu_deadline_ms`` of CPU time in all."""
        self._budget_s = cpu_deadline_ms / 1000
        self._cpu_started = time.thread_time()
        self._wall_until = time.perf_counter() + self._budget_s * WALL_FACTOR
        self._sliced = sliced
        store.set_epoch_deadline(ticks)

    def _on_deadline(
        self,
        _context: object,
        _data: object,
        delta: ctypes._Pointer[ctypes.c_uint64],
        kind: ctypes._Pointer[ctypes.c_uint8],
    ) -> int:
        try:
            if not self._sliced and time.perf_counter() < self._wall_until:
                left_s = self._budget_s - (time.thread_time() - self._cpu_started)
                if left_s > 0:
                    delta[0] = max(1, math.ceil(left_s / self._tick_s))
                    kind[0] = _CONTINUE
                    return 0
        except BaseException:  # never let an exception cross into wasmtime: stop the call
            pass
        error = ffi.wasmtime_error_new(MARKER.encode())
        return ctypes.cast(error, ctypes.c_void_p).value or 0
