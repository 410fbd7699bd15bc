"""Nurseries owned by ``async with`` objects, without wrapping the caller's own errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


@asynccontextmanager
async def open_service_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery for an object's background tasks.

    An exception raised by the body of the ``async with`` cancels the background tasks and
    propagates as itself, so ``except ManifestError`` around ``open_host`` works, instead
    of arriving wrapped in an ``ExceptionGroup`` as a plain nursery would deliver it.
    """
    body_error: Exception | None = None
    async with trio.open_nursery() as nursery:
        try:
            yield nursery
        except Exception as exc:
            body_error = exc
            nursery.cancel_scope.cancel()
    if body_error is not None:
        raise body_error
