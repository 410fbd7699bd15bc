"""The HTTP API over a real loopback socket."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio
from trio.testing import wait_all_tasks_blocked
from trio_websocket import open_websocket_url

from roost import Manifest

from ..conftest import sse_events, until, with_limits
from .conftest import ADMIN_TOKEN, Serve


async def test_round_trip_returns_replies_and_agent_status(
    serve_host: Serve, echo_manifest: Manifest
) -> None:
    async with serve_host(echo_manifest) as served:
        response = await served.message("echo/alice", "hello")
        assert response.status_code == 200
        body = response.json()
        assert body["replies"] == [{"echo": "hello", "count": 1}]
        assert body["agent"]["address"] == "echo/alice"
        assert body["agent"]["turns"] == 1
        assert body["agent"]["resident"] is True
        status = await served.client.get(
            "/v1/agents/echo/alice", headers=served.agent_headers("echo/alice")
        )
        assert status.json()["agent"]["turns"] == 1


def _ops_ms(response: httpx.Response) -> float:
    name, duration, _ = response.headers["server-timing"].split(";", 2)
    assert name == "ops"
    return float(duration.removeprefix("dur="))


async def test_server_timing_tells_op_waits_from_host_time(
    serve_host: Serve, probe_manifest: Manifest
) -> None:
    async with serve_host(probe_manifest) as served:
        started = trio.current_time()
        slept = await served.message("probe/t", {"op": "sleep_twice", "seconds": 0.2})
        elapsed_ms = (trio.current_time() - started) * 1000
        assert slept.status_code == 200
        # Both sleeps count as waiting on ops; the rest of the reply time is the host's.
        assert 400 <= _ops_ms(slept) < elapsed_ms
        quick = await served.message("probe/t", {"op": "count"})
        assert _ops_ms(quick) == 0.0


async def test_auth_wrong_agent_expired_and_missing(
    serve_host: Serve, echo_manifest: Manifest
) -> None:
    async with serve_host(echo_manifest) as served:
        url = "/v1/agents/echo/alice/messages"
        body = {"message": "hi"}
        missing = await served.client.post(url, json=body)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        bob = await served.client.post(url, json=body, headers=served.agent_headers("echo/bob"))
        assert bob.status_code == 403
        assert "not valid for agent echo/alice" in bob.json()["error"]["message"]
        expired_token = served.token("echo/alice", ttl_s=-60)
        expired = await served.client.post(
            url, json=body, headers={"Authorization": f"Bearer {expired_token}"}
        )
        assert expired.status_code == 401
        assert "expired" in expired.json()["error"]["message"]
        forged = await served.client.post(
            url, json=body, headers={"Authorization": "Bearer not.a.jwt"}
        )
        assert forged.status_code == 401
        # Admin calls need the admin token, not an agent token.
        listing = await served.client.get(
            "/v1/agents/echo", headers=served.agent_headers("echo/alice")
        )
        assert listing.status_code == 403
        assert (await served.client.get("/v1/agents/echo", headers=served.admin)).status_code == 200
        # Nothing reached the agent.
        ok = await served.message("echo/alice", "now")
        assert ok.json()["replies"] == [{"echo": "now", "count": 1}]


async def test_sse_streams_replies_as_they_are_produced(
    serve_host: Serve, probe_manifest: Manifest
) -> None:
    async with serve_host(probe_manifest) as served:
        events: list[tuple[str, Any]] = []
        in_flight_at_first_reply = None
        headers = {**served.agent_headers("probe/a"), "Accept": "text/event-stream"}
        async with served.client.stream(
            "POST",
            "/v1/agents/probe/a/messages",
            json={"message": {"op": "sleep", "seconds": 0.5}},
            headers=headers,
        ) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            async for event in sse_events(response):
                events.append(event)
                if in_flight_at_first_reply is None:
                    in_flight_at_first_reply = served.host._registry.in_flight
        assert [name for name, _ in events] == ["reply", "reply", "done"]
        assert events[0][1] == "before"
        assert events[1][1] == {"after": 1}
        assert events[2][1]["agent"]["address"] == "probe/a"
        # The first reply arrived while the handler was still sleeping.
        assert in_flight_at_first_reply == 1


async def test_websocket_push_and_hibernation_with_socket_open(
    serve_host: Serve, probe_manifest: Manifest
) -> None:
    async with serve_host(probe_manifest) as served:
        ws_url = served.url.replace("http://", "ws://") + "/v1/agents/probe/a/ws"
        token = served.token("probe/a")
        async with open_websocket_url(f"{ws_url}?token={token}") as ws:

            async def exchange(message: Any) -> list[dict[str, Any]]:
                await ws.send_message(json.dumps({"message": message}))
                frames = []
                while True:
                    frame = json.loads(await ws.get_message())
                    frames.append(frame)
                    if frame["type"] in ("done", "error"):
                        return frames

            # Replies are pushed as each turn commits, before the handler finishes.
            frames = await exchange({"op": "sleep", "seconds": 0.2})
            assert frames == [
                {"type": "reply", "message": "before"},
                {"type": "reply", "message": {"after": 1}},
                {"type": "done"},
            ]
            assert await exchange("count") == [
                {"type": "reply", "message": 1},
                {"type": "done"},
            ]
            # The agent hibernates while the host keeps the socket open...
            served.host.hibernate_idle()
            await wait_all_tasks_blocked()
            assert not served.host.is_resident("probe/a")
            # ...and the next message on the socket wakes it with its state.
            assert await exchange("count") == [
                {"type": "reply", "message": 2},
                {"type": "done"},
            ]
            stats = await served.host.statistics()
            assert stats.activations == 2
            error = await exchange({"op": "raise"})
            assert error[0]["type"] == "error"
            assert error[0]["status"] == 500
            assert await exchange("count") == [{"type": "reply", "message": 3}, {"type": "done"}]


async def test_websocket_refuses_another_agents_token(
    serve_host: Serve, probe_manifest: Manifest
) -> None:
    async with serve_host(probe_manifest) as served:
        upgrade = {
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        }
        refused = await served.client.get(
            "/v1/agents/probe/a/ws", params={"token": served.token("probe/b")}, headers=upgrade
        )
        assert refused.status_code == 403
        accepted = await served.client.get(
            "/v1/agents/probe/a/ws", params={"token": served.token("probe/a")}, headers=upgrade
        )
        assert accepted.status_code == 101


async def test_idempotency_key_survives_restart(
    serve_host: Serve, probe_manifest: Manifest
) -> None:
    async with serve_host(probe_manifest) as served:
        first = await served.message("probe/a", "count", **{"Idempotency-Key": "req-1"})
        assert first.json()["replies"] == [1]
        again = await served.message("probe/a", "count", **{"Idempotency-Key": "req-1"})
        assert again.json()["replies"] == [1]
        data_dir = served.data_dir
    async with serve_host(probe_manifest, data_dir=data_dir) as served:
        retried = await served.message("probe/a", "count", **{"Idempotency-Key": "req-1"})
        assert retried.json()["replies"] == [1]
        assert retried.json()["agent"]["turns"] == 1
        fresh = await served.message("probe/a", "count", **{"Idempotency-Key": "req-2"})
        assert fresh.json()["replies"] == [2]


async def test_concurrent_retries_run_the_turn_once(
    serve_host: Serve, probe_manifest: Manifest
) -> None:
    async with serve_host(probe_manifest) as served:
        results: list[httpx.Response] = []

        async def post() -> None:
            results.append(
                await served.message(
                    "probe/a", {"op": "sleep", "seconds": 0.2}, **{"Idempotency-Key": "same"}
                )
            )

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(post)
        assert [r.json()["replies"] for r in results] == [["before", {"after": 1}]] * 3


async def test_flood_gets_429_with_retry_after(serve_host: Serve, probe_manifest: Manifest) -> None:
    async with serve_host(with_limits(probe_manifest, mailbox_size=2)) as served:
        statuses: list[httpx.Response] = []

        async def post() -> None:
            statuses.append(await served.message("probe/a", {"op": "sleep", "seconds": 0.3}))

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(post)
        codes = sorted(r.status_code for r in statuses)
        assert codes.count(200) >= 1
        assert codes.count(429) >= 1
        assert set(codes) <= {200, 429}
        busy = next(r for r in statuses if r.status_code == 429)
        assert busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["type"] == "AgentBusy"
        metrics = (await served.client.get("/metrics")).text
        assert f'roost_requests_rejected_total{{status="429"}} {codes.count(429)}.0' in metrics


async def test_global_in_flight_limit_gets_503_with_retry_after(
    serve_host: Serve, probe_manifest: Manifest
) -> None:
    async with serve_host(probe_manifest, host_settings={"max_in_flight": 1}) as served:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(served.message, "probe/slow", {"op": "sleep", "seconds": 0.5})
            await until(lambda: served.host._registry.in_flight == 1)
            refused = await served.message("probe/other", "count")
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"] == {
            "type": "Overloaded",
            "message": refused.json()["error"]["message"],
            "retryable": True,
        }
        assert "max_in_flight" in refused.json()["error"]["message"]
        assert (await served.message("probe/other", "count")).status_code == 200


async def test_fork_isolation_and_erase(serve_host: Serve, probe_manifest: Manifest) -> None:
    async with serve_host(probe_manifest) as served:
        await served.message("probe/orig", "count")
        await served.message("probe/orig", {"op": "kv_set", "key": "k", "value": "v"})
        fork = await served.client.post(
            "/v1/agents/probe/orig/fork", json={"new_id": "copy"}, headers=served.admin
        )
        assert fork.status_code == 201
        assert fork.json()["agent"]["address"] == "probe/copy"
        assert (await served.message("probe/copy", "count")).json()["replies"] == [2]
        await served.message("probe/copy", {"op": "kv_set", "key": "k", "value": "changed"})
        # The original is untouched by what happened to the fork.
        assert (await served.message("probe/orig", "count")).json()["replies"] == [2]
        orig_kv = await served.message("probe/orig", {"op": "kv_get", "key": "k"})
        assert orig_kv.json()["replies"] == ["dg=="]  # b"v", base64 in JSON
        again = await served.client.post(
            "/v1/agents/probe/orig/fork", json={"new_id": "copy"}, headers=served.admin
        )
        assert again.status_code == 409

        exported = (
            await served.client.get("/v1/agents/probe/copy/export", headers=served.admin)
        ).json()
        assert exported["state"] == {"count": 2}
        assert list(exported["kv"]) == ["k"]

        erased = await served.client.delete("/v1/agents/probe/copy", headers=served.admin)
        assert erased.json()["erased"] is True
        exported = (
            await served.client.get("/v1/agents/probe/copy/export", headers=served.admin)
        ).json()
        assert exported["exists"] is False
        assert (await served.message("probe/copy", "count")).json()["replies"] == [1]


async def test_listing_pages_through_agents(serve_host: Serve, echo_manifest: Manifest) -> None:
    async with serve_host(echo_manifest) as served:
        for i in range(5):
            await served.message(f"echo/u{i}", "hi")
        first = (await served.client.get("/v1/agents/echo?limit=2", headers=served.admin)).json()
        assert [a["id"] for a in first["agents"]] == ["u0", "u1"]
        second = (
            await served.client.get(
                f"/v1/agents/echo?limit=2&after={first['next_after']}", headers=served.admin
            )
        ).json()
        assert [a["id"] for a in second["agents"]] == ["u2", "u3"]
        assert second["agents"][0]["resident"] is True


async def test_bad_input_gets_clear_4xx_and_traps_5xx(
    serve_host: Serve, probe_manifest: Manifest
) -> None:
    async with serve_host(probe_manifest, max_body_bytes=4096) as served:
        headers = served.agent_headers("probe/a")
        url = "/v1/agents/probe/a/messages"
        malformed = await served.client.post(url, content=b"{not json", headers=headers)
        assert malformed.status_code == 400
        assert "not valid JSON" in malformed.json()["error"]["message"]
        wrong_shape = await served.client.post(url, json={"msg": 1}, headers=headers)
        assert wrong_shape.status_code == 400
        too_big = await served.client.post(url, json={"message": "x" * 10_000}, headers=headers)
        assert too_big.status_code == 413
        unknown = await served.client.post(
            "/v1/agents/nope/a/messages", json={"message": 1}, headers=served.admin
        )
        assert unknown.status_code == 404
        bad_id = await served.client.post(
            "/v1/agents/probe/a%20b/messages", json={"message": 1}, headers=served.admin
        )
        assert bad_id.status_code == 400
        trap = await served.message("probe/a", {"op": "raise"})
        assert trap.status_code == 500
        assert trap.json()["error"]["type"] == "GuestTrap"
        assert "asked to fail" in trap.json()["error"]["message"]
        assert (await served.message("probe/a", "count")).json()["replies"] == [1]


async def test_health_metrics_openapi_and_kinds(serve_host: Serve, echo_manifest: Manifest) -> None:
    async with serve_host(echo_manifest) as served:
        assert (await served.client.get("/healthz")).json() == {"status": "ok"}
        ready = (await served.client.get("/readyz")).json()
        assert ready == {"status": "ready", "kinds": ["echo"]}
        await served.message("echo/a", "hi")
        metrics = (await served.client.get("/metrics")).text
        assert "roost_agents_resident 1.0" in metrics
        assert "roost_turns_total 1.0" in metrics
        spec = (await served.client.get("/openapi.json")).json()
        assert spec["openapi"].startswith("3.")
        assert "/v1/agents/{kind}/{id}/messages" in spec["paths"]
        assert "MessageRequest" in spec["components"]["schemas"]
        kinds = (await served.client.get("/v1/kinds", headers=served.admin)).json()
        assert [k["name"] for k in kinds["kinds"]] == ["echo"]


# The server refuses the unauthorised upload before reading it; httpx then drops its
# half-sent multipart body generator without closing it, which Python reports as unraisable.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_deploy_over_http_persists_across_restart(
    serve_host: Serve, echo_manifest: Manifest
) -> None:
    assert echo_manifest.component is not None
    wasm = echo_manifest.component.read_bytes()
    manifest_text = 'name = "echo2"\nversion = "2.0.0"\n[capabilities.log]\n'
    async with serve_host() as served:
        refused = await served.client.post(
            "/v1/kinds",
            files={"component": ("c.wasm", wasm)},
            data={"manifest": manifest_text},
            headers={"Authorization": "Bearer wrong"},
        )
        assert refused.status_code == 403
        deployed = await served.client.post(
            "/v1/kinds",
            files={"component": ("c.wasm", wasm)},
            data={"manifest": manifest_text},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert deployed.status_code == 201, deployed.text
        assert deployed.json()["kind"]["version"] == "2.0.0"
        assert (await served.message("echo2/a", "hi")).json()["replies"] == [
            {"echo": "hi", "count": 1}
        ]
        data_dir = served.data_dir
    async with serve_host(data_dir=data_dir) as served:
        assert (await served.message("echo2/a", "hi")).json()["replies"] == [
            {"echo": "hi", "count": 2}
        ]


def test_the_openapi_document_describes_streams() -> None:
    from roost.api.openapi import openapi_document

    spec = openapi_document()
    message = spec["paths"]["/v1/agents/{kind}/{id}/messages"]["post"]["responses"]["200"]
    events = message["content"]["text/event-stream"]["schema"]["oneOf"]
    assert {ref["$ref"].rsplit("/", 1)[1] for ref in events} == {
        "SseTokenEvent",
        "SseReplyEvent",
        "SseDoneEvent",
        "SseErrorEvent",
    }
    frames = spec["paths"]["/v1/agents/{kind}/{id}/ws"]["get"]["x-roost-frames"]["server"]
    assert {ref["$ref"].rsplit("/", 1)[1] for ref in frames} >= {"WsTokenFrame", "WsPushFrame"}
    schemas = spec["components"]["schemas"]
    assert schemas["WsPushFrame"]["properties"]["type"]["const"] == "push"
    assert schemas["SseTokenEvent"]["properties"]["data"]["type"] == "string"
