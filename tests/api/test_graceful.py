"""Past the graceful timeout, requests still running answer 503 with Retry-After (or end
their event stream with an ``error`` event) before the connection closes."""

from __future__ import annotations

import trio

from roost import Manifest

from ..conftest import sse_events, until
from .conftest import Serve


async def test_requests_still_running_after_the_grace_period_get_503(
    serve_host: Serve, probe_manifest: Manifest
) -> None:
    results: dict[str, object] = {}
    async with serve_host(probe_manifest, graceful_timeout_s=0.5) as served:

        async def plain() -> None:
            response = await served.message("probe/a", {"op": "sleep", "seconds": 600})
            results["plain"] = (response.status_code, response.headers, response.json())

        async def streamed() -> None:
            async with served.client.stream(
                "POST",
                "/v1/agents/probe/b/messages",
                json={"message": {"op": "sleep", "seconds": 600}},
                headers={**served.agent_headers("probe/b"), "Accept": "text/event-stream"},
            ) as response:
                results["stream"] = [event async for event in sse_events(response)]

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(plain)
                nursery.start_soon(streamed)
                await until(lambda: served.host._registry.in_flight == 2)
                served.serving.shut_down()
    status, headers, body = results["plain"]  # type: ignore[misc]
    assert status == 503
    assert headers["retry-after"] == "1"
    assert body["error"]["type"] == "Overloaded"
    assert "shut down before the request finished" in body["error"]["message"]
    events = results["stream"]
    assert events[0] == ("reply", "before")  # type: ignore[index]
    name, data = events[-1]  # type: ignore[index]
    assert name == "error"
    assert data["status"] == 503
