"""One MCP call over Streamable HTTP, with the official ``mcp`` SDK's client, to an address
checked beforehand.

The SDK takes the HTTP client it sends through (``streamable_http_client(url,
http_client=...)``), so the connection is pinned the way ``http.fetch`` pins its own: the
server's name is resolved and checked before anything is sent (``http.checked_address``),
and the client's transport connects every request to that address, keeping the name in
the Host header and TLS SNI. A request for any other origin (a redirect elsewhere) is
refused by the transport; the SDK follows only same-origin redirects anyway.

A connection is made per call and left open only for it. What lets the next call go on
with the same session is kept by the host (:class:`McpSessions`): the server's negotiated
result, adopted without a new handshake (``ClientSession.adopt``), and, for servers of
the handshake era, the ``Mcp-Session-Id`` they assigned, sent on every request. A server
that no longer knows the session answers 404 and the call starts a new one, once.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import mcp_types as types
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from ..address import AgentAddress
from ._mcp_sessions import McpSession, McpSessions

SESSION_HEADER = "mcp-session-id"
MAX_LIST_PAGES = 20
"""Pages of a tool or resource listing read at most."""


class RefusedOrigin(httpx2.TransportError):
    """A request for an origin other than the granted server's."""


class PinnedTransport(httpx2.AsyncBaseTransport):
    """Sends every request to ``address`` (checked beforehand), for ``host:port`` only."""

    def __init__(self, scheme: str, host: str, port: int, address: str) -> None:
        self._origin = (scheme, host, port)
        self._address = address
        self._inner = httpx2.AsyncHTTPTransport(retries=0)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        port = url.port or (443 if url.scheme == "https" else 80)
        if (url.scheme, url.host.rstrip(".").lower(), port) != self._origin:
            raise RefusedOrigin(f"{url.scheme}://{url.host}:{port} is not the granted server")
        if request.method == "GET":
            # The stream of server-initiated messages is never opened: a connection lives
            # for one call, and nothing would listen between calls. 405 is how a server
            # says it offers none, and the SDK's client takes it so.
            return httpx2.Response(405, request=request)
        request.url = url.copy_with(host=self._address)
        if url.scheme == "https":
            request.extensions = {**request.extensions, "sni_hostname": self._origin[1]}
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


Call = Callable[[ClientSession], Awaitable[dict[str, Any]]]


async def call_server(
    *,
    url: str,
    transport: PinnedTransport,
    sessions: McpSessions,
    address: AgentAddress,
    server: str,
    call: Call,
    timeout_s: float,
) -> dict[str, Any]:
    """Run ``call`` on a session with the server: the agent's kept session if there is
    one (a new one if the server forgot it), else a new one, which is then kept."""
    kept = sessions.get(address, server)
    if kept is not None and kept.url != url:
        kept = None
    if kept is not None:
        try:
            return await _on_session(
                url, transport, sessions, address, server, call, kept, timeout_s
            )
        except Exception as exc:
            leaf = first_leaf(exc)
            if not isinstance(leaf, MCPError) or not _session_gone(leaf):
                raise
            sessions.drop(address, server)
    return await _on_session(url, transport, sessions, address, server, call, None, timeout_s)


def first_leaf(error: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups, or ``error`` itself."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


async def _on_session(
    url: str,
    transport: PinnedTransport,
    sessions: McpSessions,
    address: AgentAddress,
    server: str,
    call: Call,
    kept: McpSession | None,
    timeout_s: float,
) -> dict[str, Any]:
    assigned: list[str] = []

    async def remember_session(response: httpx2.Response) -> None:
        value = response.headers.get(SESSION_HEADER)
        if value:
            assigned.append(value)

    headers = {SESSION_HEADER: kept.session_id} if kept is not None and kept.session_id else {}
    async with (
        httpx2.AsyncClient(
            transport=transport,
            headers=headers,
            timeout=httpx2.Timeout(timeout_s),
            event_hooks={"response": [remember_session]},
        ) as http,
        _session(url, http) as session,
    ):
        if kept is not None:
            session.adopt(_negotiated(kept))
        else:
            await _negotiate(session)
        result = await call(session)
    if kept is None:
        sessions.put(address, server, _kept(url, session, assigned[-1] if assigned else None))
    return result


@asynccontextmanager
async def _session(url: str, http: httpx2.AsyncClient) -> AsyncIterator[ClientSession]:
    # terminate_on_close=False: the session outlives this connection (see the module).
    async with (
        streamable_http_client(url, http_client=http, terminate_on_close=False) as (read, write),
        ClientSession(read, write) as session,
    ):
        yield session


async def _negotiate(session: ClientSession) -> None:
    """The SDK's own order: ``server/discover`` (the 2026 protocol); a server that does
    not answer it speaks the handshake era (``initialize``)."""
    try:
        await session.discover()
    except MCPError:
        await session.initialize()


def _kept(url: str, session: ClientSession, session_id: str | None) -> McpSession:
    if session.discover_result is not None:
        negotiated = session.discover_result.model_dump(mode="json", by_alias=True)
        return McpSession(url, negotiated, "discover")
    assert session.initialize_result is not None
    negotiated = session.initialize_result.model_dump(mode="json", by_alias=True)
    return McpSession(url, negotiated, "handshake", session_id)


def _negotiated(kept: McpSession) -> types.InitializeResult | types.DiscoverResult:
    if kept.era == "discover":
        return types.DiscoverResult.model_validate(kept.negotiated)
    return types.InitializeResult.model_validate(kept.negotiated)


def _session_gone(error: MCPError) -> bool:
    """A server's answer to a session it does not know (any more): 404, which the SDK
    reports as "Not Found" or "Session terminated", or a JSON-RPC error saying so."""
    message = error.message.lower()
    return "session" in message or message == "not found"


# -- the calls, and their results as agents get them ---------------------------------------


def list_tools(allowed: set[str] | None) -> Call:
    async def call(session: ClientSession) -> dict[str, Any]:
        tools: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(MAX_LIST_PAGES):
            params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
            page = await session.list_tools(params=params)
            for tool in page.tools:
                if allowed is None or tool.name in allowed:
                    tools.append(
                        {
                            "name": tool.name,
                            "description": tool.description or "",
                            "input_schema": tool.input_schema,
                        }
                    )
            cursor = page.next_cursor
            if not cursor:
                break
        return {"tools": tools}

    return call


def call_tool(name: str, arguments: dict[str, Any]) -> Call:
    async def call(session: ClientSession) -> dict[str, Any]:
        result = await session.call_tool(name, arguments)
        if not isinstance(result, types.CallToolResult):
            raise MCPError(-32603, f"tool {name} answered {type(result).__name__}, not a result")
        content = [_content(part) for part in result.content]
        text = "\n".join(part["text"] for part in content if part.get("type") == "text")
        return {
            "content": content,
            "text": text,
            "structured": result.structured_content,
            "is_error": bool(result.is_error),
        }

    return call


def list_resources() -> Call:
    async def call(session: ClientSession) -> dict[str, Any]:
        resources: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(MAX_LIST_PAGES):
            params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
            page = await session.list_resources(params=params)
            for resource in page.resources:
                resources.append(
                    {
                        "uri": str(resource.uri),
                        "name": resource.name,
                        "description": resource.description or "",
                        "mime_type": resource.mime_type,
                    }
                )
            cursor = page.next_cursor
            if not cursor:
                break
        return {"resources": resources}

    return call


def read_resource(uri: str) -> Call:
    async def call(session: ClientSession) -> dict[str, Any]:
        result = await session.read_resource(uri)
        contents = getattr(result, "contents", None)
        if contents is None:
            raise MCPError(-32603, f"resource {uri} answered {type(result).__name__}")
        read: list[dict[str, Any]] = []
        for item in contents:
            entry: dict[str, Any] = {"uri": str(item.uri), "mime_type": item.mime_type}
            if isinstance(item, types.TextResourceContents):
                entry["text"] = item.text
            else:
                entry["blob"] = base64.b64decode(item.blob)
            read.append(entry)
        return {"contents": read}

    return call


def _content(part: Any) -> dict[str, Any]:
    """A content part as plain data (images and audio as bytes)."""
    data: dict[str, Any] = part.model_dump(mode="json", by_alias=True, exclude_none=True)
    if data.get("type") in ("image", "audio") and isinstance(data.get("data"), str):
        data["data"] = base64.b64decode(data["data"])
    return data
