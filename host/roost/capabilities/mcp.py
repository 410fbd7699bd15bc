"""``mcp``: the tools and resources of remote MCP servers, over Streamable HTTP.

A kind's grant names its servers (``servers = {files = "https://mcp.example.com/mcp"}``);
an agent calls them by name, never by URL. The same egress rules as ``http`` apply to every
call: the URL must be ``http``/``https`` without user information, its name is resolved and
every address checked (loopback, private, link-local, ... are refused unless the host
setting ``http_allow_private`` is on), and the connection goes to the checked address
(``_mcp_client``). ``tools`` may narrow a server to some of its tools.

The protocol is the official ``mcp`` SDK's client. An agent's session with a server is kept
by the host, not its instance (:class:`McpSessions`), so it survives the agent's
hibernation; it does not survive a restart of the host (the next call starts a new one).
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import httpx2
import trio
from mcp.shared.exceptions import MCPError
from pydantic import Field, field_validator

from ..errors import CapabilityDenied, CapabilityError, ProviderError
from ..payload import pack, unpack
from . import _mcp_client as client
from ._base import (
    BaseGrant,
    Capability,
    HostServices,
    OpContext,
    OpResult,
    OpRunner,
    TurnView,
    host_call,
)
from ._ops import continuation_of, decode_request, encode_result
from .http import checked_address, normalize_host

logger = logging.getLogger("roost.mcp")

_CALLS = ("list-tools", "call-tool", "list-resources", "read-resource")


class McpGrant(BaseGrant):
    servers: dict[str, str] = Field(min_length=1)
    """Server name -> its Streamable HTTP endpoint (``https://host/mcp``)."""
    tools: dict[str, list[str]] = Field(default_factory=dict)
    """Server name -> the only tools of it the agent may list and call (default: all)."""
    timeout_s: float = Field(30.0, gt=0)
    """Longest call (connecting, the session, the answer)."""
    max_response_bytes: int = Field(1024 * 1024, ge=1)
    """Largest result (msgpack) handed to the agent."""

    @field_validator("servers")
    @classmethod
    def _urls(cls, servers: dict[str, str]) -> dict[str, str]:
        for name, url in servers.items():
            try:
                parsed = httpx.URL(url)
            except (httpx.InvalidURL, TypeError) as exc:
                raise ValueError(f"server {name}: invalid URL {url!r}: {exc}") from None
            if parsed.scheme not in ("http", "https") or not parsed.host:
                raise ValueError(f"server {name}: only http(s) URLs, not {url!r}")
            if parsed.userinfo:
                raise ValueError(f"server {name}: URLs with user information are refused")
        return servers


class Mcp(Capability[None]):
    """List and call the tools (and read the resources) of granted MCP servers."""

    name = "mcp"
    Grant = McpGrant
    grant: McpGrant

    def __init__(self, grant: McpGrant, services: HostServices) -> None:
        super().__init__(grant, services)
        unknown = sorted(set(grant.tools) - set(grant.servers))
        if unknown:
            raise CapabilityDenied(
                f"capabilities.mcp.tools names servers not in servers: {', '.join(unknown)}"
            )
        self._sessions = services.mcp_sessions
        self._allow_private = services.settings.http_allow_private

    def _start(self, turn: TurnView, call: str, request: bytes, needs: tuple[str, ...]) -> int:
        fields = decode_request(f"mcp.{call}", request)
        server = fields.get("server")
        if server not in self.grant.servers:
            raise CapabilityDenied(
                f"mcp.{call}: server {server!r} is not granted (mcp grant servers: "
                f"{', '.join(self.grant.servers)})"
            )
        body: dict[str, Any] = {"server": server}
        for key in needs:
            value = fields.get(key)
            if not isinstance(value, str) or not value:
                raise CapabilityDenied(f"mcp.{call} needs {key} (a non-empty text)")
            body[key] = value
        if call == "call-tool":
            allowed = self.grant.tools.get(server)
            if allowed is not None and body["name"] not in allowed:
                raise CapabilityDenied(
                    f"mcp.call-tool: tool {body['name']!r} of {server} is not granted (mcp "
                    f"grant tools.{server}: {', '.join(allowed)})"
                )
            arguments = fields.get("arguments") or {}
            if not isinstance(arguments, dict):
                raise CapabilityDenied("mcp.call-tool: arguments must be a map")
            body["arguments"] = arguments
        return turn.start_op(self.name, call, pack(body), continuation_of(fields))

    @host_call("list-tools")
    def list_tools(self, turn: TurnView, request: bytes) -> int:
        return self._start(turn, "list-tools", request, ())

    @host_call("call-tool")
    def call_tool(self, turn: TurnView, request: bytes) -> int:
        return self._start(turn, "call-tool", request, ("name",))

    @host_call("list-resources")
    def list_resources(self, turn: TurnView, request: bytes) -> int:
        return self._start(turn, "list-resources", request, ())

    @host_call("read-resource")
    def read_resource(self, turn: TurnView, request: bytes) -> int:
        return self._start(turn, "read-resource", request, ("uri",))

    def op(self, call: str, request: bytes, context: OpContext) -> OpRunner:
        fields: dict[str, Any] = unpack(request)
        server: str = fields["server"]
        url = self.grant.servers.get(server)
        grant = self.grant
        sessions = self._sessions
        allow_private = self._allow_private
        allowed = grant.tools.get(server)
        if call == "list-tools":
            action = client.list_tools(None if allowed is None else set(allowed))
        elif call == "call-tool":
            action = client.call_tool(fields["name"], fields["arguments"])
        elif call == "list-resources":
            action = client.list_resources()
        else:
            action = client.read_resource(fields["uri"])

        async def run() -> OpResult:
            if url is None:
                raise CapabilityDenied(f"mcp: server {server!r} is no longer granted")
            parsed = httpx.URL(url)
            host = normalize_host(parsed.host)
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
            address = await checked_address(host, port, allow_private=allow_private)
            transport = client.PinnedTransport(parsed.scheme, host, port, address)
            try:
                with trio.fail_after(grant.timeout_s):
                    result = await client.call_server(
                        url=url,
                        transport=transport,
                        sessions=sessions,
                        address=context.address,
                        server=server,
                        call=action,
                        timeout_s=grant.timeout_s,
                    )
            except trio.TooSlowError:
                what = f"no answer within {grant.timeout_s:g} s"
                raise _failed(server, call, what, "timeout", True) from None
            except Exception as exc:
                raise _error_of(server, call, exc) from None
            finally:
                await transport.aclose()
            value = encode_result(result)
            if len(value) > grant.max_response_bytes:
                raise _failed(
                    server,
                    call,
                    f"the result is {len(value)} bytes; the mcp grant allows "
                    f"max_response_bytes = {grant.max_response_bytes}",
                    "too_large",
                    False,
                )
            return OpResult(value)

        return run


def _failed(
    server: str,
    call: str,
    what: str,
    kind: str,
    retryable: bool,
    code: str | None = None,
) -> ProviderError:
    logger.warning("mcp %s on server %s failed (%s): %s", call, server, kind, what)
    return ProviderError(
        f"mcp: {call} on server {server!r} failed: {what}",
        provider=server,
        code=code,
        retryable=retryable,
        kind=kind,
    )


def _error_of(server: str, call: str, error: Exception) -> Exception:
    """What the agent gets for a failed call (the SDK's errors come out of its task
    groups wrapped in exception groups)."""
    leaf = client.first_leaf(error)
    if isinstance(leaf, ProviderError):
        return leaf
    if isinstance(leaf, MCPError):
        return _failed(server, call, leaf.message, "mcp_error", False, str(leaf.code))
    if isinstance(leaf, client.RefusedOrigin):
        return _failed(server, call, str(leaf), "refused", False)
    if isinstance(leaf, httpx2.HTTPError | OSError):
        return _failed(server, call, f"{type(leaf).__name__}: {leaf}", "unreachable", True)
    if isinstance(leaf, CapabilityError):
        return leaf
    logger.exception("mcp %s on server %s failed", call, server, exc_info=error)
    return _failed(server, call, f"{type(leaf).__name__}: {leaf}", "client_error", False)
