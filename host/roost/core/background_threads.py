"""Worker threads at a lower CPU priority, for the turns of kinds that run long.

On Linux a thread's nice value is its own: these threads raise theirs once, when they
start, and run nothing else. When a long-running kind's turns and the event loop (or the
short turns of other kinds) want the same core, the scheduler gives the loop and the short
turns most of it, and the long ones what is left. Elsewhere the threads run at normal
priority.
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
        self._executor = ThreadPoolExecutor(
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

    async def run(self, call: Callable[[], T]) -> T:
        """Run ``call`` on a background thread (with this task's context variables) and
        return its result. Like ``trio.to_thread.run_sync``, it is not cancellable: a
        call that started runs to its end."""
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def finished(_future: Future[T]) -> None:
            with contextlib.suppress(trio.RunFinishedError):  # the host already stopped
                token.run_sync_soon(done.set)

        future = self._executor.submit(contextvars.copy_context().run, call)
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
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._soon.shutdown(wait=False)


def _log_failure(future: Future[None]) -> None:
    if not future.cancelled() and (error := future.exception()) is not None:
        logger.error("background call failed", exc_info=error)
