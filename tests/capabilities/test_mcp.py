"""The mcp capability with a real guest (tests/agents/caller) against a real MCP server made
with the official ``mcp`` SDK (examples/notes_mcp/server.py) on loopback: tools, resources,
the egress rules, and an agent's session across its hibernation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from roost import HostConfig, Manifest

from ..conftest import mcp_server
from .conftest import caller_host, settle


def _granted(manifest: Manifest, url: str, **grant: Any) -> Manifest:
    capabilities = dict(manifest.capabilities)
    capabilities["mcp"] = {"servers": {"notes": url}, "timeout_s": 10, **grant}
    return manifest.model_copy(update={"capabilities": capabilities})


async def _mcp(host: Any, agent: str, call: str, *args: Any) -> Any:
    [reply] = await host.send(f"caller/{agent}", {"op": "mcp", "call": call, "args": list(args)})
    return reply


@pytest.mark.parametrize("era", ["discover", "handshake"])
async def test_tools_and_resources_of_a_granted_server(
    era: str, host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    async with (
        mcp_server(era) as server,
        caller_host(
            host_config, _granted(caller_manifest, server.url), http_allow_private=True
        ) as host,
    ):
        listed = await _mcp(host, "a", "list_tools", "notes")
        assert [t["name"] for t in listed["tools"]] == ["add_note", "list_notes", "search_notes"]
        add = listed["tools"][0]
        assert add["description"].startswith("Add a note to the notebook.")
        assert add["input_schema"]["required"] == ["text"]
        added = await _mcp(host, "a", "call_tool", "notes", "add_note", {"text": "buy milk"})
        assert added == {
            "content": [{"type": "text", "text": "note 1 added"}],
            "text": "note 1 added",
            "structured": {"result": "note 1 added"},
            "is_error": False,
        }
        notes = await _mcp(host, "a", "call_tool", "notes", "list_notes")
        assert notes["structured"] == {"result": ["buy milk"]}
        unknown = await _mcp(host, "a", "call_tool", "notes", "burn_notes")
        assert unknown["is_error"] is True and "burn_notes" in unknown["text"]
        resources = await _mcp(host, "a", "list_resources", "notes")
        assert resources["resources"] == [
            {
                "uri": "notes://readme",
                "name": "readme",
                "description": "How this notebook works.",
                "mime_type": "text/plain",
            }
        ]
        readme = await _mcp(host, "a", "read_resource", "notes", "notes://readme")
        assert readme["contents"][0]["text"].startswith("Notes are kept per session.")
    sessions = {r["session"] for r in server.requests}
    if era == "handshake":  # one session, named on every request after the handshake
        assert [r["method"] for r in server.requests][:3] == [
            "server/discover",
            "initialize",
            "notifications/initialized",
        ]
        assert len(sessions - {None}) == 1
        assert list(server.notebooks.values()) == [["buy milk"]]
    else:
        assert sessions == {None}  # the 2026 protocol is stateless
        assert server.notebooks == {"shared": ["buy milk"]}


@pytest.mark.parametrize("era", ["discover", "handshake"])
async def test_the_session_survives_hibernation(
    era: str, host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    async with (
        mcp_server(era) as server,
        caller_host(
            host_config, _granted(caller_manifest, server.url), http_allow_private=True
        ) as host,
    ):
        await _mcp(host, "a", "call_tool", "notes", "add_note", {"text": "one"})
        await settle(host)
        host.hibernate_idle()
        await settle(host)
        assert not host.is_resident("caller/a")
        await _mcp(host, "a", "call_tool", "notes", "add_note", {"text": "two"})
        notes = await _mcp(host, "a", "call_tool", "notes", "list_notes")
        assert notes["structured"] == {"result": ["one", "two"]}
        # Another agent has its own session.
        other = await _mcp(host, "b", "call_tool", "notes", "list_notes")
    negotiations = [r for r in server.requests if r["method"] in ("server/discover", "initialize")]
    if era == "handshake":
        assert len(negotiations) == 4  # a and b: discover refused, then initialize
        assert other["structured"] == {"result": []}
    else:
        assert len(negotiations) == 2  # one discover each: the woken agent adopted its own
        assert other["structured"] == {"result": ["one", "two"]}  # one shared notebook


async def test_a_forgotten_session_starts_a_new_one(
    host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    async with (
        mcp_server("handshake") as server,
        caller_host(
            host_config, _granted(caller_manifest, server.url), http_allow_private=True
        ) as host,
    ):
        await _mcp(host, "a", "call_tool", "notes", "add_note", {"text": "one"})
        server.forget_sessions()
        notes = await _mcp(host, "a", "call_tool", "notes", "list_notes")
    assert notes["is_error"] is False and notes["structured"] == {"result": []}
    assert len({r["session"] for r in server.requests} - {None}) == 2


async def test_the_egress_rules_of_http_apply(
    host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    async with mcp_server() as server:
        manifest = _granted(caller_manifest, server.url, tools={"notes": ["list_notes"]})
        async with caller_host(host_config, manifest) as host:  # loopback is refused
            refused = await _mcp(host, "a", "list_tools", "notes")
            assert refused["error"].startswith(
                "mcp: list-tools on server 'notes' failed: "
            ) or refused["error"].startswith("http.fetch: '127.0.0.1' resolves to 127.0.0.1")
            assert "loopback" in refused["error"]
            ungranted = await _mcp(host, "a", "list_tools", "files")
            assert ungranted["error"] == (
                "mcp.list-tools: server 'files' is not granted (mcp grant servers: notes)"
            )
        async with caller_host(host_config, manifest, http_allow_private=True) as host:
            listed = await _mcp(host, "a", "list_tools", "notes")
            assert [t["name"] for t in listed["tools"]] == ["list_notes"]
            narrowed = await _mcp(host, "a", "call_tool", "notes", "add_note", {"text": "x"})
            assert narrowed["error"] == (
                "mcp.call-tool: tool 'add_note' of notes is not granted (mcp grant "
                "tools.notes: list_notes)"
            )
    assert server.notebooks == {}


async def test_an_unreachable_server_is_a_retryable_op_error(
    host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    manifest = _granted(caller_manifest, "http://127.0.0.1:9/mcp")  # the discard port
    async with caller_host(host_config, manifest, http_allow_private=True) as host:
        refused = await _mcp(host, "a", "call_tool", "notes", "list_notes")
    assert refused["error"].startswith("mcp: call-tool on server 'notes' failed: ConnectError")
