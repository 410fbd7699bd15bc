"""The host's answer to the proxy's agent check: how many requests to send it at once.

HAProxy gives each host at most ``maxconn`` requests at once and queues the rest
(``roost.cluster``): that is how overload is shed in front of the hosts, cheaply. But a
request whose handler waits on an LLM call holds one of those slots for seconds while
costing the host nothing, so a fixed number caps a host of chat agents far below what it
can serve. HAProxy's agent check (a TCP connection to ``ROOST_PROXY_AGENT_PORT``, one
line back) lets each host say, every 250 ms, ``maxconn:N``: its ``proxy_slots`` for
requests doing work, plus one for every handler now waiting on its async ops.
"""

from __future__ import annotations

import contextlib

import trio

from ..host import Host


def _agent_line(slots: int, waiting_on_ops: int) -> bytes:
    """The agent check's answer: HAProxy reads one line of words, here ``maxconn:N``."""
    return f"maxconn:{slots + waiting_on_ops}\n".encode()


async def serve_proxy_agent(
    host: Host,
    bind_host: str,
    port: int,
    slots: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer agent checks on ``bind_host:port`` until cancelled; ``task_status`` gets the
    port (the one picked when ``port`` is 0)."""

    async def answer(stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(_agent_line(slots, host.waiting_on_ops))
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(port, host=bind_host)
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(answer, listeners)
