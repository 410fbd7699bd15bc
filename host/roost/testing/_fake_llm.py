"""A scripted model provider for tests, in process: no socket, no network."""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import trio

FAKE_LLM_HOST = "fake-llm.roost.test"
FAKE_LLM_URL = f"http://{FAKE_LLM_HOST}/v1"
"""The ``llm_base_url`` of a test host: requests to it never leave the process."""


@dataclass(frozen=True)
class _Scripted:
    content: str = ""
    tokens: tuple[str, ...] | None = None
    status: int = 200
    message: str = ""


class FakeLlm(httpx.AsyncBaseTransport):
    """An OpenAI-compatible chat completions provider that answers from a script.

    ``reply("text")`` queues the next answer (streamed requests get it token by token:
    ``tokens=[...]``, or its words); ``fail(503)`` queues a failure; with nothing queued,
    ``respond(messages)`` is called if set, else the answer is ``"(fake) "`` and the last
    user message. Every request body is kept in :attr:`requests`. ``latency_s`` delays each
    answer by that much virtual time. Any model name is accepted; the host checks the
    kind's grant before a request is made.
    """

    def __init__(self) -> None:
        self._script: deque[_Scripted] = deque()
        self.requests: list[dict[str, Any]] = []
        """Bodies of the chat completion requests received, oldest first."""
        self.respond: Callable[[list[dict[str, Any]]], str] | None = None
        self.latency_s = 0.0

    def reply(self, content: str, *, tokens: Sequence[str] | None = None) -> None:
        """Queue an answer. ``tokens`` (joined, they must equal ``content``) is how a
        streamed answer is cut; by default, into words with their leading spaces."""
        if tokens is not None and "".join(tokens) != content:
            raise ValueError("the tokens must join to the content")
        self._script.append(_Scripted(content, tuple(tokens) if tokens is not None else None))

    def fail(self, status: int = 500, message: str = "the fake model failed") -> None:
        """Queue a failed request (the agent's ``ctx.llm.chat`` raises OpError)."""
        self._script.append(_Scripted(status=status, message=message))

    @property
    def pending(self) -> int:
        """Answers queued and not yet given."""
        return len(self._script)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host != FAKE_LLM_HOST:
            return _error(
                502,
                f"a test host reaches no network ({request.url.host}); the llm capability "
                "talks to the fake model, and the http capability is not faked",
            )
        if request.url.path != "/v1/chat/completions":
            return _error(
                404, f"the fake model serves /v1/chat/completions, not {request.url.path}"
            )
        body = json.loads(await request.aread())
        self.requests.append(body)
        if self.latency_s > 0:
            await trio.sleep(self.latency_s)
        scripted = self._next(body.get("messages") or [])
        if scripted.status >= 400:
            return _error(scripted.status, scripted.message)
        tokens = scripted.tokens or tuple(re.findall(r"\s*\S+", scripted.content))
        usage = {
            "prompt_tokens": sum(
                len(str(m.get("content", "")).split()) for m in body.get("messages") or []
            ),
            "completion_tokens": len(tokens),
        }
        model = body.get("model", "fake")
        if not body.get("stream"):
            return httpx.Response(
                200,
                json={
                    "object": "chat.completion",
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": scripted.content},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                },
            )
        chunks: list[dict[str, Any]] = [
            {"choices": [{"index": 0, "delta": {"content": t}}]} for t in tokens
        ]
        chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        chunks.append({"choices": [], "usage": usage})
        text = "".join(f"data: {json.dumps({'model': model, **c})}\n\n" for c in chunks)
        return httpx.Response(
            200,
            content=(text + "data: [DONE]\n\n").encode(),
            headers={"content-type": "text/event-stream"},
        )

    def _next(self, messages: list[dict[str, Any]]) -> _Scripted:
        if self._script:
            return self._script.popleft()
        if self.respond is not None:
            return _Scripted(self.respond(messages))
        last: dict[str, Any] = next((m for m in reversed(messages) if m.get("role") == "user"), {})
        return _Scripted(f"(fake) {last.get('content', '')}")


def _error(status: int, message: str) -> httpx.Response:
    return httpx.Response(
        status, json={"error": {"message": message, "type": "fake", "code": None}}
    )
