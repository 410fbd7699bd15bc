"""Worker threads at a lower CPU priority, for turns that wake agents, for the turns of
kinds that run long, and for those of kinds taking more than their share of the CPU.

On Linux a thread's nice value is its own: these threads raise theirs once, when they
start, and run nothing else. When background turns and the event loop (or the short turns
of agents already awake) want the same core, the scheduler gives the loop and the short
turns most of it, and the background ones what is left. Elsewhere the threads run at
normal priority.

Two lanes, each of at most as many threads as the process has cores: wakes, and the calls
of heavy kinds (a looping kind's second-long calls never hold up another kind's wakes).
More low-priority threads than cores buy no throughput and cost the loop: each is weighed
on its own by the scheduler, and one of them holding the GIL when preempted stalls
everything until the scheduler gets back to it (in the neighbour benchmark, four wake
threads on one core tripled the neighbours' p99 under a storm of activations; one kept
it within 1.5x).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import trio

T = TypeVar("T")

logger = logging.getLogger("roost.workers")

BACKGROUND_NICE = 10
"""How much lower the background threads' priority is (Linux CFS: a nice 10 thread gets
about a tenth of a core that a nice 0 thread wants too)."""


class BackgroundThreads:
    """``threads`` threads at ``nice`` lower priority; :meth:`run` awaits a call on one."""

    def __init__(self, threads: int, *, nice: int = BACKGROUND_NICE) -> None:
        self._nice = nice
        threads = max(1, min(threads, _available_cores()))
        self._wakes = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="roost-wake", initializer=self._lower
        )
        self._heavy = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="roost-background", initializer=self._lower
        )
        self._soon = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="roost-dispose", initializer=self._lower
        )
        """A thread of its own for :meth:`run_soon`: never queued behind long turns."""

    def _lower(self) -> None:
        if sys.platform == "linux" and self._nice:
            try:
                thread = threading.get_native_id()
                os.setpriority(
                    os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + self._nice
                )
            except OSError:  # not permitted here: run at normal priority
                pass

    async def run(self, call: Callable[[], T], *, heavy: bool = False) -> T:
        """Run ``call`` on a background thread (with this task's context variables) and
        return its result: of the heavy kinds' lane if ``heavy``, else of the wakes'. Like
        ``trio.to_thread.run_sync``, it is not cancellable: a call that started runs to
        its end."""
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def finished(_future: Future[T]) -> None:
            with contextlib.suppress(trio.RunFinishedError):  # the host already stopped
                token.run_sync_soon(done.set)

        executor = self._heavy if heavy else self._wakes
        future = executor.submit(contextvars.copy_context().run, call)
        future.add_done_callback(finished)
        with trio.CancelScope(shield=True):
            await done.wait()
        return future.result()

    def run_soon(self, call: Callable[[], None]) -> None:
        """Run ``call`` on a background thread, not waiting for it; an exception it raises
        is logged. Once the threads are let go, ``call`` runs right here."""
        try:
            future = self._soon.submit(call)
        except RuntimeError:  # shut down
            call()
            return
        future.add_done_callback(_log_failure)

    def close(self) -> None:
        self._wakes.shutdown(wait=False, cancel_futures=True)
        self._heavy.shutdown(wait=False, cancel_futures=True)
        self._soon.shutdown(wait=False)


def _available_cores() -> int:
    """The cores this process may run on (its CPU affinity, where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _log_failure(future: Future[None]) -> None:
    if not future.cancelled() and (error := future.exception()) is not None:
        logger.error("background call failed", exc_info=error)
