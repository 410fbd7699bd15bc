"""``http``: outbound HTTP to the hosts a kind's grant allows, safe by default.

Every request (and every redirect hop) is checked before any connection is made:

- the URL must be ``http``/``https`` with no userinfo, and its host (lowercased, trailing
  dot removed) must be on the grant's allow-list;
- the name is resolved, and every resolved address must be public: loopback, private,
  link-local (which holds cloud metadata services), multicast, reserved and unspecified
  addresses are refused, including their IPv4-mapped IPv6 forms and numeric tricks
  (decimal, octal) that resolve to them;
- the connection goes to the address that was checked (the Host header and TLS SNI keep
  the name), so a second DNS answer cannot swap in another address.

The host setting ``http_allow_private`` lifts the address check for development.

With tracing on, each fetch is a client span named after its method, and every request
carries its ``traceparent``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import httpx
import trio
from pydantic import Field

from ..errors import CapabilityDenied, CapabilityError
from ..payload import pack, unpack
from ..store.protocol import Usage
from ..telemetry import fail_span, inject_traceparent
from ._base import (
    BaseGrant,
    Capability,
    HostServices,
    OpContext,
    OpResult,
    OpRunner,
    TurnEffects,
    TurnView,
    host_call,
)
from ._ops import continuation_of, decode_request, encode_result

Resolver = Callable[[str, int], Awaitable[list[str]]]
_REDIRECTS = {301, 302, 303, 307, 308}


class HttpGrant(BaseGrant):
    hosts: list[str] = Field(min_length=1)
    """Host names the agent may fetch from (exact, or ``*.example.com`` for subdomains)."""
    methods: list[str] = Field(default_factory=lambda: ["GET"])
    max_response_bytes: int = Field(1024 * 1024, ge=1)
    timeout_s: float = Field(10.0, gt=0)
    max_redirects: int = Field(3, ge=0)


@dataclass(slots=True)
class HttpTurn:
    calls: int = 0
    """Fetches the handler started: each counts against the day's budget from the moment
    it starts, and in the day's usage when the handler commits."""


class Http(Capability[HttpTurn]):
    """Fetch URLs from allow-listed hosts."""

    name = "http"
    Grant = HttpGrant
    grant: HttpGrant

    def __init__(self, grant: HttpGrant, services: HostServices) -> None:
        super().__init__(grant, services)
        self._client = services.http_client
        self._allow_private = services.settings.http_allow_private

    def begin_turn(self, turn: TurnView) -> HttpTurn:
        return HttpTurn()

    def add_effects(self, state: HttpTurn, effects: TurnEffects) -> None:
        effects.usage += Usage(http_calls=state.calls)

    def started_cost(self, state: HttpTurn) -> Usage:
        return Usage(http_calls=state.calls)

    @host_call("fetch")
    def fetch(self, turn: TurnView, request: bytes) -> int:
        fields = decode_request("http.fetch", request)
        url = str(fields.get("url") or "")
        method = str(fields.get("method") or "GET").upper()
        allowed_methods = [m.upper() for m in self.grant.methods]
        if method not in allowed_methods:
            raise CapabilityDenied(
                f"http.fetch: method {method} is not granted (http grant methods: "
                f"{', '.join(allowed_methods)})"
            )
        check_url(url, self.grant.hosts)  # refuse obvious misses before starting an op
        state = self.state(turn)
        budget = turn.budgets.http_calls_per_day
        if budget is not None:
            used = turn.reads.read_usage(turn.address, turn.day).http_calls + state.calls
            turn.check_budget("http_calls_per_day", used, 1, budget)
        state.calls += 1
        headers = {str(k): str(v) for k, v in (fields.get("headers") or {}).items()}
        body = fields.get("body")
        if body is not None and not isinstance(body, bytes):
            body = str(body).encode()
        fetch = {"url": url, "method": method, "headers": headers, "body": body}
        return turn.start_op(self.name, "fetch", pack(fetch), continuation_of(fields))

    def op(self, call: str, request: bytes, context: OpContext) -> OpRunner:
        fields = unpack(request)
        url: str = fields["url"]
        method: str = fields["method"]
        body: bytes | None = fields["body"]
        headers: dict[str, str] = fields["headers"]
        if not any(name.lower() == "idempotency-key" for name in headers):
            headers["Idempotency-Key"] = context.idempotency_key
        client = self._client
        allow_private = self._allow_private
        grant = self.grant
        trace = context.trace

        async def fetch(request_headers: dict[str, str]) -> dict[str, Any]:
            with trio.move_on_after(grant.timeout_s) as scope:
                result = await fetch_checked(
                    client,
                    method,
                    url,
                    request_headers,
                    body,
                    grant,
                    allow_private=allow_private,
                )
            if scope.cancelled_caught:
                raise CapabilityError(f"http.fetch {url}: timed out after {grant.timeout_s}s")
            return result

        async def run() -> OpResult:
            if trace is None:
                return OpResult(encode_result(await fetch(headers)))
            parsed = httpx.URL(url)
            attributes = {
                "http.request.method": method,
                "url.full": str(parsed.copy_with(query=None, fragment=None)),
                "server.address": parsed.host,
                "server.port": parsed.port or (443 if parsed.scheme == "https" else 80),
            }
            with trace.client_span(method, attributes) as span:
                traced = dict(headers)
                inject_traceparent(traced, span)
                try:
                    result = await fetch(traced)
                except CapabilityError as exc:
                    fail_span(span, exc)
                    raise
                span.set_attribute("http.response.status_code", result["status"])
                if result["status"] >= 400:
                    fail_span(span, str(result["status"]))
            return OpResult(encode_result(result))

        return run


def check_url(url: str, allowed_hosts: list[str]) -> httpx.URL:
    """Parse ``url`` and check its scheme, userinfo and host against the allow-list."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise CapabilityDenied(f"http.fetch: invalid URL {url!r}: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise CapabilityDenied(f"http.fetch: only http and https URLs, not {parsed.scheme!r}")
    if parsed.userinfo:
        raise CapabilityDenied("http.fetch: URLs with user information (user@host) are refused")
    host = normalize_host(parsed.host)
    if not host_allowed(host, allowed_hosts):
        raise CapabilityDenied(
            f"http.fetch: host {host!r} is not on the http grant's hosts "
            f"({', '.join(allowed_hosts)})"
        )
    return parsed


def normalize_host(host: str) -> str:
    return host.strip().rstrip(".").lower()


def host_allowed(host: str, allowed: list[str]) -> bool:
    for pattern in (normalize_host(p) for p in allowed):
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and host != pattern[2:]:
                return True
        elif host == pattern:
            return True
    return False


def refused_address(address: str) -> str | None:
    """Why ``address`` may not be reached, or None if it is a public address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            return refused_address(str(mapped))
    for label, test in (
        ("loopback", ip.is_loopback),
        ("link-local (cloud metadata)", ip.is_link_local),
        ("unspecified", ip.is_unspecified),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
    ):
        if test:
            return label
    if not ip.is_global:
        return "not globally routable"
    return None


async def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (numeric forms are parsed, not looked up)."""
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
    except OSError as exc:
        raise CapabilityError(f"http.fetch: cannot resolve {host!r}: {exc}") from None
    return sorted({str(info[4][0]) for info in infos})


async def checked_address(
    host: str, port: int, *, allow_private: bool, resolver: Resolver = resolve
) -> str:
    """Resolve ``host`` and return an address it may connect to, or refuse."""
    addresses = await resolver(host, port)
    if not addresses:
        raise CapabilityError(f"http.fetch: {host!r} resolved to no address")
    if not allow_private:
        for address in addresses:
            reason = refused_address(address)
            if reason is not None:
                raise CapabilityDenied(
                    f"http.fetch: {host!r} resolves to {address}, a {reason} address; "
                    "outbound requests only go to public addresses"
                )
    return addresses[0]


async def fetch_checked(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes | None,
    grant: HttpGrant,
    *,
    allow_private: bool,
    resolver: Resolver = resolve,
) -> dict[str, Any]:
    """Fetch with every hop checked; see the module docstring."""
    for _hop in range(grant.max_redirects + 1):
        parsed = check_url(url, grant.hosts)
        host = normalize_host(parsed.host)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        address = await checked_address(host, port, allow_private=allow_private, resolver=resolver)
        pinned = parsed.copy_with(host=address)
        request_headers = {**headers, "Host": parsed.netloc.decode("ascii")}
        extensions = {"sni_hostname": host} if parsed.scheme == "https" else {}
        request = client.build_request(
            method, pinned, headers=request_headers, content=body, extensions=extensions
        )
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise CapabilityError(f"http.fetch {url}: {exc}") from None
        try:
            if response.status_code in _REDIRECTS and "location" in response.headers:
                url = urljoin(url, response.headers["location"])
                if response.status_code == 303 or (
                    response.status_code in (301, 302) and method == "POST"
                ):
                    method, body = "GET", None
                continue
            content = bytearray()
            async for chunk in response.aiter_bytes():
                content += chunk
                if len(content) > grant.max_response_bytes:
                    raise CapabilityError(
                        f"http.fetch {url}: response is larger than the http grant's "
                        f"max_response_bytes = {grant.max_response_bytes}"
                    )
            return {
                "status": response.status_code,
                "headers": dict(response.headers.items()),
                "body": bytes(content),
                "url": url,
            }
        finally:
            await response.aclose()
    raise CapabilityError(
        f"http.fetch: more than {grant.max_redirects} redirects (http grant max_redirects)"
    )
