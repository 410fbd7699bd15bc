"""The OpenAI-compatible wire protocol of the ``llm`` capability, read honestly.

One call to one provider: build the request, send it, and read the answer into the result
an agent gets, or into a :class:`ProviderError` that says what went wrong. Nothing here
turns a failure into a success:

- an HTTP error status is an error with the provider's status, its error code and message
  (up to :data:`MAX_ERROR_CHARS`), ``retryable`` for 408, 429 and 5xx;
- a streamed request answered with anything but ``text/event-stream`` is an error;
- an error object in the stream (``data: {"error": ...}``, as gateways send a failure that
  happened after the headers) is an error, whatever came before it;
- a stream that ends before a ``finish_reason`` (cut off, empty, ``[DONE]`` only) is an
  error: its text is not an answer;
- usage the provider did not report (llama.cpp's server ignores
  ``stream_options.include_usage``) is estimated, never 0: :func:`estimate_tokens`.

Tool calls (the OpenAI tools protocol) come back parsed: ``{id, name, arguments}`` with the
arguments decoded from JSON; streamed deltas are assembled by their ``index``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..errors import ProviderError

MAX_ERROR_CHARS = 2000
"""How much of a provider's error message reaches the agent."""
MAX_ERROR_BODY_BYTES = 64 * 1024
"""How much of an error response is read to find its message."""
CHARS_PER_TOKEN = 4
"""The estimate of :func:`estimate_tokens`: about four characters per token (OpenAI's rule
of thumb for English text; tokenizers differ by tens of percent)."""
MESSAGE_OVERHEAD_TOKENS = 4
"""Tokens a chat message costs besides its text (role, separators), in the estimate."""
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})


def retryable_status(status: int) -> bool:
    """Whether a provider's HTTP status means the same call may succeed later (or on
    another provider): timeouts, conflicts, rate limits and server errors."""
    return status in RETRYABLE_STATUSES or status >= 500


def estimate_tokens(text: str) -> int:
    """Tokens in ``text`` as estimated when a provider reports none: its characters
    divided by :data:`CHARS_PER_TOKEN`, rounded up."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """The estimated input tokens of a chat request: its messages' text (tool calls and
    tool definitions included, as JSON) plus :data:`MESSAGE_OVERHEAD_TOKENS` per message."""
    total = 0
    for message in body.get("messages") or []:
        total += MESSAGE_OVERHEAD_TOKENS + estimate_tokens(_message_text(message))
    if body.get("tools"):
        total += estimate_tokens(json.dumps(body["tools"], separators=(",", ":")))
    return total


def _message_text(message: Any) -> str:
    if not isinstance(message, dict):
        return str(message)
    parts: list[str] = []
    content = message.get("content")
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, list):
        parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p)
    if message.get("tool_calls"):
        parts.append(json.dumps(message["tool_calls"], separators=(",", ":")))
    return "".join(parts)


# -- errors ----------------------------------------------------------------------------------


def error_from_body(
    provider: str, status: int, body: bytes, content_type: str, retry_after: str | None
) -> ProviderError:
    """The error of an HTTP error response: OpenAI's ``{"error": {message, type, code}}``
    when the body is one, else its text."""
    message, code = _error_fields(body, content_type)
    if not message:
        message = httpx.codes.get_reason_phrase(status) or "error"
    return ProviderError(
        f"llm: provider {provider!r} answered {status}"
        + (f" ({code})" if code else "")
        + f": {_clip(message)}",
        provider=provider,
        status=status,
        code=code,
        retryable=retryable_status(status),
        kind="http_error",
        retry_after_s=_retry_after(retry_after),
    )


def _error_fields(body: bytes, content_type: str) -> tuple[str, str | None]:
    text = body.decode("utf-8", "replace").strip()
    if "json" in content_type or text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return text, None
        return error_of(data)
    return text, None


def error_of(data: Any) -> tuple[str, str | None]:
    """The message and code of an error document (``{"error": {...}}``, ``{"error":
    "text"}``, ``{"detail": ...}`` or ``{"message": ...}``)."""
    if not isinstance(data, dict):
        return str(data), None
    error = data.get("error", data)
    if isinstance(error, str):
        return error, _code(data.get("code"))
    if isinstance(error, dict):
        message = error.get("message") or error.get("detail") or error.get("msg")
        code = error.get("code") or error.get("type")
        if message is None:
            message = json.dumps(error)
        return str(message), _code(code)
    return json.dumps(data), None


def _code(value: Any) -> str | None:
    return None if value is None else str(value)


def _clip(message: str) -> str:
    message = " ".join(message.split())
    if len(message) <= MAX_ERROR_CHARS:
        return message
    return message[: MAX_ERROR_CHARS - 1] + "…"


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None


def _status_of_code(code: str | None) -> int | None:
    if code is not None and code.isdigit() and 100 <= int(code) <= 599:
        return int(code)
    return None


_RETRYABLE_WORDS = ("rate", "overload", "server", "timeout", "unavailable", "capacity", "busy")


def stream_error(provider: str, data: Any, *, after_tokens: bool) -> ProviderError:
    """The error of an error object that arrived inside a stream."""
    message, code = error_of(data)
    status = _status_of_code(code)
    if status is not None:
        retryable = retryable_status(status)
    else:
        kind = json.dumps(data).lower()
        retryable = any(word in kind for word in _RETRYABLE_WORDS)
    where = "in the middle of its answer" if after_tokens else "in its stream"
    return ProviderError(
        f"llm: provider {provider!r} failed {where}"
        + (f" ({code})" if code else "")
        + f": {_clip(message)}",
        provider=provider,
        status=status,
        code=code,
        retryable=retryable,
        kind="stream_error",
    )


def malformed(provider: str, what: str, *, retryable: bool = False) -> ProviderError:
    return ProviderError(
        f"llm: provider {provider!r} sent {what}",
        provider=provider,
        retryable=retryable,
        kind="malformed",
    )


# -- results ---------------------------------------------------------------------------------


@dataclass
class ToolCall:
    """One tool call, as its streamed deltas arrive."""

    id: str = ""
    name: str = ""
    arguments: str = ""

    def result(self) -> dict[str, Any]:
        call: dict[str, Any] = {"id": self.id, "name": self.name, "arguments_json": self.arguments}
        try:
            parsed = json.loads(self.arguments) if self.arguments.strip() else {}
        except json.JSONDecodeError as exc:
            call["arguments"] = None
            call["arguments_error"] = f"the arguments are not JSON: {exc}"
        else:
            call["arguments"] = parsed
        return call

    def wire(self) -> dict[str, Any]:
        """The call as the assistant message that asked for it holds it."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass
class Answer:
    """A chat completion as it is read."""

    model: str
    content: list[str] = field(default_factory=list)
    tool_calls: dict[int, ToolCall] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    tokens_seen: bool = False
    """Content or tool-call deltas have arrived (a failure after them is mid-answer)."""

    @property
    def text(self) -> str:
        return "".join(self.content)

    def generated_text(self) -> str:
        """What the model produced, for the estimate of output tokens."""
        return self.text + "".join(c.name + c.arguments for c in self.tool_calls.values())

    def result(self, request: dict[str, Any], provider: str) -> dict[str, Any]:
        calls = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        message: dict[str, Any] = {"role": "assistant", "content": self.text or None}
        if calls:
            message["tool_calls"] = [c.wire() for c in calls]
        else:
            message["content"] = self.text
        return {
            "content": self.text,
            "tool_calls": [c.result() for c in calls],
            "finish_reason": self.finish_reason,
            "message": message,
            "model": self.model,
            "provider": provider,
            "usage": usage_of(self.usage, request, self.generated_text()),
        }


def usage_of(
    reported: dict[str, Any] | None, request: dict[str, Any], generated: str
) -> dict[str, Any]:
    """Token usage as reported, or estimated (``estimated: True``) when the provider
    reported none."""
    if reported and ("prompt_tokens" in reported or "completion_tokens" in reported):
        try:
            return {
                "input_tokens": int(reported.get("prompt_tokens") or 0),
                "output_tokens": int(reported.get("completion_tokens") or 0),
                "estimated": False,
            }
        except (TypeError, ValueError):
            pass
    return {
        "input_tokens": estimate_prompt_tokens(request),
        "output_tokens": estimate_tokens(generated),
        "estimated": True,
    }


def parse_completion(data: Any, request: dict[str, Any], provider: str) -> dict[str, Any]:
    """A non-streamed chat completion, or a ProviderError when it is not one."""
    if isinstance(data, dict) and "error" in data and "choices" not in data:
        raise stream_error(provider, data, after_tokens=False)
    try:
        choice = data["choices"][0]
        message = choice["message"]
        answer = Answer(model=str(data.get("model") or request["model"]))
        content = message.get("content")
        if content:
            answer.content.append(content if isinstance(content, str) else json.dumps(content))
        for index, call in enumerate(message.get("tool_calls") or []):
            function = call.get("function") or {}
            arguments = function.get("arguments")
            answer.tool_calls[index] = ToolCall(
                id=str(call.get("id") or f"call_{index}"),
                name=str(function.get("name") or ""),
                arguments=arguments if isinstance(arguments, str) else json.dumps(arguments),
            )
        answer.finish_reason = choice.get("finish_reason") or (
            "tool_calls" if answer.tool_calls else None
        )
        answer.usage = data.get("usage")
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise malformed(provider, f"a completion that is not one ({exc!r})") from None
    if answer.finish_reason is None:
        raise malformed(provider, "a completion without a finish_reason")
    return answer.result(request, provider)


class StreamReader:
    """Reads a chat completion's server-sent events into an :class:`Answer`."""

    def __init__(
        self,
        provider: str,
        request: dict[str, Any],
        on_token: Callable[[str], None] | None,
    ) -> None:
        self.provider = provider
        self.request = request
        self.answer = Answer(model=str(request["model"]))
        self.on_token = on_token
        self.done = False
        self._event = ""

    def feed(self, line: str) -> None:
        """One line of the stream (without its newline)."""
        if not line:
            self._event = ""
            return
        if line.startswith(":"):  # a comment: keep-alive
            return
        if line.startswith("event:"):
            self._event = line[len("event:") :].strip()
            return
        if not line.startswith("data:"):
            return
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            self.done = True
            return
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError:
            raise malformed(
                self.provider, f"a stream chunk that is not JSON: {data[:120]!r}"
            ) from None
        if self._event == "error" or (isinstance(chunk, dict) and "error" in chunk):
            raise stream_error(self.provider, chunk, after_tokens=self.answer.tokens_seen)
        if not isinstance(chunk, dict):
            raise malformed(self.provider, f"a stream chunk that is not an object: {data[:120]!r}")
        self._chunk(chunk)

    def _chunk(self, chunk: dict[str, Any]) -> None:
        answer = self.answer
        if chunk.get("model"):
            answer.model = str(chunk["model"])
        if chunk.get("usage"):
            answer.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            token = delta.get("content")
            if token:
                answer.tokens_seen = True
                answer.content.append(token)
                if self.on_token is not None:
                    self.on_token(token)
            for piece in delta.get("tool_calls") or []:
                answer.tokens_seen = True
                self._tool_delta(piece)
            if choice.get("finish_reason"):
                answer.finish_reason = str(choice["finish_reason"])

    def _tool_delta(self, piece: dict[str, Any]) -> None:
        calls = self.answer.tool_calls
        index = int(piece.get("index", len(calls)))
        call = calls.setdefault(index, ToolCall())
        if piece.get("id") and not call.id:
            call.id = str(piece["id"])
        function = piece.get("function") or {}
        if function.get("name") and not call.name:
            call.name = str(function["name"])
        arguments = function.get("arguments")
        if arguments:
            call.arguments += arguments if isinstance(arguments, str) else json.dumps(arguments)

    def result(self) -> dict[str, Any]:
        """The answer, once the stream ended; a ProviderError when it ended early."""
        answer = self.answer
        if answer.finish_reason is None:
            if not self.done:
                what = "ended" if answer.tokens_seen else "ended before any token"
                raise ProviderError(
                    f"llm: the stream of provider {self.provider!r} {what} without a "
                    "finish_reason or [DONE]: the answer is cut off",
                    provider=self.provider,
                    retryable=True,
                    kind="truncated",
                )
            raise malformed(self.provider, "a stream that ended with [DONE] and no finish_reason")
        for index, call in answer.tool_calls.items():
            if not call.id:
                call.id = f"call_{index}"
        return answer.result(self.request, self.provider)


def parse_embeddings(data: Any, request: dict[str, Any], provider: str) -> dict[str, Any]:
    """An embeddings response, or a ProviderError when it is not one."""
    if isinstance(data, dict) and "error" in data and "data" not in data:
        raise stream_error(provider, data, after_tokens=False)
    try:
        items = sorted(data["data"], key=lambda item: int(item.get("index", 0)))
        vectors = [[float(x) for x in item["embedding"]] for item in items]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise malformed(provider, f"an embeddings response that is not one ({exc!r})") from None
    inputs = request["input"] if isinstance(request["input"], list) else [request["input"]]
    if len(vectors) != len(inputs):
        raise malformed(provider, f"{len(vectors)} embeddings for {len(inputs)} inputs")
    reported = data.get("usage") or {}
    if "prompt_tokens" in reported:
        usage = {"input_tokens": int(reported["prompt_tokens"] or 0), "estimated": False}
    else:
        usage = {"input_tokens": sum(estimate_tokens(str(i)) for i in inputs), "estimated": True}
    usage["output_tokens"] = 0
    return {
        "embeddings": vectors,
        "model": str(data.get("model") or request["model"]),
        "provider": provider,
        "usage": usage,
    }
