"""The examples of agents that act (``examples/toolbox``, ``examples/notes_mcp``,
``examples/refunds``), built by the real toolchain and run in a real host: the tool loop
with a Python tool and an HTTP one, MCP tools mixed with a Python tool against the notes
MCP server (the official ``mcp`` SDK's) across hibernation, and a refund a person approves
over the HTTP API.

The model is the SIMULATED server (``loadtests/sim_llm.py``), which calls the tools a
message names with the JSON after each name; all traffic stays on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from roost import Host, HostConfig, Manifest, open_host
from roost.payload import unpack

from .api import conftest as api_conftest
from .api.conftest import Serve
from .conftest import built, mcp_server, sim_llm, until

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

serve_host = api_conftest.serve_host


@pytest.fixture(scope="session")
def toolbox_manifest(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    return built(EXAMPLES / "toolbox" / "agent.toml", tmp_path_factory.mktemp("toolbox"), cache_dir)


@pytest.fixture(scope="session")
def notes_manifest(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    return built(EXAMPLES / "notes_mcp" / "agent.toml", tmp_path_factory.mktemp("notes"), cache_dir)


@pytest.fixture(scope="session")
def refunds_manifest(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    return built(EXAMPLES / "refunds" / "agent.toml", tmp_path_factory.mktemp("refunds"), cache_dir)


def _with(manifest: Manifest, capabilities: dict[str, Any], config: dict[str, Any]) -> Manifest:
    return manifest.model_copy(
        update={
            "capabilities": {**manifest.capabilities, **capabilities},
            "config": {**manifest.config, **config},
        }
    )


@asynccontextmanager
async def rates_api() -> AsyncIterator[tuple[str, list[str]]]:
    """A loopback stand-in for the exchange-rate API the toolbox example calls: its URL,
    and the query strings it was asked."""
    asked: list[str] = []

    async def latest(request: Request) -> JSONResponse:
        asked.append(str(request.url.query))
        base, quote = request.query_params["from"], request.query_params["to"]
        return JSONResponse({"base": base, "rates": {quote: 1.08}})

    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 0.0
    app = Starlette(routes=[Route("/latest", latest)])
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(partial(serve, app, config, mode="asgi"))
        yield urls[0], asked
        nursery.cancel_scope.cancel()


async def test_toolbox_calls_an_http_tool_and_a_python_tool(
    host_config: Callable[..., HostConfig], toolbox_manifest: Manifest
) -> None:
    async with rates_api() as (api, asked), sim_llm(completion_tokens=8) as llm:
        manifest = _with(
            toolbox_manifest,
            {"http": {"hosts": ["127.0.0.1"], "timeout_s": 10}},
            {"rates_api": api},
        )
        settings = {"llm_base_url": llm.url, "http_allow_private": True}
        async with open_host(host_config(**settings)) as host:
            await host.deploy(manifest)
            [reply] = await host.send(
                "toolbox/ana",
                'exchange_rate {"base": "eur", "quote": "usd"} '
                'calculate {"expression": "250 * 1.08"}',
            )
            [forgot] = await host.send("toolbox/ana", "calculate")  # no arguments
            state = await _state(host, "toolbox/ana")
            await host.deploy(_with(manifest, {}, {"max_rounds": 1}))  # a tighter budget
            [cut] = await host.send("toolbox/bo", 'calculate {"expression": "1 + 1"}')
    assert asked == ["from=EUR&to=USD"]  # the HTTP tool went through the http grant
    assert reply["tools"] == [
        {
            "name": "exchange_rate",
            "arguments": {"base": "eur", "quote": "usd"},
            "result": 1.08,
            "error": None,
        },
        {
            "name": "calculate",
            "arguments": {"expression": "250 * 1.08"},
            "result": 270.0,
            "error": None,
        },
    ]
    assert reply["answer"] == "tool results: 1.08; 270.0"  # the model saw both results
    assert reply["stopped"] == "answered"
    # A call the function cannot take is an error the model sees, not a crash.
    assert forgot["tools"][0]["error"] == "TypeError: missing arguments expression"
    assert state["tool_calls"] == 3
    # One model round: the tool ran, the model never saw its result.
    assert cut["stopped"] == "max_rounds" and cut["answer"] == ""
    assert [t["result"] for t in cut["tools"]] == [2.0]
    roles = [m["role"] for m in state["history"]]
    first = ["user", "assistant", "tool", "tool", "assistant"]  # two tools, then the answer
    assert roles == [*first, "user", "assistant", "tool", "assistant"]


async def _state(host: Host, address: str) -> dict[str, Any]:
    exported = await host.export(address)
    assert exported is not None and exported.record.state is not None
    state: dict[str, Any] = unpack(exported.record.state)
    return state


async def test_notes_mcp_mixes_mcp_tools_and_a_python_tool_across_hibernation(
    host_config: Callable[..., HostConfig], notes_manifest: Manifest
) -> None:
    async with mcp_server("handshake") as server, sim_llm(completion_tokens=8) as llm:
        manifest = _with(
            notes_manifest,
            {"mcp": {**notes_manifest.capabilities["mcp"], "servers": {"notes": server.url}}},
            {},
        )
        settings = {"llm_base_url": llm.url, "http_allow_private": True}
        async with open_host(host_config(**settings)) as host:
            await host.deploy(manifest)
            [added] = await host.send(
                "notes-mcp/kim",
                'add_note {"text": "buy oat milk"} word_count {"text": "buy oat milk"}',
            )
            [readme] = await host.send("notes-mcp/kim", "/help")
            await until(lambda: host.turns_running == 0)
            host.hibernate_idle()
            await until(lambda: not host.is_resident("notes-mcp/kim"))
            [listed] = await host.send("notes-mcp/kim", "list_notes")
    assert added["tools"] == [
        {"name": "add_note", "result": {"result": "note 1 added"}, "error": None},
        {"name": "word_count", "result": 3, "error": None},
    ]
    assert readme.startswith("Notes are kept per session.")
    # After hibernating, the agent went on with its MCP session: its notes are there.
    assert listed["tools"] == [
        {"name": "list_notes", "result": {"result": ["buy oat milk"]}, "error": None}
    ]
    assert list(server.notebooks.values()) == [["buy oat milk"]]
    sessions = {r["session"] for r in server.requests} - {None}
    assert len(sessions) == 1


async def test_refunds_wait_for_a_person_over_the_api(
    serve_host: Serve, refunds_manifest: Manifest
) -> None:
    async with serve_host(refunds_manifest) as served:
        small = await served.message("refunds/lou", {"order": "A-1", "amount": 20})
        assert small.json()["replies"] == ["Refunded 20 EUR for order A-1."]
        large = await served.message("refunds/lou", {"order": "A-2", "amount": 250})
        assert large.json()["replies"] == [
            "A refund of 250 EUR for order A-2 needs approval; I asked."
        ]
        headers = served.agent_headers("refunds/lou")
        # The op records the request as it starts, right after the turn committed.
        with trio.fail_after(20):
            while not (waiting_now := await _waiting(served, headers)):
                await trio.lowlevel.checkpoint()
        [waiting] = waiting_now
        assert waiting["action"] == "refund 250 EUR for order A-2"
        assert waiting["details"] == {"order": "A-2", "amount": 250.0}
        url = f"/v1/agents/refunds/lou/approvals/{waiting['id']}"

        # Bad input is a JSON 4xx naming the problem; another agent's token may not decide.
        vague = await served.client.post(url, json={"decision": "maybe"}, headers=headers)
        assert vague.status_code == 400
        assert '{"decision": "approve" | "reject"' in vague.json()["error"]["message"]
        extra = await served.client.post(
            url, json={"decision": "approve", "amount": 1}, headers=headers
        )
        assert extra.status_code == 400 and "unknown fields amount" in extra.text
        stranger = await served.client.post(
            url, json={"decision": "approve"}, headers=served.agent_headers("refunds/eve")
        )
        assert stranger.status_code == 403
        unknown = await served.client.post(
            "/v1/agents/refunds/lou/approvals/ap-nope",
            json={"decision": "approve"},
            headers=headers,
        )
        assert unknown.status_code == 404

        decided = await served.client.post(
            url, json={"decision": "approve", "by": "dana", "note": "ok"}, headers=served.admin
        )
        assert decided.status_code == 200, decided.text
        assert decided.json()["approval"]["decision"] == "approved"
        again = await served.client.post(url, json={"decision": "reject"}, headers=served.admin)
        assert again.status_code == 409

        async def refunded() -> list[Any]:
            reply = await served.message("refunds/lou", "refunds")
            return list(reply.json()["replies"][0]["refunded"])

        with trio.fail_after(20):
            while len(await refunded()) < 2:
                await trio.lowlevel.checkpoint()
        listed = await served.client.get("/v1/agents/refunds/lou/approvals", headers=headers)
        status = await served.client.get("/v1/agents/refunds/lou", headers=headers)
        [final] = (await served.message("refunds/lou", "refunds")).json()["replies"]
    [approval] = listed.json()["approvals"]
    assert (approval["decision"], approval["decided_by"], approval["note"]) == (
        "approved",
        "dana",
        "ok",
    )
    assert status.json()["agent"]["approvals"] == []  # decided: no longer waiting
    assert final == {
        "refunded": [
            {"order": "A-1", "amount": 20.0, "approved_by": None},
            {"order": "A-2", "amount": 250.0, "approved_by": "dana"},
        ],
        "pending": [],
    }


async def _waiting(served: Any, headers: dict[str, str]) -> list[dict[str, Any]]:
    status = await served.client.get("/v1/agents/refunds/lou", headers=headers)
    waiting: list[dict[str, Any]] = status.json()["agent"]["approvals"]
    return waiting
