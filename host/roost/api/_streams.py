"""A message's replies as server-sent events, while its handler runs (the API's
``Accept: text/event-stream`` messages and the console's chat)."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import trio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..address import AgentAddress
from ..errors import RoostError
from ..payload import to_json
from ._state import ApiState
from ._status import error_body, error_status


def sse(event: str, data: Any) -> bytes:
    """One server-sent event: its name and its data as JSON."""
    return f"event: {event}\ndata: {to_json(data)}\n\n".encode()


async def agent_json(state: ApiState, address: AgentAddress) -> dict[str, Any]:
    return asdict(await state.host.agent_status(address))


KEEP_ALIVE = b": keep-alive\n\n"
"""An SSE comment: clients ignore it; proxies and load balancers see the stream is alive."""


class MessageStream(Response):
    """Replies as server-sent events while the handler runs: ``reply`` per reply,
    then ``done`` (with the agent's status) or ``error``; while the handler waits (on a
    model, a person's approval) with nothing to send, a ``: keep-alive`` comment line every
    ``sse_keepalive_s``, so that idle timeouts of proxies on the way do not cut it."""

    media_type = "text/event-stream"

    def __init__(
        self, state: ApiState, address: AgentAddress, message: Any, key: str | None
    ) -> None:
        super().__init__(headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        # A stream has no length: drop the Content-Length: 0 of the empty body.
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self._state = state
        self._address = address
        self._message = message
        self._key = key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        sender, events = trio.open_memory_channel[bytes](math.inf)

        def on_reply(reply: Any) -> None:
            sender.send_nowait(sse("reply", reply))

        def on_token(token: str) -> None:
            sender.send_nowait(sse("token", token))

        async def run() -> None:
            async with sender:
                try:
                    await self._state.host.send(
                        self._address,
                        self._message,
                        idempotency_key=self._key,
                        on_reply=on_reply,
                        on_token=on_token,
                        admitted=True,  # before its body was read (app._ShedOverload)
                    )
                except RoostError as exc:
                    status = error_status(exc)
                    if status in (429, 503):
                        self._state.metrics.rejected(status)
                    sender.send_nowait(sse("error", {**error_body(exc), "status": status}))
                else:
                    agent = await agent_json(self._state, self._address)
                    sender.send_nowait(sse("done", {"agent": agent}))

        keep_alive_s = self._state.settings.sse_keepalive_s
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            async with events:
                while True:
                    event = KEEP_ALIVE
                    with trio.move_on_after(keep_alive_s):
                        try:
                            event = await events.receive()
                        except trio.EndOfChannel:
                            break
                    await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class EventStream(Response):
    """A forwarded event (``api/peers.py``) handled here, as server-sent events: ``reply``
    and ``token`` as they come, then ``done`` with every reply, or ``error``."""

    media_type = "text/event-stream"

    def __init__(
        self,
        state: ApiState,
        address: AgentAddress,
        event_kind: str,
        payload: bytes,
        key: str | None,
        chain: tuple[str, ...],
    ) -> None:
        super().__init__(headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self._state = state
        self._address = address
        self._event_kind = event_kind
        self._payload = payload
        self._key = key
        self._chain = chain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        sender, events = trio.open_memory_channel[bytes](math.inf)

        async def run() -> None:
            async with sender:
                try:
                    replies = await self._state.host.deliver_forwarded(
                        self._address,
                        self._event_kind,
                        self._payload,
                        idempotency_key=self._key,
                        chain=self._chain,
                        on_reply=lambda reply: sender.send_nowait(sse("reply", reply)),
                        on_token=lambda token: sender.send_nowait(sse("token", token)),
                    )
                except RoostError as exc:
                    body = {**error_body(exc, include_traceback=True), "status": error_status(exc)}
                    sender.send_nowait(sse("error", body))
                else:
                    sender.send_nowait(sse("done", {"replies": replies}))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            async with events:
                async for event in events:
                    await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
