"""A SIMULATED OpenAI-compatible LLM server, for ``roost dev``, tests, demos and load tests.

Nothing here is a language model. The server speaks the OpenAI chat completions protocol over
real HTTP so that the host's ``llm`` capability can be exercised end to end, and so that load
tests can give it a chosen latency, token rate and failure rate. Every response says so: the
``x-simulated: true`` header, ``"system_fingerprint": "roost-simulated"`` and the startup
banner.

Run it::

    python -m roost.dev.sim_llm --port 8471 --latency-ms 300 --tokens-per-s 40 \\
        --failure-rate 0.01 --api-key sk-test

or start it in-process (trio) on a free port::

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_sim_llm, SimLLMConfig(port=0))
        ...  # talk to server.url, e.g. http://127.0.0.1:41234/v1
        nursery.cancel_scope.cancel()

Endpoints
---------
``POST /v1/chat/completions``
    Request ``{model, messages, max_tokens | max_completion_tokens, stream, stream_options}``.
    Other fields (temperature, tools, ...) are accepted and ignored; ``n`` must be 1.

    The reply is deterministic: the words of the last user message, repeated in order until
    there are ``N = min(max_tokens, config.completion_tokens)`` of them, joined by spaces
    (``"hello world"`` with N = 3 gives ``"hello world hello"``; a message with no words
    gives ``"simulated"`` words). :func:`reply_words` computes it. Tokens are counted by
    whitespace split: ``prompt_tokens`` over every message's text, ``completion_tokens = N``.
    ``finish_reason`` is ``"length"`` when ``max_tokens`` cut the reply short, else ``"stop"``.

    Timing: the first token is ready ``latency_ms`` after the request arrives, and each later
    one ``1 / tokens_per_s`` seconds after the one before (``tokens_per_s = 0`` means no
    delay between tokens). A non-streaming reply is sent when its last token is ready; a
    streaming one sends each token as it is ready. :func:`simulated_duration_s` gives the
    total, so a load test can subtract the simulated time from what it measured.

    Streaming (``"stream": true``) is server-sent events, as OpenAI sends them: a first
    ``chat.completion.chunk`` with ``delta.role``, one chunk per token with
    ``delta.content`` (the concatenated deltas equal the non-streaming content), a chunk
    with an empty delta and the ``finish_reason``, then, only when the request asked for it
    with ``"stream_options": {"include_usage": true}``, a chunk with ``"choices": []`` and
    the ``usage``, and finally ``data: [DONE]``.

    Tools: when the request offers ``tools`` and its last message is the user's, every
    offered tool whose name appears in that message is called, with the JSON object that
    follows the name as its arguments (``{}`` when none follows): ``"add {"a": 2, "b": 3}"``
    calls ``add`` with ``{"a": 2, "b": 3}``. The answer then has ``tool_calls`` (streamed
    as OpenAI streams them: the id and name first, the arguments in two pieces) and
    ``finish_reason: "tool_calls"``. When the last message is a tool result, the answer is
    ``"tool results: "`` and the contents of the tool messages since the last assistant
    message, joined by ``"; "``.

    Faults, per model (``faults = {model: fault}``), for what real providers do wrong:
    ``error_mid_stream`` (two tokens, then an error object in the stream, then the end,
    no ``[DONE]``), ``error_in_stream`` (an error object before any token), ``cut_off`` (two
    tokens, then the end: no finish reason, no ``[DONE]``), ``empty`` (a 200 event stream
    with no body), ``not_sse`` (a JSON completion answered to a streamed request), ``hang``
    (never answers), ``hang_after_first_token`` (one token, then nothing), ``error_429``
    and ``error_500`` (every request fails so). ``omit_usage`` sends no usage at all, as
    llama.cpp's server ignores ``stream_options.include_usage``.

``POST /v1/embeddings``
    ``{model, input}`` (a string or a list of strings): one deterministic vector of
    :data:`EMBEDDING_DIMENSIONS` floats per input (from a hash of its text), and
    ``usage.prompt_tokens`` counted as for completions.

``GET /v1/models``
    The configured model names. A completion request for any other model is answered 404
    ``model_not_found``, as OpenAI and vLLM do.

Errors use OpenAI's body shape ``{"error": {"message", "type", "param", "code"}}``:
401 ``invalid_api_key`` when an API key is configured and the request's
``Authorization: Bearer`` does not match it (checked first, on every endpoint); 400 for a
malformed request; and, with probability ``failure_rate`` per completion request (a seeded
RNG, so a run is reproducible), an injected failure answered at once: 429
``rate_limit_exceeded`` with ``retry-after: 1``, or 500 ``server_error``, half each.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import random
import re
import signal
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "FINGERPRINT",
    "SimLLMConfig",
    "SimLLMServer",
    "SimLLMStatistics",
    "count_tokens",
    "create_app",
    "main",
    "reply_words",
    "serve_sim_llm",
    "simulated_duration_s",
    "simulated_embedding",
]

FINGERPRINT = "roost-simulated"
"""``system_fingerprint`` of every completion, and ``owned_by`` of every model."""
DEFAULT_MODEL = "roost-sim"
DEFAULT_COMPLETION_TOKENS = 32
FILLER_WORD = "simulated"
"""The reply's words when the last user message has none."""
EMBEDDING_DIMENSIONS = 8
"""Length of the simulated embedding vectors."""
SimFault = Literal[
    "error_mid_stream",
    "error_in_stream",
    "cut_off",
    "empty",
    "not_sse",
    "hang",
    "hang_after_first_token",
    "error_429",
    "error_500",
]
RECENT_REQUESTS = 100
"""Request bodies kept for tests to inspect (:attr:`SimLLMServer.recent_requests`)."""


class SimLLMConfig(BaseModel):
    """How the simulated server behaves. Units are in the names."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535)
    """0 picks a free port (the URL is in :class:`SimLLMServer`)."""
    latency_ms: float = Field(0.0, ge=0)
    """Time from the request's arrival to the first token."""
    tokens_per_s: float = Field(0.0, ge=0)
    """Rate of the tokens after the first; 0 sends them all at once."""
    failure_rate: float = Field(0.0, ge=0, le=1)
    """Share of completion requests answered 429 or 500 instead."""
    api_key: str | None = None
    """When set, requests must carry ``Authorization: Bearer <api_key>``."""
    completion_tokens: int = Field(DEFAULT_COMPLETION_TOKENS, ge=1)
    """Reply length when the request's ``max_tokens`` is larger or absent."""
    models: tuple[str, ...] = Field((DEFAULT_MODEL,), min_length=1)
    any_model: bool = False
    """Answer a request for any model name, not only ``models`` (``roost dev``, where the
    manifest names the models and may change)."""
    seed: int = 0
    """Seed of the failure-injection RNG."""
    faults: dict[str, SimFault] = Field(default_factory=dict)
    """What goes wrong with requests for a model (see the module docstring)."""
    omit_usage: bool = False
    """Send no usage, streamed or not (as llama.cpp's server ignores ``include_usage``)."""


@dataclass(frozen=True)
class SimLLMStatistics:
    """Counters since the server started."""

    requests: int
    """Completion requests received (including rejected ones)."""
    completed: int
    """Completions sent in full."""
    injected_failures: int
    unauthorized: int
    prompt_tokens: int
    completion_tokens: int


@dataclass
class SimLLMServer:
    """A running simulated server: where it listens and what it has seen."""

    url: str
    """Base URL of the API, e.g. ``http://127.0.0.1:41234/v1``."""
    config: SimLLMConfig
    recent_requests: deque[dict[str, Any]] = field(
        default_factory=lambda: deque(maxlen=RECENT_REQUESTS)
    )
    """The last request bodies of ``/v1/chat/completions``, oldest first."""
    _counts: dict[str, int] = field(default_factory=dict)

    def statistics(self) -> SimLLMStatistics:
        return SimLLMStatistics(
            requests=self._counts.get("requests", 0),
            completed=self._counts.get("completed", 0),
            injected_failures=self._counts.get("injected_failures", 0),
            unauthorized=self._counts.get("unauthorized", 0),
            prompt_tokens=self._counts.get("prompt_tokens", 0),
            completion_tokens=self._counts.get("completion_tokens", 0),
        )

    def _count(self, name: str, amount: int = 1) -> None:
        self._counts[name] = self._counts.get(name, 0) + amount


# -- the deterministic reply ---------------------------------------------------------------


def _text_of(content: Any) -> str:
    """The text of a message's content: a string, or a list of ``{"type": "text"}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def count_tokens(text: str) -> int:
    """Simulated token count: whitespace-separated words."""
    return len(text.split())


def reply_words(messages: Sequence[dict[str, Any]], n: int) -> list[str]:
    """The ``n`` words of the reply to ``messages``: the last user message's words, cycled."""
    last_user = next(
        (m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None
    )
    words = _text_of(last_user.get("content")).split() if last_user else []
    return list(itertools.islice(itertools.cycle(words or [FILLER_WORD]), n))


def simulated_embedding(text: str) -> list[float]:
    """The simulated embedding of ``text``: :data:`EMBEDDING_DIMENSIONS` floats in [-1, 1)
    from its SHA-256 (equal texts, equal vectors)."""
    digest = hashlib.sha256(text.encode()).digest()
    return [(digest[i] - 128) / 128 for i in range(EMBEDDING_DIMENSIONS)]


def simulated_duration_s(config: SimLLMConfig, completion_tokens: int) -> float:
    """Seconds from a request's arrival until its last token is ready."""
    between = 1.0 / config.tokens_per_s if config.tokens_per_s > 0 else 0.0
    return config.latency_ms / 1000.0 + max(completion_tokens - 1, 0) * between


# -- the ASGI app ----------------------------------------------------------------------------


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _error(
    status: int,
    message: str,
    *,
    type_: str,
    code: str | None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _mark_simulated(app: ASGIApp) -> ASGIApp:
    """Adds ``x-simulated: true`` to every HTTP response, errors and 404s included."""

    async def marked(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def send_marked(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-simulated", b"true"))
                message = {**message, "headers": headers}
            await send(message)

        await app(scope, receive, send_marked)

    return marked


@dataclass(frozen=True)
class _Completion:
    model: str
    words: list[str]
    prompt_tokens: int
    finish_reason: str
    stream: bool
    include_usage: bool
    tool_calls: tuple[tuple[str, str], ...] = ()
    """(name, arguments JSON) of the tools the simulated model calls."""


def called_tools(body: dict[str, Any]) -> list[tuple[str, str]]:
    """The tools a simulated answer calls: (name, arguments JSON) of every offered tool
    named in the last message, if it is the user's (see the module docstring)."""
    tools = body.get("tools") or []
    messages = body.get("messages") or []
    if not tools or not messages or messages[-1].get("role") != "user":
        return []
    text = _text_of(messages[-1].get("content"))
    calls: list[tuple[int, str, str]] = []
    decoder = json.JSONDecoder()
    for spec in tools:
        name = (spec.get("function") or {}).get("name") if isinstance(spec, dict) else None
        if not isinstance(name, str):
            continue
        for match in re.finditer(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text):
            rest = text[match.end() :].lstrip()
            arguments = "{}"
            if rest.startswith("{"):
                try:
                    value, _ = decoder.raw_decode(rest)
                    arguments = json.dumps(value)
                except ValueError:
                    pass
            calls.append((match.start(), name, arguments))
    return [(name, arguments) for _, name, arguments in sorted(calls)]


def tool_results_reply(messages: Sequence[dict[str, Any]]) -> list[str] | None:
    """The words of the answer to tool results, or None when the last message is not one."""
    if not messages or messages[-1].get("role") != "tool":
        return None
    results = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        results.append(_text_of(message.get("content")))
    return ["tool", "results:", *"; ".join(reversed(results)).split()]


def _parse_completion(body: Any, config: SimLLMConfig) -> _Completion:
    if not isinstance(body, dict):
        raise _BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("'model' is required", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty list", "messages")
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        raise _BadRequest("each message must be an object with a 'role'", "messages")
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise _BadRequest("'max_tokens' must be a positive integer", "max_tokens")
    if body.get("n", 1) != 1:
        raise _BadRequest("the simulated server only supports n = 1", "n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _BadRequest("'stream' must be a boolean", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _BadRequest("'stream_options' must be an object", "stream_options")
    n = config.completion_tokens if limit is None else min(limit, config.completion_tokens)
    calls = called_tools(body)
    from_tools = tool_results_reply(messages)
    if calls:
        return _Completion(
            model=model,
            words=[],
            prompt_tokens=sum(count_tokens(_text_of(m.get("content"))) for m in messages),
            finish_reason="tool_calls",
            stream=stream,
            include_usage=stream and options.get("include_usage") is True,
            tool_calls=tuple(calls),
        )
    return _Completion(
        model=model,
        words=from_tools if from_tools is not None else reply_words(messages, n),
        prompt_tokens=sum(count_tokens(_text_of(m.get("content"))) for m in messages),
        finish_reason="length"
        if limit is not None and limit < config.completion_tokens
        else "stop",
        stream=stream,
        include_usage=stream and options.get("include_usage") is True,
    )


def create_app(server: SimLLMServer) -> ASGIApp:
    """The ASGI app of a simulated server; its counters go to ``server``."""
    config = server.config
    rng = random.Random(config.seed)
    ids = itertools.count(1)
    between_s = 1.0 / config.tokens_per_s if config.tokens_per_s > 0 else 0.0

    def authorized(request: Request) -> bool:
        if config.api_key is None:
            return True
        return request.headers.get("authorization", "") == f"Bearer {config.api_key}"

    def unauthorized() -> JSONResponse:
        server._count("unauthorized")
        return _error(
            401,
            "SIMULATED: incorrect API key provided",
            type_="invalid_request_error",
            code="invalid_api_key",
        )

    async def models(request: Request) -> Response:
        if not authorized(request):
            return unauthorized()
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": FINGERPRINT}
            for name in config.models
        ]
        return JSONResponse({"object": "list", "data": data})

    async def chat_completions(request: Request) -> Response:
        arrived = trio.current_time()
        server._count("requests")
        if not authorized(request):
            return unauthorized()
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(
                400, "the request body is not valid JSON", type_="invalid_request_error", code=None
            )
        if isinstance(body, dict):
            server.recent_requests.append(body)
        try:
            completion = _parse_completion(body, config)
        except _BadRequest as exc:
            return _error(400, str(exc), type_="invalid_request_error", code=None, param=exc.param)
        if completion.model not in config.models and not config.any_model:
            return _error(
                404,
                f"SIMULATED: the model {completion.model!r} does not exist",
                type_="invalid_request_error",
                code="model_not_found",
                param="model",
            )
        if config.failure_rate > 0 and rng.random() < config.failure_rate:
            server._count("injected_failures")
            if rng.random() < 0.5:
                return _error(
                    429,
                    "SIMULATED: rate limit reached",
                    type_="requests",
                    code="rate_limit_exceeded",
                    headers={"retry-after": "1"},
                )
            return _error(
                500, "SIMULATED: the server had an error", type_="server_error", code=None
            )
        fault = config.faults.get(completion.model)
        if fault is not None:
            server._count("faults")
        if fault == "error_429":
            return _error(
                429,
                "SIMULATED: rate limit reached",
                type_="requests",
                code="rate_limit_exceeded",
                headers={"retry-after": "2"},
            )
        if fault == "error_500":
            return _error(
                500, "SIMULATED: the server had an error", type_="server_error", code=None
            )
        if fault == "hang":
            await trio.sleep_forever()

        completion_id = f"chatcmpl-sim-{next(ids)}"
        created = int(time.time())
        generated = len(completion.words) + sum(
            count_tokens(f"{name} {arguments}") for name, arguments in completion.tool_calls
        )
        usage: dict[str, int] | None = {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": generated,
            "total_tokens": completion.prompt_tokens + generated,
        }
        if config.omit_usage:
            usage = None
        tool_calls: list[dict[str, Any]] = [
            {
                "id": f"call_sim_{i + 1}",
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
            for i, (name, arguments) in enumerate(completion.tool_calls)
        ]
        message: dict[str, Any] = {
            "role": "assistant",
            "content": " ".join(completion.words) if not tool_calls else None,
            "refusal": None,
        }
        if tool_calls:
            message["tool_calls"] = tool_calls

        def record() -> None:
            server._count("completed")
            server._count("prompt_tokens", completion.prompt_tokens)
            server._count("completion_tokens", generated)

        whole = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": completion.model,
            "system_fingerprint": FINGERPRINT,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": completion.finish_reason,
                }
            ],
        }
        if usage is not None:
            whole["usage"] = usage
        if not completion.stream or fault == "not_sse":
            await trio.sleep_until(arrived + simulated_duration_s(config, len(completion.words)))
            record()
            return JSONResponse(whole)
        if fault == "empty":
            return Response(b"", media_type="text/event-stream")

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            payload: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": completion.model,
                "system_fingerprint": FINGERPRINT,
                "choices": [
                    {
                        "index": 0,
                        "delta": delta,
                        "logprobs": None,
                        "finish_reason": finish_reason,
                    }
                ],
            }
            if completion.include_usage and usage is not None:
                payload["usage"] = None
            return _sse(payload)

        stream_error = {
            "error": {
                "message": "SIMULATED: the upstream model failed while answering",
                "type": "server_error",
                "code": "upstream_error",
            }
        }

        async def events() -> AsyncIterator[bytes]:
            yield chunk({"role": "assistant", "content": ""})
            if fault == "error_in_stream":
                yield _sse(stream_error)
                return
            first_at = arrived + config.latency_ms / 1000.0
            for index, word in enumerate(completion.words):
                await trio.sleep_until(first_at + index * between_s)
                yield chunk({"content": word if index == 0 else f" {word}"})
                if fault == "hang_after_first_token":
                    await trio.sleep_forever()
                if index == 1 and fault in ("error_mid_stream", "cut_off"):
                    if fault == "error_mid_stream":
                        yield _sse(stream_error)
                    return
            for index, call in enumerate(tool_calls):
                arguments = call["function"]["arguments"]
                half = len(arguments) // 2
                head = {"id": call["id"], "type": "function"}
                function = {"name": call["function"]["name"], "arguments": arguments[:half]}
                yield chunk({"tool_calls": [{"index": index, **head, "function": function}]})
                rest = {"arguments": arguments[half:]}
                yield chunk({"tool_calls": [{"index": index, "function": rest}]})
            yield chunk({}, completion.finish_reason)
            if completion.include_usage and usage is not None:
                yield _sse(
                    {
                        "id": completion_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": completion.model,
                        "system_fingerprint": FINGERPRINT,
                        "choices": [],
                        "usage": usage,
                    }
                )
            record()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache"},
        )

    async def embeddings(request: Request) -> Response:
        server._count("requests")
        if not authorized(request):
            return unauthorized()
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(
                400, "the request body is not valid JSON", type_="invalid_request_error", code=None
            )
        texts = body.get("input") if isinstance(body, dict) else None
        if isinstance(texts, str):
            texts = [texts]
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts) or not model:
            return _error(
                400,
                "'model' and 'input' (a string or a list of strings) are required",
                type_="invalid_request_error",
                code=None,
            )
        if model not in config.models and not config.any_model:
            return _error(
                404,
                f"SIMULATED: the model {model!r} does not exist",
                type_="invalid_request_error",
                code="model_not_found",
            )
        server.recent_requests.append(body)
        fault = config.faults.get(model)
        if fault == "error_429":
            return _error(429, "SIMULATED: rate limit reached", type_="requests", code=None)
        if fault in ("error_500", "error_in_stream", "error_mid_stream"):
            return _error(
                500, "SIMULATED: the server had an error", type_="server_error", code=None
            )
        if fault in ("hang", "hang_after_first_token"):
            await trio.sleep_forever()
        server._count("completed")
        document: dict[str, Any] = {
            "object": "list",
            "model": model,
            "data": [
                {"object": "embedding", "index": i, "embedding": simulated_embedding(text)}
                for i, text in enumerate(texts)
            ],
        }
        if not config.omit_usage:
            tokens = sum(count_tokens(t) for t in texts)
            document["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        return JSONResponse(document)

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
        ]
    )
    return _mark_simulated(app)


def _sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


# -- serving -----------------------------------------------------------------------------------


async def serve_sim_llm(
    config: SimLLMConfig,
    *,
    task_status: trio.TaskStatus[SimLLMServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the simulated API until cancelled; ``task_status`` receives the
    :class:`SimLLMServer` (its ``url`` names the port actually bound)."""
    hypercorn_config = HypercornConfig()
    host = f"[{config.host}]" if ":" in config.host else config.host
    hypercorn_config.bind = [f"{host}:{config.port}"]
    hypercorn_config.accesslog = None
    hypercorn_config.errorlog = None
    hypercorn_config.graceful_timeout = 0.0
    # A load test opens thousands of connections; keep idle ones around as clients expect.
    hypercorn_config.keep_alive_timeout = 75.0
    hypercorn_config.backlog = 4096
    server = SimLLMServer(url="", config=config)
    app = create_app(server)
    async with trio.open_nursery() as nursery:
        urls: list[str] = await nursery.start(
            partial(hypercorn_serve, app, hypercorn_config, mode="asgi")  # type: ignore[arg-type]
        )
        server.url = f"{urls[0]}/v1"
        task_status.started(server)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m roost.dev.sim_llm",
        description="A SIMULATED OpenAI-compatible chat completions server (no model).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8471, help="port (default 8471; 0 = any)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="time to first token")
    parser.add_argument("--tokens-per-s", type=float, default=0.0, help="0 = no delay")
    parser.add_argument("--failure-rate", type=float, default=0.0, help="share answered 429/500")
    parser.add_argument("--api-key", help="require this bearer key")
    parser.add_argument(
        "--completion-tokens",
        type=int,
        default=DEFAULT_COMPLETION_TOKENS,
        help=f"reply length (default {DEFAULT_COMPLETION_TOKENS}; max_tokens may lower it)",
    )
    parser.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="NAME",
        help=f"a model name to serve; may be repeated (default {DEFAULT_MODEL})",
    )
    parser.add_argument("--seed", type=int, default=0, help="failure-injection seed")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = SimLLMConfig(
            host=args.host,
            port=args.port,
            latency_ms=args.latency_ms,
            tokens_per_s=args.tokens_per_s,
            failure_rate=args.failure_rate,
            api_key=args.api_key,
            completion_tokens=args.completion_tokens,
            models=tuple(args.models or (DEFAULT_MODEL,)),
            seed=args.seed,
        )
    except ValueError as exc:
        print(f"sim_llm: {exc}", file=sys.stderr)
        return 2

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            server: SimLLMServer = await nursery.start(serve_sim_llm, config)
            origin = server.url.removesuffix("/v1")
            print(f"simulated LLM listening on {origin}", file=sys.stderr, flush=True)
            print(
                f"SIMULATED - not a language model: models {', '.join(config.models)}; "
                f"first token after {config.latency_ms:g} ms, "
                f"{config.tokens_per_s:g} tokens/s (0 = instant), "
                f"failure rate {config.failure_rate:g}, "
                f"api key {'required' if config.api_key else 'not required'}",
                file=sys.stderr,
                flush=True,
            )
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
