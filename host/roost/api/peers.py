"""Host to host, when several hosts share a store: events forwarded to the host that
serves an agent, over HTTP.

The receiving end is ``POST /v1/internal/events/{kind}/{id}`` (admin token): the event
(msgpack, base64), its idempotency key and ask chain. It answers with server-sent events
as the handler runs: ``reply`` and ``token`` as they come, then ``done`` with every reply,
or ``error`` with the error's body and status. The forwarding host hands those to its own
caller as they arrive (JSON, SSE and WebSocket clients and asks alike), and raises the
owner's error as the same error class. The receiving host never forwards again: an agent
that moved on meanwhile answers 503 (retryable), and the sender retries.

WebSockets are forwarded whole (:func:`pipe_websocket`): the host that serves the agent
keeps its lease while the socket is open, so pushes reach it.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
import trio

from .. import errors
from ..address import AgentAddress
from ..errors import RoostError, StorageError

logger = logging.getLogger("roost.peers")

INTERNAL_EVENTS = "/v1/internal/events"
_TIMEOUT = httpx.Timeout(connect=5.0, read=None, write=30.0, pool=30.0)


class HttpPeers:
    """Forwards events to other hosts (implements ``roost.core.services.Peers``)."""

    def __init__(self, admin_token: str) -> None:
        self._token = admin_token
        self._client = httpx.AsyncClient(timeout=_TIMEOUT)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def deliver(
        self,
        owner_url: str,
        address: AgentAddress,
        event_kind: str,
        payload: bytes,
        *,
        idempotency_key: str | None,
        chain: tuple[str, ...],
        on_reply: Callable[[Any], None] | None,
        on_token: Callable[[str], None] | None,
    ) -> list[Any]:
        body = {
            "event_kind": event_kind,
            "payload": base64.b64encode(payload).decode(),
            "idempotency_key": idempotency_key,
            "chain": list(chain),
        }
        url = f"{owner_url.rstrip('/')}{INTERNAL_EVENTS}/{address.kind}/{address.id}"
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "text/event-stream"}
        try:
            async with self._client.stream("POST", url, json=body, headers=headers) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise _remote_error(response.status_code, _json(response.text), owner_url)
                name = ""
                async for line in response.aiter_lines():
                    if line.startswith("event: "):
                        name = line[len("event: ") :]
                        continue
                    if not line.startswith("data: "):
                        continue
                    data = json.loads(line[len("data: ") :])
                    if name == "reply" and on_reply is not None:
                        on_reply(data)
                    elif name == "token" and on_token is not None:
                        on_token(data)
                    elif name == "done":
                        return list(data["replies"])
                    elif name == "error":
                        raise _remote_error(int(data.get("status", 500)), data, owner_url)
        except httpx.HTTPError as exc:
            if not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout) and (
                idempotency_key is None
            ):
                # Cut off after the owner may have handled it: only a keyed event is safe
                # to send again.
                raise RoostError(
                    f"the host at {owner_url} serving agent {address} went away while "
                    f"handling the event ({type(exc).__name__}); its outcome is unknown"
                ) from None
            raise errors.AgentUnavailable(
                f"agent {address} is served by the host at {owner_url}, which did not answer "
                f"({type(exc).__name__}); retry shortly",
                address=str(address),
            ) from None
        raise errors.AgentUnavailable(
            f"the host at {owner_url} ended the event's stream early; retry",
            address=str(address),
        )


def _json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _remote_error(status: int, body: dict[str, Any], owner_url: str) -> RoostError:
    """The owner's error as the same class here (RoostError when unknown)."""
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    assert isinstance(error, dict)
    name = str(error.get("type", ""))
    message = str(error.get("message", f"the host at {owner_url} answered {status}"))
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, RoostError)):
        return StorageError(message) if status == 503 else RoostError(message)
    try:
        made = cls(message)
    except TypeError:
        return StorageError(message) if status == 503 else RoostError(message)
    if isinstance(made, errors.GuestError) and error.get("guest_traceback"):
        made.guest_traceback = str(error["guest_traceback"])
    return made


async def pipe_websocket(
    websocket: Any, owner_url: str, path: str, query: str, authorization: str | None
) -> None:
    """Carry an accepted WebSocket to the same path on the host that serves its agent,
    frames both ways, until either side closes."""
    from trio_websocket import ConnectionClosed, open_websocket_url

    target = owner_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    target = f"{target.rstrip('/')}{path}" + (f"?{query}" if query else "")
    from starlette.websockets import WebSocketDisconnect

    try:
        headers = [(b"Authorization", authorization.encode())] if authorization else None
        async with (
            open_websocket_url(target, extra_headers=headers) as upstream,
            trio.open_nursery() as nursery,
        ):

            async def down() -> None:
                try:
                    while True:
                        await websocket.send_text(await upstream.get_message())
                except ConnectionClosed:
                    pass
                nursery.cancel_scope.cancel()

            async def up() -> None:
                try:
                    while True:
                        await upstream.send_message(await websocket.receive_text())
                except (WebSocketDisconnect, ConnectionClosed):
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(down)
            nursery.start_soon(up)
    except (OSError, trio.TooSlowError, ConnectionClosed) as exc:
        logger.warning("forwarding a WebSocket to %s failed: %s", owner_url, exc)
    except Exception as exc:  # the handshake refused (trio_websocket.HandshakeError)
        logger.warning("forwarding a WebSocket to %s failed: %r", owner_url, exc)
    with trio.move_on_after(1):
        await websocket.close(code=1012, reason="reconnect")
