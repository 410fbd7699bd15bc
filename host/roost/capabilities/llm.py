"""``llm``: chat completions (with tools) and embeddings over the OpenAI-compatible protocol
(OpenAI, LiteLLM, vLLM, Ollama, llama.cpp's server), through the host's providers.

The providers live in host settings (``HostConfig.providers()``: named providers from
``ROOST_LLM_PROVIDERS`` or ``ROOST_LLM_PROVIDERS_FILE``, and the ``ROOST_LLM_BASE_URL``
shorthand); a guest never sees a key. A call goes to the first provider serving its model
and falls back to the next on a retryable failure (429, 5xx, a timeout, a broken
connection) as long as no token of the answer reached the user yet. Each provider bounds
connecting, the wait for the first token and the whole call.

Results are honest (``_llm_wire``): an error anywhere is an op error carrying the
provider's status and code and whether retrying may help, never a cut-off answer; usage
a provider did not report is estimated from the text and marked ``estimated``. Token usage
is recorded per agent and day and checked against ``budgets.llm_tokens_per_day``.

Every call to a provider is a ``gen_ai.client.operation.duration`` observation and a
``roost_llm_calls_total`` count (by provider, model and outcome), a host log line when it
fails, and, with tracing on, a client span named ``{operation} {model}`` following the
OpenTelemetry GenAI semantic conventions; requests carry its ``traceparent``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Any

import httpx
import trio
from opentelemetry.trace import Span
from pydantic import Field, model_validator

from ..config import LlmProvider
from ..errors import CapabilityDenied, CapabilityError, ManifestError, ProviderError, QuotaExceeded
from ..payload import pack, unpack
from ..store.protocol import Usage
from ..telemetry import HostMetrics, LlmCall, fail_span, inject_traceparent
from . import _llm_wire as wire
from ._base import (
    BaseGrant,
    Capability,
    HostServices,
    OpContext,
    OpFailed,
    OpResult,
    OpRunner,
    TurnView,
    host_call,
)
from ._ops import continuation_of, decode_request, encode_result

logger = logging.getLogger("roost.llm")

MAX_RESPONSE_BYTES = 32 * 1024 * 1024
"""The largest answer read from a provider (embeddings of many inputs are the large ones)."""
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TOOL_CHOICES = ("auto", "none", "required")


class LlmGrant(BaseGrant):
    models: list[str] = Field(default_factory=list)
    """Chat models the agent may use; the first is the default."""
    embedding_models: list[str] = Field(default_factory=list)
    """Embedding models the agent may use (``ctx.llm.embed``); the first is the default."""
    max_tokens_per_call: int = Field(1024, ge=1)
    max_tools: int = Field(64, ge=0)
    """Tools one chat call may offer the model."""
    max_embedding_inputs: int = Field(256, ge=1)
    """Texts one embed call may embed."""

    @model_validator(mode="after")
    def _some_model(self) -> LlmGrant:
        if not self.models and not self.embedding_models:
            raise ValueError("grant at least one model (models or embedding_models)")
        return self


@dataclass(slots=True)
class LlmTurn:
    reserved: int = 0
    """Tokens the handler's calls may use (their ``max_tokens``), counted against the daily
    budget from the moment each starts."""


class Llm(Capability[LlmTurn]):
    """Chat completions (with tools) and embeddings through the host's model providers.
    Each chat call reserves its ``max_tokens`` against the agent's daily token budget when
    it starts; what it really used is recorded when it completes."""

    name = "llm"
    Grant = LlmGrant
    grant: LlmGrant

    def __init__(self, grant: LlmGrant, services: HostServices) -> None:
        super().__init__(grant, services)
        self._client = services.http_client
        self._providers = services.settings.providers()
        self._metrics = services.metrics
        if self._providers:
            unserved = [
                m
                for m in (*grant.models, *grant.embedding_models)
                if not any(p.serves(m) for p in self._providers)
            ]
            if unserved:
                raise ManifestError(
                    f"capabilities.llm: no model provider of this host serves "
                    f"{', '.join(map(repr, unserved))} (providers: "
                    f"{', '.join(p.name for p in self._providers)})"
                )

    # -- host calls ------------------------------------------------------------------------

    def begin_turn(self, turn: TurnView) -> LlmTurn:
        return LlmTurn()

    def started_cost(self, state: LlmTurn) -> Usage:
        return Usage(llm_output_tokens=state.reserved)  # the core deducts what was recorded

    @host_call("chat")
    def chat(self, turn: TurnView, request: bytes) -> int:
        fields = decode_request("llm.chat", request)
        messages = fields.get("messages")
        if not isinstance(messages, list) or not messages:
            raise CapabilityDenied("llm.chat needs a non-empty list of messages")
        model = self._model(fields, self.grant.models, "models", "llm.chat")
        max_tokens = int(fields.get("max_tokens") or self.grant.max_tokens_per_call)
        if max_tokens > self.grant.max_tokens_per_call:
            raise QuotaExceeded(
                f"llm.chat: max_tokens={max_tokens} exceeds the llm grant "
                f"max_tokens_per_call = {self.grant.max_tokens_per_call}"
            )
        self._reserve(turn, max_tokens)
        body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
        if fields.get("temperature") is not None:
            body["temperature"] = float(fields["temperature"])
        tools = fields.get("tools")
        if tools:
            body["tools"] = self._checked_tools(tools)
            choice = fields.get("tool_choice")
            if choice is not None:
                body["tool_choice"] = _checked_tool_choice(choice, body["tools"])
            if fields.get("parallel_tool_calls") is not None:
                body["parallel_tool_calls"] = bool(fields["parallel_tool_calls"])
        if isinstance(fields.get("response_format"), dict):
            body["response_format"] = fields["response_format"]
        if fields.get("stream"):
            body["stream"] = True
        return turn.start_op(self.name, "chat", pack(body), continuation_of(fields))

    @host_call("embed")
    def embed(self, turn: TurnView, request: bytes) -> int:
        fields = decode_request("llm.embed", request)
        texts = fields.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if (
            not isinstance(texts, list)
            or not texts
            or not all(isinstance(t, str) and t for t in texts)
        ):
            raise CapabilityDenied("llm.embed needs a non-empty text or list of texts")
        if len(texts) > self.grant.max_embedding_inputs:
            raise QuotaExceeded(
                f"llm.embed: {len(texts)} inputs exceed the llm grant "
                f"max_embedding_inputs = {self.grant.max_embedding_inputs}"
            )
        model = self._model(fields, self.grant.embedding_models, "embedding_models", "llm.embed")
        self._reserve(turn, 0)
        body = {"model": model, "input": texts}
        return turn.start_op(self.name, "embed", pack(body), continuation_of(fields))

    def _model(self, fields: dict[str, Any], granted: list[str], key: str, call: str) -> str:
        if not granted:
            raise CapabilityDenied(f"{call}: the llm grant has no {key}")
        model = fields.get("model") or granted[0]
        if model not in granted:
            raise CapabilityDenied(
                f"{call}: model {model!r} is not granted (llm grant {key}: {', '.join(granted)})"
            )
        if not self._providers:
            raise CapabilityError(
                "llm: the host has no model provider; set ROOST_LLM_BASE_URL (and "
                "ROOST_LLM_API_KEY), or ROOST_LLM_PROVIDERS_FILE"
            )
        return str(model)

    def _reserve(self, turn: TurnView, tokens: int) -> None:
        """Count ``tokens`` against the day's budget from now (refused past it)."""
        state = self.state(turn)
        budget = turn.budgets.llm_tokens_per_day
        if budget is not None:
            used = turn.reads.read_usage(turn.address, turn.day).llm_tokens + state.reserved
            turn.check_budget("llm_tokens_per_day", used, tokens, budget)
        state.reserved += tokens

    def _checked_tools(self, tools: Any) -> list[dict[str, Any]]:
        if not isinstance(tools, list):
            raise CapabilityDenied("llm.chat: tools must be a list")
        if len(tools) > self.grant.max_tools:
            raise QuotaExceeded(
                f"llm.chat: {len(tools)} tools exceed the llm grant max_tools = "
                f"{self.grant.max_tools}"
            )
        checked: list[dict[str, Any]] = []
        for tool in tools:
            if not isinstance(tool, dict) or tool.get("type", "function") != "function":
                tool = None
            function = None if tool is None else tool.get("function", tool)
            if not isinstance(function, dict):
                raise CapabilityDenied(
                    'llm.chat: each tool is {"type": "function", "function": {"name", '
                    '"description", "parameters"}}'
                )
            name = function.get("name")
            if not isinstance(name, str) or not _TOOL_NAME.match(name):
                raise CapabilityDenied(
                    f"llm.chat: tool name {name!r} must be 1-64 letters, digits, _ or -"
                )
            parameters = function.get("parameters", {"type": "object", "properties": {}})
            if not isinstance(parameters, dict):
                raise CapabilityDenied(f"llm.chat: tool {name}: parameters must be a JSON schema")
            spec: dict[str, Any] = {"name": name, "parameters": parameters}
            if function.get("description"):
                spec["description"] = str(function["description"])
            if function.get("strict") is not None:
                spec["strict"] = bool(function["strict"])
            checked.append({"type": "function", "function": spec})
        names = [t["function"]["name"] for t in checked]
        if len(set(names)) != len(names):
            raise CapabilityDenied("llm.chat: tool names must be unique")
        return checked

    # -- ops -------------------------------------------------------------------------------

    def op(self, call: str, request: bytes, context: OpContext) -> OpRunner:
        body: dict[str, Any] = unpack(request)
        operation = "chat" if call == "chat" else "embeddings"
        calls = _ProviderCalls(
            client=self._client,
            metrics=self._metrics,
            providers=[p for p in self._providers if p.serves(body["model"])],
            operation=operation,
            context=context,
        )

        async def run() -> OpResult:
            return await calls.run(body)

        return run


class _ProviderCalls:
    """One op's calls: to each provider serving its model in turn, until one answers or a
    failure is not worth another provider."""

    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        metrics: HostMetrics,
        providers: list[LlmProvider],
        operation: str,
        context: OpContext,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._providers = providers
        self._operation = operation
        self._context = context

    async def run(self, body: dict[str, Any]) -> OpResult:
        model = body["model"]
        failures: list[ProviderError] = []
        used = Usage()
        if not self._providers:
            raise CapabilityError(f"llm: no model provider of this host serves {model!r}")
        for index, provider in enumerate(self._providers):
            started = time.perf_counter()
            try:
                result = await self._attempt(provider, body)
            except _AttemptFailed as failed:
                seconds = time.perf_counter() - started
                exc = failed.error
                failures.append(exc)
                used += failed.usage
                self._record(provider, model, seconds, exc, None)
                later = self._providers[index + 1 :]
                fall_back = exc.retryable and bool(later) and not failed.streamed
                self._log(provider, model, seconds, exc, later[0].name if fall_back else None)
                if not fall_back:
                    break
                continue
            seconds = time.perf_counter() - started
            self._record(provider, model, seconds, None, result)
            usage = result["usage"]
            used += Usage(
                llm_input_tokens=usage["input_tokens"], llm_output_tokens=usage["output_tokens"]
            )
            return OpResult(encode_result(result), used)
        raise _failed(failures, used)

    # -- one provider ----------------------------------------------------------------------

    async def _attempt(self, provider: LlmProvider, body: dict[str, Any]) -> dict[str, Any]:
        trace = self._context.trace
        if trace is None:
            return await self._send(provider, body, None)
        name = f"{self._operation} {body['model']}"
        with trace.client_span(name, _request_attributes(provider, self._operation, body)) as span:
            try:
                result = await self._send(provider, body, span)
            except _AttemptFailed as failed:
                fail_span(span, _error_type(failed.error))
                raise
            _record_response(span, result)
            return result

    async def _send(
        self, provider: LlmProvider, body: dict[str, Any], span: Span | None
    ) -> dict[str, Any]:
        stream = bool(body.get("stream"))
        request = {k: v for k, v in body.items() if k != "stream"}
        request["model"] = provider.upstream_model(body["model"])
        path = "/chat/completions" if self._operation == "chat" else "/embeddings"
        if stream:
            request["stream"] = True
            request["stream_options"] = {"include_usage": True}
        url = provider.base_url.rstrip("/") + path
        headers = {"Idempotency-Key": self._context.idempotency_key}
        if provider.api_key:
            headers["Authorization"] = f"Bearer {provider.api_key}"
        inject_traceparent(headers, span)
        timeout = httpx.Timeout(
            provider.total_timeout_s,
            connect=provider.connect_timeout_s,
            pool=provider.connect_timeout_s,
        )
        reader = wire.StreamReader(provider.name, request, self._context.on_token)
        waiting = trio.CancelScope(deadline=trio.current_time() + provider.first_token_timeout_s)
        try:
            with trio.move_on_after(provider.total_timeout_s) as whole:
                with waiting:
                    async with self._client.stream(
                        "POST", url, json=request, headers=headers, timeout=timeout
                    ) as response:
                        return await self._read(provider, response, request, reader, waiting)
        except httpx.TimeoutException as exc:
            raise _AttemptFailed(_timeout(provider, type(exc).__name__), reader) from None
        except httpx.HTTPError as exc:
            error = ProviderError(
                f"llm: provider {provider.name!r} unreachable or connection broken: "
                f"{type(exc).__name__}: {exc or 'no detail'}",
                provider=provider.name,
                retryable=True,
                kind="unreachable",
            )
            raise _AttemptFailed(error, reader) from None
        except ProviderError as exc:
            raise _AttemptFailed(exc, reader) from None
        if waiting.cancelled_caught:
            what = f"no first token within {provider.first_token_timeout_s:g} s"
        else:
            assert whole.cancelled_caught
            what = f"not finished within {provider.total_timeout_s:g} s"
        raise _AttemptFailed(_timeout(provider, what), reader)

    async def _read(
        self,
        provider: LlmProvider,
        response: httpx.Response,
        request: dict[str, Any],
        reader: wire.StreamReader,
        waiting: trio.CancelScope,
    ) -> dict[str, Any]:
        content_type = response.headers.get("content-type", "")
        if response.status_code >= 400:
            raise wire.error_from_body(
                provider.name,
                response.status_code,
                await _read_bounded(response, wire.MAX_ERROR_BODY_BYTES),
                content_type,
                response.headers.get("retry-after"),
            )
        if not request.get("stream"):
            waiting.deadline = math.inf  # a whole answer comes with its headers
            raw = await _read_bounded(response, MAX_RESPONSE_BYTES)
            try:
                data = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise wire.malformed(
                    provider.name,
                    f"an answer that is not JSON ({content_type or 'no content type'}, "
                    f"{len(raw)} bytes)",
                ) from None
            if self._operation == "chat":
                return wire.parse_completion(data, request, provider.name)
            return wire.parse_embeddings(data, request, provider.name)
        if not content_type.startswith("text/event-stream"):
            raw = await _read_bounded(response, wire.MAX_ERROR_BODY_BYTES)
            message, code = wire.error_of(_json_or_text(raw))
            raise ProviderError(
                f"llm: provider {provider.name!r} answered a streamed request with "
                f"{content_type or 'no content type'} instead of an event stream"
                + (f": {message[:300]}" if raw.strip() else " (empty body)"),
                provider=provider.name,
                status=response.status_code,
                code=code,
                kind="malformed",
            )
        failed: ProviderError | None = None
        async for line in response.aiter_lines():
            if failed is not None:
                continue  # read to the end: httpx's nested generators must finish
            try:
                reader.feed(line)
            except ProviderError as exc:
                failed = exc
            if reader.answer.tokens_seen or reader.answer.finish_reason:
                waiting.deadline = math.inf
        if failed is not None:
            raise failed
        return reader.result()

    # -- telemetry -------------------------------------------------------------------------

    def _record(
        self,
        provider: LlmProvider,
        model: str,
        seconds: float,
        error: ProviderError | None,
        result: dict[str, Any] | None,
    ) -> None:
        url = httpx.URL(provider.base_url)
        usage = (result or {}).get("usage") or {}
        self._metrics.llm_call(
            LlmCall(
                kind=self._context.address.kind,
                provider=provider.name,
                operation=self._operation,
                model=model,
                seconds=seconds,
                error_type=None if error is None else _error_type(error),
                response_model=None if result is None else result.get("model"),
                input_tokens=int(usage.get("input_tokens", 0)),
                output_tokens=int(usage.get("output_tokens", 0)),
                estimated=bool(usage.get("estimated", False)),
                server_address=url.host,
                server_port=url.port or (443 if url.scheme == "https" else 80),
            )
        )

    def _log(
        self,
        provider: LlmProvider,
        model: str,
        seconds: float,
        error: ProviderError,
        next_provider: str | None,
    ) -> None:
        address = self._context.address
        logger.warning(
            "agent %s: llm %s %s on provider %s failed after %.2f s (%s)%s: %s",
            address,
            self._operation,
            model,
            provider.name,
            seconds,
            _error_type(error),
            f"; falling back to {next_provider}" if next_provider else "",
            error,
            extra={
                "agent_kind": address.kind,
                "agent_id": address.id,
                "llm_provider": provider.name,
                "llm_model": model,
                "llm_status": error.status,
                "llm_error_type": _error_type(error),
            },
        )


def _error_type(error: ProviderError) -> str:
    """``error.type`` of a failed call: the HTTP status, or what went wrong."""
    return str(error.status) if error.kind == "http_error" and error.status else error.kind


def _timeout(provider: LlmProvider, what: str) -> ProviderError:
    return ProviderError(
        f"llm: provider {provider.name!r} timed out: {what}",
        provider=provider.name,
        retryable=True,
        kind="timeout",
    )


class _AttemptFailed(Exception):
    """A call to one provider failed: the error, what the attempt used before it failed
    (tokens of an answer that broke off, estimated unless reported) and whether any of its
    tokens reached the user (then no other provider is tried)."""

    def __init__(self, error: ProviderError, reader: wire.StreamReader) -> None:
        super().__init__(str(error))
        self.error = error
        self.usage = Usage()
        self.streamed = False
        answer = reader.answer
        if answer.tokens_seen:
            usage = wire.usage_of(answer.usage, reader.request, answer.generated_text())
            self.usage = Usage(
                llm_input_tokens=usage["input_tokens"], llm_output_tokens=usage["output_tokens"]
            )
            self.streamed = bool(answer.content) and reader.on_token is not None


def _failed(failures: list[ProviderError], used: Usage) -> OpFailed:
    """The op's error once no provider answered: the last failure, with every attempt."""
    last = failures[-1]
    message = str(last)
    if len(failures) > 1:
        tried = "; ".join(f"{f.provider}: {_error_type(f)}" for f in failures[:-1])
        message = f"{message} (after {tried})"
    details = {
        **last.details(),
        "attempts": [
            {"provider": f.provider, "type": f.kind, "status": f.status, "code": f.code}
            for f in failures
        ],
    }
    return OpFailed(message, used, details)


async def _read_bounded(response: httpx.Response, limit: int) -> bytes:
    """The body, cut at ``limit`` bytes (the rest is read and dropped: httpx's nested
    generators must finish)."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        if len(body) < limit:
            body += chunk[: limit - len(body)]
    return bytes(body)


def _json_or_text(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return raw.decode("utf-8", "replace")


def _checked_tool_choice(choice: Any, tools: list[dict[str, Any]]) -> Any:
    names = {t["function"]["name"] for t in tools}
    if isinstance(choice, str):
        if choice in _TOOL_CHOICES:
            return choice
        if choice in names:
            return {"type": "function", "function": {"name": choice}}
    elif isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if name in names:
            return {"type": "function", "function": {"name": name}}
    raise CapabilityDenied(
        f"llm.chat: tool_choice must be auto, none, required or the name of an offered "
        f"tool, not {choice!r}"
    )


def _request_attributes(
    provider: LlmProvider, operation: str, body: dict[str, Any]
) -> dict[str, Any]:
    url = httpx.URL(provider.base_url)
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": provider.name,
        "gen_ai.request.model": body["model"],
        "server.address": url.host,
        "server.port": url.port or (443 if url.scheme == "https" else 80),
    }
    if "max_tokens" in body:
        attributes["gen_ai.request.max_tokens"] = body["max_tokens"]
    if "temperature" in body:
        attributes["gen_ai.request.temperature"] = body["temperature"]
    return attributes


def _record_response(span: Span, result: dict[str, Any]) -> None:
    usage = result["usage"]
    attributes: dict[str, Any] = {
        "gen_ai.response.model": result["model"],
        "gen_ai.usage.input_tokens": usage["input_tokens"],
        "gen_ai.usage.output_tokens": usage["output_tokens"],
        "roost.llm.usage_estimated": usage["estimated"],
    }
    if result.get("finish_reason"):
        attributes["gen_ai.response.finish_reasons"] = [result["finish_reason"]]
    span.set_attributes(attributes)
