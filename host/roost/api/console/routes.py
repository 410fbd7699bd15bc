"""The console's routes: pages, the fragments and data they load, and operator actions.

Every page, fragment, data endpoint and action needs a signed-in session or the admin
token (see :mod:`._auth`); only the sign-in page and the static assets (the console's own
CSS and scripts, and htmx) are served without one. Pages redirect to the sign-in page,
everything else answers 401.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import trio
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ...address import AgentAddress
from ...errors import (
    AccessDenied,
    AuthError,
    InvalidMessage,
    ManifestError,
    RoostError,
    UnknownKind,
)
from ...payload import from_json, to_json
from ...telemetry import TurnRecord
from .._admin import DEPLOY_BODY_FACTOR, deploy_upload, export_document, limited_request
from .._state import ApiState
from .._status import error_body, error_headers, error_status
from .._streams import MessageStream, sse
from . import _pages as pages
from ._auth import (
    COOKIE,
    PREFIX,
    Sessions,
    authorize,
    check_same_origin,
    clear_session_cookie,
    safe_next,
    set_session_cookie,
)
from ._history import StatisticsHistory

_HERE = Path(__file__).parent
_STATIC_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_STATUS_POLL_S = 1.0
"""How often the live event stream looks whether the agent's residency changed."""
_KEEPALIVE_S = 15.0
_SIGN_IN_FAILURE_DELAY_S = 0.25
"""A wrong token is answered after this pause, to slow down guessing."""


@dataclass(frozen=True)
class _Static:
    body: bytes
    media_type: str
    etag: str


class ConsoleState:
    """What the console's handlers share."""

    def __init__(self, api: ApiState) -> None:
        self.api = api
        self.host = api.host
        self.sessions = Sessions()
        self.history = StatisticsHistory(api.host)
        self.static = _load_static(_HERE / "static")
        self.templates = Environment(
            loader=FileSystemLoader(_HERE / "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters.update(
            number=pages.number,
            size=pages.size,
            ms=pages.milliseconds,
            utc=pages.utc,
            iso=pages.iso,
            ago=pages.ago,
            pretty_json=pages.pretty_json,
            held=pages.held_reasons,
        )
        self.templates.globals.update(
            static=self.static_url,
            agent_url=pages.agent_url,
            agents_url=pages.agents_url,
            prefix=PREFIX,
        )

    def static_url(self, name: str) -> str:
        return f"{PREFIX}/static/{name}?v={self.static[name].etag[:12]}"

    def render(
        self, request: Request, template: str, status_code: int = 200, **context: Any
    ) -> HTMLResponse:
        signed_in = context.pop("signed_in", True)
        html = self.templates.get_template(template).render(
            signed_in=signed_in and not self.api.credentials.dev,
            dev=self.api.credentials.dev,
            path=request.url.path,
            **context,
        )
        return HTMLResponse(html, status_code=status_code, headers=_SECURITY_HEADERS)


def _load_static(directory: Path) -> dict[str, _Static]:
    files = {}
    for path in sorted(directory.iterdir()):
        media_type = _STATIC_TYPES.get(path.suffix)
        if path.is_file() and media_type is not None:
            body = path.read_bytes()
            files[path.name] = _Static(body, media_type, hashlib.sha256(body).hexdigest())
    return files


Handler = Callable[[ConsoleState, Request], Awaitable[Response]]


def console_routes(api: ApiState) -> tuple[list[Route], ConsoleState]:
    """The console's routes under ``/console``, and their shared state (whose
    :attr:`ConsoleState.history` the server samples in the background)."""
    console = ConsoleState(api)

    def page(path: str, handler: Handler, methods: tuple[str, ...] = ("GET",)) -> Route:
        """A page: without a session, GET redirects to the sign-in page."""

        async def endpoint(request: Request) -> Response:
            try:
                authorize(request, api.credentials, console.sessions)
                if request.method != "GET":
                    check_same_origin(request)
                return await handler(console, request)
            except AccessDenied as exc:  # a wrong token, or a request from another site
                return console.render(request, "error.html", 403, title="Refused", error=exc)
            except AuthError as exc:
                return _refuse(console, request, exc)
            except RoostError as exc:
                return console.render(
                    request, "error.html", error_status(exc), title="Error", error=exc
                )

        return Route(f"{PREFIX}{path}", endpoint, methods=list(methods))

    def data(path: str, handler: Handler, methods: tuple[str, ...] = ("GET",)) -> Route:
        """A fragment, a data endpoint or a script's action: 401 without a session."""

        async def endpoint(request: Request) -> Response:
            try:
                authorize(request, api.credentials, console.sessions)
                if request.method != "GET":
                    check_same_origin(request)
                return await handler(console, request)
            except RoostError as exc:
                return _json_error(request, exc)

        return Route(f"{PREFIX}{path}", endpoint, methods=list(methods))

    def public(path: str, handler: Handler, methods: tuple[str, ...] = ("GET",)) -> Route:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(console, request)
            except RoostError as exc:
                return _json_error(request, exc)

        return Route(f"{PREFIX}{path}", endpoint, methods=list(methods))

    routes = [
        public("/sign-in", _sign_in_page),
        public("/sign-in", _sign_in, ("POST",)),
        public("/sign-out", _sign_out, ("POST",)),
        public("/static/{name}", _static),
        page("", _host_page),
        page("/", _to_console),
        page("/kinds", _kinds_page),
        page("/kinds", _deploy, ("POST",)),
        page("/agents", _agents_page),
        page("/agents/{kind}/{id}", _agent_page),
        page("/agents/{kind}/{id}/erase", _erase_page),
        page("/agents/{kind}/{id}/erase", _erase, ("POST",)),
        page("/agents/{kind}/{id}/fork", _fork, ("POST",)),
        data("/host/panel", _host_panel),
        data("/host/statistics", _host_statistics),
        data("/agents/results", _agent_results),
        data("/agents/{kind}/{id}/status", _agent_status),
        data("/agents/{kind}/{id}/events", _agent_events),
        data("/agents/{kind}/{id}/export", _agent_export),
        data("/agents/{kind}/{id}/messages", _agent_message, ("POST",)),
    ]
    return routes, console


def _refuse(console: ConsoleState, request: Request, exc: AuthError) -> Response:
    if request.method == "GET" and "hx-request" not in request.headers:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(
            f"{PREFIX}/sign-in?{_query(next=target)}", status_code=303, headers=_SECURITY_HEADERS
        )
    return console.render(
        request, "sign_in.html", 401, title="Sign in", signed_in=False, error=str(exc)
    )


def _json_error(request: Request, exc: RoostError) -> Response:
    headers = {**error_headers(exc), "Cache-Control": "no-store"}
    if isinstance(exc, AuthError) and "hx-request" in request.headers:
        headers["HX-Redirect"] = f"{PREFIX}/sign-in"
    return Response(
        to_json(error_body(exc)),
        status_code=error_status(exc),
        media_type="application/json",
        headers=headers,
    )


def _query(**params: str) -> str:
    return urlencode(params)


def _address(request: Request) -> AgentAddress:
    return AgentAddress(request.path_params["kind"], request.path_params["id"])


# -- sign-in, static ------------------------------------------------------------------------


async def _sign_in_page(console: ConsoleState, request: Request) -> Response:
    target = safe_next(request.query_params.get("next"))
    if console.api.credentials.dev:
        return RedirectResponse(target, status_code=303)
    return console.render(request, "sign_in.html", title="Sign in", signed_in=False, next=target)


async def _sign_in(console: ConsoleState, request: Request) -> Response:
    check_same_origin(request)
    async with request.form(max_files=0, max_fields=4, max_part_size=4096) as form:
        token = form.get("token")
        target = safe_next(str(form.get("next") or ""))
    credentials = console.api.credentials
    if not isinstance(token, str) or not _is_admin_token(credentials.admin_token, token):
        await trio.sleep(_SIGN_IN_FAILURE_DELAY_S)
        return console.render(
            request,
            "sign_in.html",
            401,
            title="Sign in",
            signed_in=False,
            next=target,
            error="That is not the admin token.",
        )
    response = RedirectResponse(target, status_code=303, headers=_SECURITY_HEADERS)
    set_session_cookie(response, request, console.sessions.start())
    return response


def _is_admin_token(admin_token: str, token: str) -> bool:
    return hmac.compare_digest(token.strip().encode(), admin_token.encode())


async def _sign_out(console: ConsoleState, request: Request) -> Response:
    check_same_origin(request)
    console.sessions.end(request.cookies.get(COOKIE))
    response = RedirectResponse(f"{PREFIX}/sign-in", status_code=303, headers=_SECURITY_HEADERS)
    clear_session_cookie(response, request)
    return response


async def _static(console: ConsoleState, request: Request) -> Response:
    static = console.static.get(request.path_params["name"])
    if static is None:
        return Response("not found", status_code=404, media_type="text/plain")
    headers = {
        "ETag": f'"{static.etag}"',
        "Cache-Control": "public, max-age=31536000, immutable",
        "X-Content-Type-Options": "nosniff",
    }
    if request.headers.get("if-none-match") == f'"{static.etag}"':
        return Response(status_code=304, headers=headers)
    return Response(static.body, media_type=static.media_type, headers=headers)


async def _to_console(console: ConsoleState, request: Request) -> Response:
    return RedirectResponse(PREFIX, status_code=308)


# -- host -----------------------------------------------------------------------------------


async def _host_page(console: ConsoleState, request: Request) -> Response:
    view = await pages.host_view(console.history)
    return console.render(request, "host.html", title="Host", section="host", view=view)


async def _host_panel(console: ConsoleState, request: Request) -> Response:
    view = await pages.host_view(console.history)
    return console.render(request, "_host_panel.html", view=view)


async def _host_statistics(console: ConsoleState, request: Request) -> Response:
    """The sampled statistics and the rates between samples, as JSON."""
    history = console.history
    body = {
        "interval_s": history.interval_s,
        "samples": [asdict(s) for s in history.samples()],
        "intervals": [asdict(i) for i in history.intervals()],
    }
    return Response(
        to_json(body), media_type="application/json", headers={"Cache-Control": "no-store"}
    )


# -- kinds ----------------------------------------------------------------------------------


async def _kinds_page(console: ConsoleState, request: Request, **extra: Any) -> Response:
    status = extra.pop("status", 200)
    return console.render(
        request,
        "kinds.html",
        status,
        title="Kinds",
        section="kinds",
        kinds=await pages.kind_views(console.host),
        deployed=request.query_params.get("deployed"),
        **extra,
    )


async def _deploy(console: ConsoleState, request: Request) -> Response:
    """Deploy a kind from the upload form (a manifest file or text, and a component)."""
    limit = console.api.settings.max_body_bytes * DEPLOY_BODY_FACTOR
    try:
        limited = limited_request(request, limit)
        async with limited.form(max_files=2, max_fields=4, max_part_size=limit) as form:
            manifest_field = form.get("manifest")
            component_field = form.get("component")
            if manifest_field is not None and not isinstance(manifest_field, str):
                manifest_text = (await manifest_field.read()).decode("utf-8", "replace")
            else:
                manifest_text = manifest_field or ""
            if component_field is None or isinstance(component_field, str):
                raise ManifestError("choose the kind's component (.wasm) to upload")
            wasm = await component_field.read()
        if not manifest_text.strip():
            raise ManifestError("choose the kind's manifest (agent.toml) to upload")
        info = await deploy_upload(console.host, manifest_text, wasm)
    except RoostError as exc:
        return await _kinds_page(console, request, status=error_status(exc), deploy_error=exc)
    return RedirectResponse(
        f"{PREFIX}/kinds?{_query(deployed=f'{info.name} {info.version}')}", status_code=303
    )


# -- agents ---------------------------------------------------------------------------------


async def _search(console: ConsoleState, request: Request) -> pages.AgentSearch:
    params = request.query_params
    kind = params.get("kind") or None
    query = params.get("q", "")
    after = params.get("after") or None
    try:
        return await pages.search_agents(console.host, kind, query, after)
    except RoostError as exc:
        kinds = sorted(k.name for k in console.host.kinds())
        search = pages.AgentSearch(kinds, kind, query, after)
        search.problem = str(exc)
        return search


async def _agents_page(console: ConsoleState, request: Request) -> Response:
    return console.render(
        request,
        "agents.html",
        title="Agents",
        section="agents",
        search=await _search(console, request),
        erased=request.query_params.get("erased"),
    )


async def _agent_results(console: ConsoleState, request: Request) -> Response:
    return console.render(request, "_agent_results.html", search=await _search(console, request))


async def _agent_view(console: ConsoleState, address: AgentAddress) -> pages.AgentView:
    host = console.host
    try:
        manifest = host.manifest(address.kind)
    except UnknownKind:
        manifest = None
    status = await host.agent_status(address)
    export = await export_document(host, address)
    kv: dict[str, bytes] = export.get("kv", {})
    return pages.AgentView(
        address=address,
        status=status,
        manifest=manifest,
        export=export,
        turns=host.metrics().turns.turns(address),
        usage=pages.usage_rows(status, manifest.budgets if manifest else None),
        waiting=[(section, section.rows(export)) for section in pages.WAITING],
        kv=pages.kv_entries(kv),
        kv_total=len(kv),
    )


async def _agent_page(console: ConsoleState, request: Request) -> Response:
    view = await _agent_view(console, _address(request))
    return console.render(
        request,
        "agent.html",
        title=str(view.address),
        section="agents",
        view=view,
        forked_from=request.query_params.get("forked_from"),
    )


async def _agent_status(console: ConsoleState, request: Request) -> Response:
    address = _address(request)
    status = await console.host.agent_status(address)
    try:
        budgets = console.host.manifest(address.kind).budgets
    except UnknownKind:
        budgets = None
    return console.render(
        request,
        "_agent_status.html",
        address=address,
        status=status,
        usage=pages.usage_rows(status, budgets),
    )


async def _agent_export(console: ConsoleState, request: Request) -> Response:
    address = _address(request)
    document = await export_document(console.host, address)
    filename = f"{address.kind}-{address.id}.json".replace(":", "_").replace("@", "_")
    return Response(
        json.dumps(json.loads(to_json(document)), indent=2),
        media_type="application/json",
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Cache-Control": "no-store",
        },
    )


async def _agent_message(console: ConsoleState, request: Request) -> Response:
    """The chat panel: a message to the agent, its replies and LLM tokens streamed back as
    server-sent events (as ``POST /v1/agents/{kind}/{id}/messages`` does)."""
    address = _address(request)
    limit = console.api.settings.max_body_bytes
    body = b""
    async for chunk in limited_request(request, limit).stream():
        body += chunk
    parsed = from_json(body)
    if not isinstance(parsed, dict) or set(parsed) != {"message"}:
        raise InvalidMessage('expected a JSON object {"message": ...}')
    console.host.manifest(address.kind)  # an unknown kind is refused before streaming
    console.host.check_admission(address.kind)  # the stream sends it as admitted
    return MessageStream(console.api, address, parsed["message"], None)


async def _fork(console: ConsoleState, request: Request) -> Response:
    address = _address(request)
    async with request.form(max_files=0, max_fields=2, max_part_size=1024) as form:
        new_id = str(form.get("new_id") or "").strip()
    if not new_id:
        raise InvalidMessage("name the new agent's id to fork into")
    target = await console.host.fork(address, new_id)
    return RedirectResponse(
        pages.agent_url(target) + f"?{_query(forked_from=str(address))}", status_code=303
    )


async def _erase_page(console: ConsoleState, request: Request) -> Response:
    address = _address(request)
    status = await console.host.agent_status(address)
    return console.render(
        request,
        "erase.html",
        title=f"Erase {address}",
        section="agents",
        status=status,
        address=address,
    )


async def _erase(console: ConsoleState, request: Request) -> Response:
    address = _address(request)
    async with request.form(max_files=0, max_fields=2, max_part_size=1024) as form:
        confirm = str(form.get("confirm") or "").strip()
    if confirm != address.id:
        status = await console.host.agent_status(address)
        return console.render(
            request,
            "erase.html",
            400,
            title=f"Erase {address}",
            section="agents",
            status=status,
            address=address,
            error=f"Type the agent's id, {address.id}, to confirm.",
        )
    await console.host.erase(address)
    return RedirectResponse(pages.agents_url(kind=address.kind, erased=address.id), status_code=303)


# -- the live event stream -----------------------------------------------------------------


async def _agent_events(console: ConsoleState, request: Request) -> Response:
    address = _address(request)
    console.host.manifest(address.kind)
    return _EventStream(console, address)


class _EventStream(Response):
    """What one agent does, as server-sent events while the client listens: ``turn`` (each
    turn as it ends: export, outcome, latency), ``push`` (replies to events nobody waited
    on: timers, messages from other agents), and ``status`` (resident or hibernated, and
    what holds it, whenever that changes). Ends when the client leaves or the server shuts
    down."""

    media_type = "text/event-stream"

    def __init__(self, console: ConsoleState, address: AgentAddress) -> None:
        super().__init__(headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self._console = console
        self._address = address

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        host = self._console.host
        address = self._address
        sender, events = trio.open_memory_channel[bytes](256)

        def offer(event: bytes) -> None:
            with contextlib.suppress(trio.WouldBlock):  # a slow client loses events
                sender.send_nowait(event)

        def on_turn(turn: TurnRecord) -> None:
            offer(sse("turn", _turn_json(turn)))

        async def until_disconnected(cancel: trio.CancelScope) -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            cancel.cancel()

        async def until_shutdown(cancel: trio.CancelScope) -> None:
            await self._console.api.shutting_down.wait()
            cancel.cancel()

        async def pushes() -> None:
            async with host.subscribe(address) as channel:
                async for message in channel:
                    offer(sse("push", {"message": message}))

        async def residency() -> None:
            last = None
            while True:
                now = asdict(host.residency(address))
                if now != last:
                    offer(sse("status", now))
                    last = now
                await trio.sleep(_STATUS_POLL_S)

        async def keepalive() -> None:
            while True:
                await trio.sleep(_KEEPALIVE_S)
                offer(b": keepalive\n\n")

        stop = host.metrics().turns.listen(address, on_turn)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(until_disconnected, nursery.cancel_scope)
                nursery.start_soon(until_shutdown, nursery.cancel_scope)
                nursery.start_soon(pushes)
                nursery.start_soon(residency)
                nursery.start_soon(keepalive)
                await send({"type": "http.response.body", "body": b": open\n\n", "more_body": True})
                async for event in events:
                    await send({"type": "http.response.body", "body": event, "more_body": True})
        finally:
            stop()
        with trio.move_on_after(1) as cleanup:
            cleanup.shield = True
            with contextlib.suppress(Exception):  # the client may be gone
                await send({"type": "http.response.body", "body": b"", "more_body": False})


def _turn_json(turn: TurnRecord) -> dict[str, Any]:
    return {
        "at": turn.at,
        "time": pages.utc(turn.at),
        "export": turn.export,
        "outcome": turn.outcome,
        "latency": pages.milliseconds(turn.seconds),
        "ms": round(turn.seconds * 1000, 3),
    }
