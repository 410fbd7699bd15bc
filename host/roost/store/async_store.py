"""One generic async adapter over any :class:`~roost.store.protocol.StateStore`.

Stores are synchronous; async code calls them through :class:`AsyncStore`, which runs a
method on a worker thread (``await stores.run(store.delete_agent, address)``) and commits
on the event loop when the store can write at once, else on a worker thread.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import trio

from .protocol import Commit, StateStore

_P = ParamSpec("_P")
_T = TypeVar("_T")


class AsyncStore:
    """``store``, for the event loop. ``inline=True`` calls it on the loop itself (for a
    store whose calls never wait long, and for tests that drive a virtual clock).

    ``limiter`` bounds the threads of other calls, ``commit_limiter`` those of commits: a
    lane of their own, so that a turn's commit never queues behind a flood of reads (an ask
    storm reads the store for every ask it sends)."""

    def __init__(
        self,
        store: StateStore,
        *,
        limiter: trio.CapacityLimiter | None = None,
        commit_limiter: trio.CapacityLimiter | None = None,
        inline: bool = False,
    ) -> None:
        self.store = store
        self._limiter = limiter
        self._commit_limiter = commit_limiter or limiter
        self._inline = inline
        self.calls_running = 0
        """Store calls on (or waiting for) a worker thread now."""

    async def run(self, method: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Call one of the store's methods on a worker thread."""
        call = functools.partial(method, *args, **kwargs)
        if self._inline:
            await trio.lowlevel.checkpoint()
            return call()
        return await self._on_thread(call)

    async def commit(self, commit: Commit) -> None:
        """Write ``commit``: right here when the store can do so without waiting, else on a
        worker thread. Once cancellation reaches a commit on a worker thread, it may still be
        written."""
        if self._inline:
            await self.run(self.store.commit, commit)
        elif not self.store.commit(commit, wait=False):
            await self._on_thread(
                functools.partial(self.store.commit, commit), self._commit_limiter
            )

    async def _on_thread(
        self, call: Callable[[], _T], limiter: trio.CapacityLimiter | None = None
    ) -> _T:
        self.calls_running += 1
        try:
            return await trio.to_thread.run_sync(call, limiter=limiter or self._limiter)
        finally:
            self.calls_running -= 1
