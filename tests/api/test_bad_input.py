"""Bad input gets a 4xx in the JSON error shape, naming the problem, before any turn
commits: nesting too deep, numbers too long, NaN, binary frames; and what a guest hands
back that JSON cannot carry is refused (deep replies) or written as JSON can (NaN)."""

from __future__ import annotations

import json

import pytest
from trio_websocket import open_websocket_url

from roost import Manifest
from roost.address import AgentAddress
from roost.store.protocol import Commit

from .conftest import ADMIN_TOKEN, Serve

MESSAGES = "/v1/agents/probe/a/messages"


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b'{"message": ' + b"[" * 2000 + b"]" * 2000 + b"}", "nested too deeply"),
        (b'{"message": ' + b"[" * 80 + b"]" * 80 + b"}", "at most 64 levels"),
        (b'{"message": ' + b"7" * 5000 + b"}", "number too long"),
        (b'{"message": NaN}', "NaN is not a JSON value"),
        (b'{"message": -Infinity}', "-Infinity is not a JSON value"),
        (b'{"message": 1e999999}', "Infinity"),
    ],
)
async def test_bad_json_is_a_400_naming_the_problem(
    serve_host: Serve, probe_manifest: Manifest, body: bytes, complaint: str
) -> None:
    async with serve_host(probe_manifest) as served:
        response = await served.client.post(
            MESSAGES, content=body, headers={**served.admin, "Content-Type": "application/json"}
        )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["type"] == "InvalidMessage"
        assert complaint in error["message"]
        assert (await served.host.agent_status("probe/a")).turns == 0


async def test_a_reply_nested_too_deeply_is_refused_before_its_turn_commits(
    serve_host: Serve, probe_manifest: Manifest
) -> None:
    async with serve_host(probe_manifest) as served:
        response = await served.message("probe/a", {"op": "deep_reply", "depth": 500})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["type"] == "ReplyTooDeep"
        assert (await served.host.agent_status("probe/a")).turns == 0  # nothing committed
        shallow = await served.message("probe/a", {"op": "deep_reply", "depth": 3})
        assert shallow.json()["replies"] == [[[["bottom"]]]]


async def test_floats_json_has_no_literal_for_are_written_as_strings(
    serve_host: Serve, probe_manifest: Manifest
) -> None:
    async with serve_host(probe_manifest) as served:
        response = await served.message("probe/a", {"op": "nan_reply"})
        assert response.status_code == 200
        assert json.loads(response.text)["replies"] == [
            {"nan": "NaN", "inf": "Infinity", "ninf": "-Infinity"}
        ]


async def test_a_binary_websocket_frame_gets_an_error_frame_and_the_socket_stays(
    serve_host: Serve, probe_manifest: Manifest
) -> None:
    async with serve_host(probe_manifest) as served:
        url = served.url.replace("http://", "ws://") + f"/v1/agents/probe/a/ws?token={ADMIN_TOKEN}"
        async with open_websocket_url(url) as socket:
            await socket.send_message(b"\x00\x01 not text")
            error = json.loads(await socket.get_message())
            assert error["type"] == "error" and error["status"] == 400
            assert "binary frames are not accepted" in error["error"]["message"]
            await socket.send_message(json.dumps({"message": {"op": "count"}}))
            assert json.loads(await socket.get_message()) == {"type": "reply", "message": 1}


async def test_export_of_state_that_does_not_decode_is_still_json(
    serve_host: Serve, probe_manifest: Manifest
) -> None:
    async with serve_host(probe_manifest) as served:
        address = AgentAddress("probe", "garbled")
        served.host.store.commit(Commit(address, at=1.0, state=b"\xc1 not msgpack"))
        response = await served.client.get("/v1/agents/probe/garbled/export", headers=served.admin)
        assert response.status_code == 200, response.text
        assert response.json()["state"] == {"undecodable": "c1206e6f74206d73677061636b"}


async def test_a_kind_asking_for_more_than_the_host_allows_is_not_deployed(
    serve_host: Serve, probe_manifest: Manifest
) -> None:
    assert probe_manifest.component is not None
    manifest_text = 'name = "greedy"\n[limits]\ncpu_deadline_ms = 600000\n[capabilities.log]\n'
    async with serve_host() as served:
        response = await served.client.post(
            "/v1/kinds",
            files={"component": ("c.wasm", probe_manifest.component.read_bytes())},
            data={"manifest": manifest_text},
            headers=served.admin,
        )
        assert response.status_code == 400
        message = response.json()["error"]["message"]
        assert "limits.cpu_deadline_ms = 600000 is over the host's max_cpu_deadline_ms" in message
