"""The host's answer to HAProxy's agent check (``roost.api.proxy_agent``), over real TCP."""

from __future__ import annotations

import trio

from roost import Manifest

from ..conftest import until
from .conftest import Serve


async def _agent_says(port: int) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        answer = b""
        while chunk := await stream.receive_some():
            answer += chunk
    return answer


async def test_the_agent_check_counts_the_slots_and_every_handler_waiting_on_ops(
    serve_host: Serve, caller_manifest: Manifest
) -> None:
    async with serve_host(caller_manifest, proxy_agent_port=0, proxy_slots=5) as served:
        port = served.serving.proxy_agent_port
        assert port is not None
        assert await _agent_says(port) == b"maxconn:5\n"
        replies: list[object] = []

        async def ask_a_sleeper() -> None:
            message = {"op": "ask", "kind": "caller", "id": "sleeper", "message": {"sleep": 1.0}}
            replies.append((await served.message("caller/a", message)).json()["replies"])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask_a_sleeper)
            # caller/a waits on its ask, caller/sleeper on its sleep: two more slots.
            await until(lambda: served.host.waiting_on_ops == 2)
            assert await _agent_says(port) == b"maxconn:7\n"
        assert replies == [[["slept"]]]
        assert served.host.waiting_on_ops == 0
        assert await _agent_says(port) == b"maxconn:5\n"
