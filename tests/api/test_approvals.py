"""Approvals over the HTTP API, on a real loopback socket: a streamed message whose handler
waits for a person gets ``: keep-alive`` comments while nothing else is sent, then the
reply once the decision is posted."""

from __future__ import annotations

import json
from typing import Any

import trio

from roost import Manifest

from .conftest import Serve


async def test_a_stream_waiting_for_a_decision_is_kept_alive(
    serve_host: Serve, caller_manifest: Manifest
) -> None:
    async with serve_host(caller_manifest, sse_keepalive_s=0.05) as served:
        headers = {**served.agent_headers("caller/a"), "Accept": "text/event-stream"}
        lines: list[str] = []
        with trio.fail_after(30):
            async with served.client.stream(
                "POST",
                "/v1/agents/caller/a/messages",
                json={"message": {"op": "approve", "action": "close the account"}},
                headers=headers,
            ) as response:
                assert response.status_code == 200
                decided: dict[str, Any] = {}
                async for line in response.aiter_lines():
                    lines.append(line)
                    if lines.count(": keep-alive") == 2 and not decided:
                        listed = await served.client.get(
                            "/v1/agents/caller/a/approvals", headers=served.admin
                        )
                        [waiting] = listed.json()["approvals"]
                        assert waiting["decision"] is None
                        answer = await served.client.post(
                            f"/v1/agents/caller/a/approvals/{waiting['id']}",
                            json={"decision": "reject", "note": "not today"},
                            headers=served.agent_headers("caller/a"),
                        )
                        assert answer.status_code == 200, answer.text
                        decided = answer.json()["approval"]
    assert decided["decision"] == "rejected"
    assert decided["by"] == "token of caller/a"  # no "by" given: who the token is
    events = [line for line in lines if line.startswith("event: ")]
    assert events == ["event: reply", "event: done"]
    reply = json.loads(next(line for line in lines if line.startswith("data: {"))[6:])
    assert (reply["decision"], reply["note"], reply["approved"]) == ("rejected", "not today", False)
    assert lines.index(": keep-alive") < lines.index("event: reply")
