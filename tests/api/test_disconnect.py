"""A client that goes away mid-request is not an error of the host's: nothing is logged
at error level, and the agent keeps serving."""

from __future__ import annotations

import logging

import pytest
import trio

from roost import Manifest

from .conftest import Serve


@pytest.mark.parametrize("stream", [False, True])
async def test_a_client_disconnect_is_not_logged_as_an_error(
    serve_host: Serve,
    probe_manifest: Manifest,
    caplog: pytest.LogCaptureFixture,
    stream: bool,
) -> None:
    with caplog.at_level(logging.INFO):
        async with serve_host(probe_manifest) as served:
            headers = served.agent_headers("probe/a")
            if stream:
                headers["Accept"] = "text/event-stream"
            with trio.move_on_after(0.5):
                await served.client.post(
                    "/v1/agents/probe/a/messages",
                    json={"message": {"op": "sleep", "seconds": 1.0}},
                    headers=headers,
                )
            await trio.sleep(1.5)  # the handler finishes with nobody listening
            reply = await served.message("probe/a", {"op": "count"})
            assert reply.json()["replies"] == [1]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
