"""The HTTP API: an ASGI app (Starlette) over a running :class:`host.Host`.

With tracing on, every HTTP request is a server span whose parent is the request's W3C
``traceparent``; the turns that handle the event it sends are its children.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import asdict
from typing import Any

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from ..address import AgentAddress, validate_kind_name
from ..config import ServerConfig
from ..core.envelope import EventTiming
from ..errors import (
    AuthError,
    InvalidMessage,
    ManifestError,
    Overloaded,
    OwnedElsewhere,
    RoostError,
)
from ..host import Host
from ..payload import from_json, to_json
from ..telemetry import Telemetry
from ._admin import (
    DEPLOY_BODY_FACTOR,
    deploy_upload,
    export_document,
    limited_request,
    too_large,
)
from ._state import ApiState
from ._status import error_body, error_headers, error_status
from ._streams import EventStream, MessageStream, agent_json, sse
from .auth import Credentials, bearer, require_admin, require_agent
from .console import console_routes
from .openapi import openapi_document
from .peers import INTERNAL_EVENTS, pipe_websocket
from .proxy_agent import WorkSlots

_MAX_PAGE = 1000

Handler = Callable[[Request], Awaitable[Response]]


def create_app(
    host: Host,
    settings: ServerConfig,
    credentials: Credentials,
    work_slots: WorkSlots | None = None,
) -> Starlette:
    """The ASGI app serving ``host``; ``work_slots``: what the proxy's agent check offers,
    when it is served (shown in ``/metrics``)."""
    state = ApiState(host, settings, credentials, work_slots)

    def route(
        path: str, handler: Callable[[ApiState, Request], Awaitable[Response]], methods: list[str]
    ) -> Route:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(state, request)
            except RoostError as exc:
                return _error_response(state, exc, request)

        return Route(path, endpoint, methods=methods)

    async def websocket_endpoint(websocket: WebSocket) -> None:
        await _agent_socket(state, websocket)

    console_routes_, console = console_routes(state)
    app = Starlette(
        routes=[
            route("/healthz", _healthz, ["GET"]),
            route("/readyz", _readyz, ["GET"]),
            route("/metrics", _metrics, ["GET"]),
            route("/openapi.json", _openapi, ["GET"]),
            route("/v1/kinds", _list_kinds, ["GET"]),
            route("/v1/kinds", _deploy_kind, ["POST"]),
            route("/v1/agents/{kind}", _list_agents, ["GET"]),
            route("/v1/agents/{kind}/{id}", _agent_status, ["GET"]),
            route("/v1/agents/{kind}/{id}", _erase_agent, ["DELETE"]),
            route("/v1/agents/{kind}/{id}/messages", _post_message, ["POST"]),
            route("/v1/agents/{kind}/{id}/fork", _fork_agent, ["POST"]),
            route("/v1/agents/{kind}/{id}/export", _export_agent, ["GET"]),
            route("/v1/agents/{kind}/{id}/approvals", _list_approvals, ["GET"]),
            route("/v1/agents/{kind}/{id}/approvals/{approval_id}", _decide_approval, ["POST"]),
            WebSocketRoute("/v1/agents/{kind}/{id}/ws", websocket_endpoint),
            route(INTERNAL_EVENTS + "/{kind}/{id}", _internal_event, ["POST"]),
            *console_routes_,
        ],
    )
    app.state.api = state
    app.state.console = console
    app.add_middleware(_ShutdownDeadline, state=state)
    if host.telemetry.tracing:
        app.add_middleware(_TracingMiddleware, telemetry=host.telemetry)
    app.add_middleware(_ShedOverload, state=state)  # outermost: before any other work
    return app


class _ShedOverload:
    """Refuses a new message with 503 and Retry-After, before routing, authentication or
    reading its body, while the host admits no new event (``Host.check_admission``): when
    the host is overloaded, a refusal must cost as little as possible. Everything else
    passes through (the handlers check admission again)."""

    def __init__(self, app: ASGIApp, state: ApiState) -> None:
        self._app = app
        self._state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path.startswith("/v1/agents/") and path.endswith("/messages"):
                try:
                    self._state.host.check_admission(path.split("/", 4)[3])
                except Overloaded as exc:
                    self._state.metrics.rejected(503)
                    await _send_refusal(send, exc)
                    return
        await self._app(scope, receive, send)


async def _send_refusal(send: Send, error: Overloaded) -> None:
    body = to_json(error_body(error)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    headers += [(k.lower().encode(), v.encode()) for k, v in error_headers(error).items()]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class _ShutdownDeadline:
    """Tracks HTTP requests so that the ones still running when the shutdown grace period
    ends (:meth:`ApiState.expire_requests`) answer 503 with Retry-After, or end their event
    stream with an ``error`` event, instead of losing their connection unanswered."""

    def __init__(self, app: ASGIApp, state: ApiState) -> None:
        self._app = app
        self._state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = ""  # the response's content type, once it has started

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                started = headers.get(b"content-type", b"-").decode("latin-1")
            await send(message)

        requests = self._state._requests
        with trio.CancelScope() as cancel:
            requests.add(cancel)
            try:
                await self._app(scope, receive, tracked_send)
            finally:
                requests.discard(cancel)
        if not cancel.cancelled_caught:
            return
        error = Overloaded(
            "the server shut down before the request finished; retry", retry_after_s=1
        )
        if not started:
            await _send_refusal(send, error)
            return
        tail = (
            sse("error", {**error_body(error), "status": 503}) if "event-stream" in started else b""
        )
        await send({"type": "http.response.body", "body": tail, "more_body": False})


class _TracingMiddleware:
    """A server span around each HTTP request (to the end of a streamed response)."""

    def __init__(self, app: ASGIApp, telemetry: Telemetry) -> None:
        self._app = app
        self._telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        method = scope["method"]
        with self._telemetry.server_span(method, scope["path"], scope["headers"]) as span:

            async def send_traced(message: Message) -> None:
                if span is not None and message["type"] == "http.response.start":
                    span.set_attribute("http.response.status_code", message["status"])
                await send(message)

            await self._app(scope, receive, send_traced)
            route = scope.get("route")
            if span is not None and route is not None:
                span.update_name(f"{method} {route.path}")
                span.set_attribute("http.route", route.path)


# -- plumbing -----------------------------------------------------------------------------


def _error_response(state: ApiState, exc: BaseException, request: Request | None) -> Response:
    status = error_status(exc)
    if status in (429, 503):
        state.metrics.rejected(status)
    admin = False
    if request is not None:
        try:
            require_admin(state.credentials, bearer(request.headers.get("authorization")))
            admin = True
        except AuthError:
            pass
    return JSONResponse(
        error_body(exc, include_traceback=admin), status_code=status, headers=error_headers(exc)
    )


def _json(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        to_json(value), status_code=status, media_type="application/json", headers=headers
    )


def _address(request: Request | WebSocket) -> AgentAddress:
    return AgentAddress(request.path_params["kind"], request.path_params["id"])


def _token(request: Request | WebSocket) -> str | None:
    return bearer(request.headers.get("authorization"), request.query_params.get("token"))


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large(limit)
    return bytes(body)


async def _read_json(request: Request, limit: int) -> Any:
    return from_json(await _read_body(request, limit))


def _message_of(body: Any) -> Any:
    if not isinstance(body, dict) or "message" not in body:
        raise InvalidMessage('expected a JSON object {"message": ...}')
    unknown = sorted(set(body) - {"message"})
    if unknown:
        raise InvalidMessage(f"unknown fields {', '.join(unknown)}; expected only 'message'")
    return body["message"]


# -- health, metrics, schema --------------------------------------------------------------


async def _healthz(state: ApiState, request: Request) -> Response:
    return _json({"status": "ok"})


async def _readyz(state: ApiState, request: Request) -> Response:
    if state.shutting_down.is_set():
        return _json({"status": "shutting down"}, status=503, headers={"Retry-After": "1"})
    kinds = [k.name for k in state.host.kinds()]
    return _json({"status": "ready", "kinds": kinds})


async def _metrics(state: ApiState, request: Request) -> Response:
    stats = await state.host.statistics()
    slots = state.work_slots.slots if state.work_slots is not None else None
    return PlainTextResponse(
        state.metrics.render(stats, work_slots=slots),
        media_type="text/plain; version=0.0.4; charset=utf-8",
    )


async def _openapi(state: ApiState, request: Request) -> Response:
    return JSONResponse(openapi_document())


# -- kinds --------------------------------------------------------------------------------


async def _list_kinds(state: ApiState, request: Request) -> Response:
    require_admin(state.credentials, _token(request))
    return _json({"kinds": [asdict(k) for k in state.host.kinds()]})


async def _deploy_kind(state: ApiState, request: Request) -> Response:
    """Deploy an uploaded kind, then keep it for restarts: a rejected upload (bad manifest,
    bad component, ungranted imports, too large) leaves nothing behind."""
    require_admin(state.credentials, _token(request))
    limit = state.settings.max_body_bytes * DEPLOY_BODY_FACTOR
    limited = limited_request(request, limit)
    async with limited.form(max_files=1, max_fields=4, max_part_size=limit) as form:
        manifest_field = form.get("manifest")
        component_field = form.get("component")
        if (
            not isinstance(manifest_field, str)
            or component_field is None
            or isinstance(component_field, str)
        ):
            raise ManifestError(
                "deploy with multipart/form-data: a `manifest` field (TOML text) and a "
                "`component` file (.wasm)"
            )
        wasm = await component_field.read()
    info = await deploy_upload(state.host, manifest_field, wasm)
    return _json({"kind": asdict(info)}, status=201)


# -- agents -------------------------------------------------------------------------------


async def _post_message(state: ApiState, request: Request) -> Response:
    address = _address(request)
    require_agent(state.credentials, _token(request), address)
    message = _message_of(await _read_json(request, state.settings.max_body_bytes))
    key = request.headers.get("idempotency-key")
    if "text/event-stream" in request.headers.get("accept", ""):
        return MessageStream(state, address, message, key)
    timing = EventTiming()
    replies, status = await state.host.send_with_status(
        address, message, idempotency_key=key, timing=timing, admitted=True
    )  # admitted (or refused) before its body was read: _ShedOverload
    return _json(
        {"replies": replies, "agent": asdict(status)},
        headers={"Server-Timing": _server_timing(timing)},
    )


def _server_timing(timing: EventTiming) -> str:
    """A ``Server-Timing`` header value: how long the handler waited on its async ops, so a
    client can tell the host's own latency from its LLM's and HTTP calls'."""
    return f'ops;dur={timing.ops_s * 1000:.1f};desc="async ops (llm, http, ask, sleep)"'


async def _agent_status(state: ApiState, request: Request) -> Response:
    address = _address(request)
    require_agent(state.credentials, _token(request), address)
    return _json({"agent": await agent_json(state, address)})


async def _erase_agent(state: ApiState, request: Request) -> Response:
    require_admin(state.credentials, _token(request))
    address = _address(request)
    existed = await state.host.erase(address)
    return _json({"erased": existed, "agent": str(address)})


async def _fork_agent(state: ApiState, request: Request) -> Response:
    require_admin(state.credentials, _token(request))
    body = await _read_json(request, state.settings.max_body_bytes)
    if not isinstance(body, dict) or not isinstance(body.get("new_id"), str):
        raise InvalidMessage('expected a JSON object {"new_id": "..."}')
    target = await state.host.fork(_address(request), body["new_id"])
    return _json({"agent": await agent_json(state, target)}, status=201)


async def _list_agents(state: ApiState, request: Request) -> Response:
    require_admin(state.credentials, _token(request))
    kind = validate_kind_name(request.path_params["kind"])
    try:
        limit = int(request.query_params.get("limit", "100"))
    except ValueError:
        raise InvalidMessage("limit must be an integer") from None
    if not 1 <= limit <= _MAX_PAGE:
        raise InvalidMessage(f"limit must be between 1 and {_MAX_PAGE}")
    after = request.query_params.get("after")
    page = await state.host.list_agents(kind, after=after, limit=limit)
    agents = [
        {**asdict(a), "resident": state.host.is_resident(AgentAddress(kind, a.id))} for a in page
    ]
    next_after = page[-1].id if len(page) == limit else None
    return _json({"agents": agents, "next_after": next_after})


async def _export_agent(state: ApiState, request: Request) -> Response:
    require_admin(state.credentials, _token(request))
    return _json(await export_document(state.host, _address(request)))


async def _internal_event(state: ApiState, request: Request) -> Response:
    """An event another host sharing the store forwarded here (``api/peers.py``): handled
    here, never forwarded again; the replies as server-sent events."""
    require_admin(state.credentials, _token(request))
    address = _address(request)
    body = await _read_json(request, state.settings.max_body_bytes * 2)
    try:
        payload = base64.b64decode(body["payload"], validate=True)
        event_kind = str(body["event_kind"])
        key = body.get("idempotency_key")
        chain = tuple(str(a) for a in body.get("chain") or ())
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise InvalidMessage(f"not a forwarded event: {exc}") from None
    return EventStream(
        state, address, event_kind, payload, None if key is None else str(key), chain
    )


async def _list_approvals(state: ApiState, request: Request) -> Response:
    address = _address(request)
    require_agent(state.credentials, _token(request), address)
    approvals = await state.host.approvals(address)
    return _json({"approvals": [asdict(a) for a in approvals]})


_DECISIONS = {"approve": True, "approved": True, "reject": False, "rejected": False}
_MAX_NOTE_CHARS = 2000
_MAX_BY_CHARS = 200


async def _decide_approval(state: ApiState, request: Request) -> Response:
    """Approve or reject what an agent asked for. The admin token, or the agent's own token
    (the person it acts for), may decide; ``by`` (free text) records who did."""
    address = _address(request)
    token = _token(request)
    require_agent(state.credentials, token, address)
    body = await _read_json(request, state.settings.max_body_bytes)
    if not isinstance(body, dict) or body.get("decision") not in _DECISIONS:
        raise InvalidMessage(
            'expected a JSON object {"decision": "approve" | "reject", "note"?, "by"?}'
        )
    unknown = sorted(set(body) - {"decision", "note", "by"})
    if unknown:
        raise InvalidMessage(f"unknown fields {', '.join(unknown)}")
    note, by = body.get("note"), body.get("by")
    if note is not None and (not isinstance(note, str) or len(note) > _MAX_NOTE_CHARS):
        raise InvalidMessage(f"note must be a text of at most {_MAX_NOTE_CHARS} characters")
    if by is not None and (not isinstance(by, str) or not 0 < len(by) <= _MAX_BY_CHARS):
        raise InvalidMessage(f"by must be a text of 1 to {_MAX_BY_CHARS} characters")
    if by is None:
        by = "admin" if _is_admin(state, token) else f"token of {address}"
    decision = await state.host.decide_approval(
        address,
        request.path_params["approval_id"],
        approve=_DECISIONS[body["decision"]],
        by=by,
        note=note,
    )
    return _json({"approval": decision})


def _is_admin(state: ApiState, token: str | None) -> bool:
    try:
        require_admin(state.credentials, token)
    except AuthError:
        return False
    return True


# -- websocket ----------------------------------------------------------------------------


async def _agent_socket(state: ApiState, websocket: WebSocket) -> None:
    """Messages in, replies out as they are produced. The socket is the host's, not the
    agent's: the agent may hibernate while it is open and wakes on the next message."""
    try:
        address = _address(websocket)
        require_agent(state.credentials, _token(websocket), address)
    except RoostError as exc:
        await websocket.close(code=1008, reason=str(exc)[:120])
        return
    await websocket.accept()
    async with AsyncExitStack() as stack:
        try:
            # The host serving the agent holds its lease while the socket is open.
            pushes = await stack.enter_async_context(state.host.subscribe(address))
        except OwnedElsewhere as exc:
            if exc.owner_url is None:
                with trio.move_on_after(1):
                    await websocket.close(code=1013, reason="agent moving; reconnect")
                return
            await pipe_websocket(
                websocket,
                exc.owner_url,
                websocket.url.path,
                websocket.url.query,
                websocket.headers.get("authorization"),
            )
            return
        except RoostError as exc:
            with trio.move_on_after(1):
                await websocket.close(code=1011, reason=str(exc)[:120])
            return
        await _serve_socket(state, websocket, address, pushes)


async def _serve_socket(
    state: ApiState,
    websocket: WebSocket,
    address: AgentAddress,
    pushes: trio.MemoryReceiveChannel[Any],
) -> None:
    state.metrics.socket_opened()
    sender, outgoing = trio.open_memory_channel[str](math.inf)

    async def write() -> None:
        async with outgoing:
            async for frame in outgoing:
                await websocket.send_text(frame)

    async def forward_pushes() -> None:
        async for message in pushes:
            sender.send_nowait(to_json({"type": "push", "message": message}))

    async def close_on_shutdown(cancel: trio.CancelScope) -> None:
        await state.shutting_down.wait()
        cancel.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            nursery.start_soon(forward_pushes)
            nursery.start_soon(close_on_shutdown, nursery.cancel_scope)
            while True:
                frame = await websocket.receive()
                if frame["type"] == "websocket.disconnect":
                    break
                text = frame.get("text")
                if text is None:
                    error = InvalidMessage(
                        'binary frames are not accepted; send JSON text {"message": ...}'
                    )
                    sender.send_nowait(
                        to_json({"type": "error", **error_body(error), "status": 400})
                    )
                    continue
                await _socket_message(state, address, text, sender)
            nursery.cancel_scope.cancel()
    finally:
        state.metrics.socket_closed()
    if state.shutting_down.is_set():
        with trio.move_on_after(1):
            await websocket.close(code=1001, reason="server shutting down")


async def _socket_message(
    state: ApiState, address: AgentAddress, text: str, out: trio.MemorySendChannel[str]
) -> None:
    def on_reply(reply: Any) -> None:
        out.send_nowait(to_json({"type": "reply", "message": reply}))

    def on_token(token: str) -> None:
        out.send_nowait(to_json({"type": "token", "text": token}))

    try:
        state.host.check_admission(address.kind)
        body = from_json(text, what="frame")
        await state.host.send(
            address, _message_of(body), on_reply=on_reply, on_token=on_token, admitted=True
        )
    except RoostError as exc:
        out.send_nowait(to_json({"type": "error", **error_body(exc), "status": error_status(exc)}))
    else:
        out.send_nowait(to_json({"type": "done"}))
