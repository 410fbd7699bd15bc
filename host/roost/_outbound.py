"""The transport of the host's outbound HTTP client (the ``llm`` and ``http`` capabilities).

httpx's default transport keeps one httpcore connection pool, and that pool does work
proportional to the square of its connections on every request and every response it
closes: each idle connection counts all connections to decide whether it is surplus, and
once more connections exist than ``max_keepalive_connections`` every connection that goes
idle is closed, so the next request opens a new one. Thousands of agents waiting on a
model provider at once keep tens to hundreds of connections open; with one pool, that
bookkeeping was about a quarter of the host's CPU under the density load test.

:class:`ShardedTransport` spreads requests round-robin over several ordinary transports,
so each pool holds a small share of the connections (its cost falls with the square of
the number of shards) and stays under its keep-alive limit (connections are reused).
"""

from __future__ import annotations

import itertools

import httpx

SHARDS = 16
"""Pools per client: ``SHARDS`` x 20 kept-alive connections before any is dropped."""


class ShardedTransport(httpx.AsyncBaseTransport):
    """Several ``httpx.AsyncHTTPTransport`` pools, used in turn."""

    def __init__(self, shards: int = SHARDS) -> None:
        if shards < 1:
            raise ValueError("a transport needs at least one pool")
        self._pools = [httpx.AsyncHTTPTransport() for _ in range(shards)]
        self._next = itertools.cycle(self._pools).__next__

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._next().handle_async_request(request)

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()
