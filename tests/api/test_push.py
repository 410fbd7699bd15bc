"""Pushes the agent makes on its own (timers) and LLM tokens, over WebSocket and SSE."""

from __future__ import annotations

import json

from trio_websocket import open_websocket_url

from roost import Manifest

from ..capabilities.test_timers import sim_llm
from ..conftest import sse_events
from .conftest import Serve


async def test_timer_replies_are_pushed_over_the_websocket(
    serve_host: Serve, caller_manifest: Manifest
) -> None:
    async with serve_host(caller_manifest) as served:
        url = served.url.replace("http://", "ws://") + "/v1/agents/caller/a/ws"
        async with open_websocket_url(f"{url}?token={served.token('caller/a')}") as ws:
            await ws.send_message(
                json.dumps({"message": {"op": "schedule", "after": 0.2, "payload": "wake"}})
            )
            frames = [json.loads(await ws.get_message()) for _ in range(3)]
        assert frames[0]["type"] == "reply"  # the timer id
        assert frames[1] == {"type": "done"}
        assert frames[2] == {"type": "push", "message": {"timer": "wake"}}


async def test_llm_tokens_stream_as_sse_events(
    serve_host: Serve, caller_manifest: Manifest
) -> None:
    async with (
        sim_llm(completion_tokens=5) as llm,
        serve_host(caller_manifest, host_settings={"llm_base_url": llm.url}) as served,
    ):
        headers = {**served.agent_headers("caller/a"), "Accept": "text/event-stream"}
        events: list[tuple[str, object]] = []
        async with served.client.stream(
            "POST",
            "/v1/agents/caller/a/messages",
            json={"message": {"op": "chat", "text": "tell me", "stream": True}},
            headers=headers,
        ) as response:
            events += [event async for event in sse_events(response)]
    tokens = [data for name, data in events if name == "token"]
    replies = [data for name, data in events if name == "reply"]
    assert len(tokens) == 5
    assert replies == ["".join(str(t) for t in tokens)]
    assert [name for name, _ in events][-1] == "done"


async def test_export_lists_pending_timers(serve_host: Serve, caller_manifest: Manifest) -> None:
    async with serve_host(caller_manifest) as served:
        response = await served.message(
            "caller/a", {"op": "schedule", "after": 3600, "payload": {"note": "later"}, "id": "t1"}
        )
        assert response.json()["replies"] == ["t1"]
        exported = (
            await served.client.get("/v1/agents/caller/a/export", headers=served.admin)
        ).json()
        [timer] = exported["timers"]
        assert (timer["id"], timer["kind"], timer["payload"]) == ("t1", "timer", {"note": "later"})
