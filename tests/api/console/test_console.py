"""The console over real HTTP without a browser: who may see what, sessions, the
protections on actions, the live event stream, the chat stream, and the assets that make it
work offline."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio
from starlette.routing import Route

from roost import Manifest
from roost.api import create_app
from roost.config import ServerConfig

from ...conftest import sse_events
from ..conftest import ADMIN_TOKEN, Serve, Served, credentials

PUBLIC = {"/console/sign-in", "/console/sign-out", "/console/static/{name}"}
DATA_ENDPOINTS = ("/panel", "/statistics", "/results", "/status", "/events", "/export")
"""GET routes that answer 401 (pages redirect to the sign-in page instead)."""


def _console_routes(served: Served) -> list[tuple[str, str]]:
    """Every console (path, method) that needs the admin token, with its parameters
    filled in."""
    routes = create_app(served.host, ServerConfig(admin_token=ADMIN_TOKEN), credentials()).routes
    found = []
    for route in routes:
        if not isinstance(route, Route) or not route.path.startswith("/console"):
            continue
        if route.path in PUBLIC:
            continue
        path = route.path.replace("{kind}", "probe").replace("{id}", "keeper")
        for method in sorted(route.methods or ()):
            if method != "HEAD":
                found.append((path, method))
    return found


async def test_every_console_page_and_endpoint_refuses_without_the_admin_token(
    serve_host: Serve, probe_manifest: Manifest
) -> None:
    async with serve_host(probe_manifest) as served:
        secret = {"op": "kv_set", "key": "password", "value": "swordfish"}
        assert (await served.message("probe/keeper", secret)).status_code == 200
        routes = _console_routes(served)
        assert len(routes) >= 16
        for cookies in ({}, {"roost_console": "forged-session"}):
            client = httpx.AsyncClient(base_url=served.url, cookies=cookies)
            async with client:
                for path, method in routes:
                    response = await client.request(method, path, headers={"Accept": "*/*"})
                    assert "swordfish" not in response.text, (method, path)
                    if method == "GET" and not path.endswith(DATA_ENDPOINTS):
                        assert response.status_code == 303, (method, path)
                        location = response.headers["location"]
                        assert location.startswith("/console/sign-in?next="), (method, path)
                    else:
                        assert response.status_code == 401, (method, path, response.text)
        # The admin token itself opens everything (for scripts); a wrong one is refused.
        ok = await served.client.get("/console/agents/probe/keeper", headers=served.admin)
        assert ok.status_code == 200 and "swordfish" in ok.text
        wrong = await served.client.get(
            "/console/agents/probe/keeper", headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status_code == 403 and "swordfish" not in wrong.text


@asynccontextmanager
async def _signed_in(served: Served) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=served.url) as client:
        response = await client.post(
            "/console/sign-in", data={"token": ADMIN_TOKEN, "next": "/console/kinds"}
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/console/kinds"
        yield client


async def test_a_session_cookie_is_http_only_strict_and_ends_at_sign_out(
    serve_host: Serve, echo_manifest: Manifest
) -> None:
    async with serve_host(echo_manifest) as served:
        wrong = await served.client.post("/console/sign-in", data={"token": "guess"})
        assert wrong.status_code == 401
        assert "set-cookie" not in wrong.headers
        async with _signed_in(served) as client:
            [cookie] = client.cookies.jar
            assert cookie.name == "roost_console" and cookie.path == "/console"
            assert cookie.has_nonstandard_attr("HttpOnly")
            assert cookie.get_nonstandard_attr("SameSite").lower() == "strict"
            assert ADMIN_TOKEN not in (cookie.value or "")
            session = cookie.value
            page = await client.get("/console/kinds")
            assert page.status_code == 200
            assert page.headers["cache-control"] == "no-store"
            assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
            out = await client.post("/console/sign-out")
            assert out.status_code == 303
        replay = await served.client.get(
            "/console/kinds", headers={"Cookie": f"roost_console={session}"}
        )
        assert replay.status_code == 303


async def test_actions_from_other_sites_are_refused(
    serve_host: Serve, echo_manifest: Manifest
) -> None:
    async with serve_host(echo_manifest) as served:
        await served.message("echo/alice", "hi")
        async with _signed_in(served) as client:
            for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
                forked = await client.post(
                    "/console/agents/echo/alice/fork", data={"new_id": "stolen"}, headers=headers
                )
                assert forked.status_code == 403
                erased = await client.post(
                    "/console/agents/echo/alice/erase", data={"confirm": "alice"}, headers=headers
                )
                assert erased.status_code == 403
            same = await client.post(
                "/console/agents/echo/alice/fork",
                data={"new_id": "copy"},
                headers={"Origin": served.url, "Sec-Fetch-Site": "same-origin"},
            )
            assert same.status_code == 303
        assert await served.host.export("echo/stolen") is None
        assert await served.host.export("echo/alice") is not None
        login_csrf = await served.client.post(
            "/console/sign-in",
            data={"token": ADMIN_TOKEN},
            headers={"Origin": "https://evil.example"},
        )
        assert login_csrf.status_code == 403


async def test_sign_in_returns_only_to_console_pages(
    serve_host: Serve, echo_manifest: Manifest
) -> None:
    async with serve_host(echo_manifest) as served:
        for target in (
            "https://evil.example/",
            "//evil.example/console",
            "/v1/kinds",
            "/console\\@x",
        ):
            response = await served.client.post(
                "/console/sign-in", data={"token": ADMIN_TOKEN, "next": target}
            )
            assert response.headers["location"] == "/console", target


async def _read_events_until(
    served: Served, path: str, last: str, on_event: Callable[[str, Any], Awaitable[None]]
) -> list[tuple[str, Any]]:
    """The server-sent events of ``path`` up to the first one named ``last``, read from a
    plain socket (HTTP/1.0, so the stream is not chunked) that is closed afterwards."""
    url = httpx.URL(served.url)
    stream = await trio.open_tcp_stream(url.host, url.port)
    events: list[tuple[str, Any]] = []
    async with stream:
        request = f"GET {path} HTTP/1.0\r\nHost: {url.host}\r\n"
        request += f"Authorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
        await stream.send_all(request.encode())
        buffer = b""
        while not events or events[-1][0] != last:
            chunk = await stream.receive_some()
            assert chunk, "the stream ended early"
            buffer += chunk
            while b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                lines = dict(
                    line.split(": ", 1) for line in block.decode().splitlines() if ": " in line
                )
                if "event" in lines:
                    events.append((lines["event"], json.loads(lines["data"])))
                    await on_event(*events[-1])
    return events


async def test_the_event_stream_shows_turns_and_residency_as_they_happen(
    serve_host: Serve, echo_manifest: Manifest
) -> None:
    async with serve_host(echo_manifest) as served:

        async def on_event(name: str, data: Any) -> None:
            if name == "status" and not data["resident"]:
                await served.message("echo/bob", "hello")

        with trio.fail_after(30):
            events = await _read_events_until(
                served, "/console/agents/echo/bob/events", "turn", on_event
            )
        assert events[0] == (
            "status",
            {"resident": False, "held_resident_by": [], "pending_ops": 0, "mailbox_depth": 0},
        )
        _, turn = events[-1]
        assert (turn["export"], turn["outcome"]) == ("on-event", "ok")
        assert turn["ms"] > 0


async def test_the_chat_endpoint_streams_replies_as_the_api_does(
    serve_host: Serve, echo_manifest: Manifest
) -> None:
    async with serve_host(echo_manifest) as served:
        async with served.client.stream(
            "POST",
            "/console/agents/echo/carol/messages",
            json={"message": {"text": "hi"}},
            headers={**served.admin, "Accept": "text/event-stream"},
        ) as response:
            events = [event async for event in sse_events(response)]
        assert events[0] == ("reply", {"echo": {"text": "hi"}, "count": 1})
        assert events[-1][0] == "done"
        bad = await served.client.post(
            "/console/agents/echo/carol/messages", content=b"{", headers=served.admin
        )
        assert bad.status_code == 400
        unknown = await served.client.post(
            "/console/agents/nope/carol/messages", json={"message": 1}, headers=served.admin
        )
        assert unknown.status_code == 404


async def test_pages_load_only_the_consoles_own_assets(
    serve_host: Serve, echo_manifest: Manifest
) -> None:
    async with serve_host(echo_manifest) as served:
        await served.message("echo/dan", "hi")
        for path in ("/console", "/console/kinds", "/console/agents", "/console/agents/echo/dan"):
            page = (await served.client.get(path, headers=served.admin)).text
            assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css)[^"]*)"', page)
            assert assets and all(a.startswith("/console/static/") for a in assets), assets
            assert not re.search(r'(?:src|href|action)="(?:https?:)?//', page)
            for asset in assets:
                response = await served.client.get(asset)
                assert response.status_code == 200
                assert "immutable" in response.headers["cache-control"]
        license_text = await served.client.get("/console/static/htmx.LICENSE.txt")
        assert "Zero-Clause BSD" in license_text.text


async def test_host_statistics_are_sampled_in_the_background(
    serve_host: Serve, echo_manifest: Manifest
) -> None:
    async with serve_host(echo_manifest) as served:
        await served.message("echo/erin", "hi")
        response = await served.client.get("/console/host/statistics", headers=served.admin)
        body = response.json()
        assert body["interval_s"] == 2.0
        assert len(body["samples"]) >= 1  # the server's sampler takes one as it starts
        panel = await served.client.get("/console/host/panel", headers=served.admin)
        assert panel.status_code == 200
        assert 'hx-trigger="every 2s"' in panel.text
