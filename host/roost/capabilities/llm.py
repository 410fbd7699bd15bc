"""``llm``: chat completions over the OpenAI-compatible protocol (OpenAI, vLLM, Ollama,
llama.cpp's server). The endpoint and API key live in host settings (``ROOST_LLM_BASE_URL``,
``ROOST_LLM_API_KEY``); a guest never sees the key. Token usage is recorded per agent and
day and checked against the kind's ``budgets.llm_tokens_per_day``.

With tracing on, each call is a client span named ``chat {model}`` following the
OpenTelemetry GenAI semantic conventions, and the request carries its ``traceparent``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
from opentelemetry.trace import Span
from pydantic import Field

from ..errors import CapabilityDenied, CapabilityError, QuotaExceeded
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
    TurnView,
    host_call,
)
from ._ops import continuation_of, decode_request, encode_result


class LlmGrant(BaseGrant):
    models: list[str] = Field(min_length=1)
    """Models the agent may use; the first is the default."""
    max_tokens_per_call: int = Field(1024, ge=1)


@dataclass(slots=True)
class LlmTurn:
    reserved: int = 0
    """Tokens the handler's calls may use (their ``max_tokens``), counted against the daily
    budget from the moment each starts."""


class Llm(Capability[LlmTurn]):
    """Chat completions through the host's model provider. Each call reserves its
    ``max_tokens`` against the agent's daily token budget when it starts; what it really
    used is recorded when it completes."""

    name = "llm"
    Grant = LlmGrant
    grant: LlmGrant

    def __init__(self, grant: LlmGrant, services: HostServices) -> None:
        super().__init__(grant, services)
        self._client = services.http_client
        self._base_url = services.settings.llm_base_url
        self._api_key = services.settings.llm_api_key
        self._metrics = services.metrics

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
        model = fields.get("model") or self.grant.models[0]
        if model not in self.grant.models:
            raise CapabilityDenied(
                f"llm.chat: model {model!r} is not granted (llm grant models: "
                f"{', '.join(self.grant.models)})"
            )
        max_tokens = int(fields.get("max_tokens") or self.grant.max_tokens_per_call)
        if max_tokens > self.grant.max_tokens_per_call:
            raise QuotaExceeded(
                f"llm.chat: max_tokens={max_tokens} exceeds the llm grant "
                f"max_tokens_per_call = {self.grant.max_tokens_per_call}"
            )
        state = self.state(turn)
        budget = turn.budgets.llm_tokens_per_day
        if budget is not None:
            used = turn.reads.read_usage(turn.address, turn.day).llm_tokens + state.reserved
            turn.check_budget("llm_tokens_per_day", used, max_tokens, budget)
        state.reserved += max_tokens
        if not self._base_url:
            raise CapabilityError(
                "llm: the host has no model provider; set ROOST_LLM_BASE_URL "
                "(and ROOST_LLM_API_KEY)"
            )
        body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
        if fields.get("temperature") is not None:
            body["temperature"] = float(fields["temperature"])
        if fields.get("stream"):
            body["stream"] = True
        return turn.start_op(self.name, "chat", pack(body), continuation_of(fields))

    def op(self, call: str, request: bytes, context: OpContext) -> OpRunner:
        body: dict[str, Any] = unpack(request)
        stream = bool(body.pop("stream", False))
        model = body["model"]
        base_url = self._base_url or ""
        url = base_url.rstrip("/") + "/chat/completions"
        headers = {"Idempotency-Key": context.idempotency_key}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        client = self._client
        metrics = self._metrics
        trace = context.trace
        on_token = context.on_token
        address = context.address

        async def send(span: Span | None) -> dict[str, Any]:
            request_headers = dict(headers)
            inject_traceparent(request_headers, span)
            try:
                if stream:
                    return await _stream(client, url, request_headers, body, on_token)
                response = await client.post(url, json=body, headers=request_headers)
                _raise_for(response)
                return _parse(response.json(), model)
            except httpx.HTTPError as exc:
                raise CapabilityError(f"llm: provider unreachable: {exc}") from None

        async def run() -> OpResult:
            if trace is None:
                result = await send(None)
            else:
                with trace.client_span(f"chat {model}", _request_attributes(url, body)) as span:
                    try:
                        result = await send(span)
                    except CapabilityError as exc:
                        fail_span(span, exc)
                        raise
                    _record_response(span, result)
            usage = result["usage"]
            metrics.llm_tokens(address.kind, model, usage["input_tokens"], usage["output_tokens"])
            used = Usage(
                llm_input_tokens=usage["input_tokens"], llm_output_tokens=usage["output_tokens"]
            )
            return OpResult(encode_result(result), used)

        return run


def _request_attributes(url: str, body: dict[str, Any]) -> dict[str, Any]:
    parsed = httpx.URL(url)
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": "openai",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": body["model"],
        "gen_ai.request.max_tokens": body["max_tokens"],
        "server.address": parsed.host,
        "server.port": parsed.port or (443 if parsed.scheme == "https" else 80),
    }
    if "temperature" in body:
        attributes["gen_ai.request.temperature"] = body["temperature"]
    return attributes


def _record_response(span: Span, result: dict[str, Any]) -> None:
    span.set_attributes(
        {
            "gen_ai.response.model": result["model"],
            "gen_ai.usage.input_tokens": result["usage"]["input_tokens"],
            "gen_ai.usage.output_tokens": result["usage"]["output_tokens"],
        }
    )


def _raise_for(response: httpx.Response) -> None:
    if response.status_code >= 400:
        raise CapabilityError(
            f"llm: provider answered {response.status_code}: {response.text[:200]}"
        )


def _parse(data: dict[str, Any], model: str) -> dict[str, Any]:
    try:
        content = data["choices"][0]["message"]["content"]
        usage = data.get("usage") or {}
        return {
            "content": content,
            "model": data.get("model", model),
            "usage": {
                "input_tokens": int(usage.get("prompt_tokens", 0)),
                "output_tokens": int(usage.get("completion_tokens", 0)),
            },
        }
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise CapabilityError(f"llm: malformed provider response: {exc!r}") from None


async def _stream(
    client: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    body: dict[str, Any],
    on_token: Any,
) -> dict[str, Any]:
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    parts: list[str] = []
    usage: dict[str, Any] = {}
    model = body["model"]
    async with client.stream("POST", url, json=body, headers=headers) as response:
        if response.status_code >= 400:
            await response.aread()
            _raise_for(response)
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[len("data:") :].strip()
            if data == "[DONE]":
                continue  # read to the end: httpx's nested generators must finish
            try:
                chunk = json.loads(data)
            except json.JSONDecodeError:
                raise CapabilityError(f"llm: malformed stream chunk {data[:80]!r}") from None
            model = chunk.get("model", model)
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or []:
                token = (choice.get("delta") or {}).get("content")
                if token:
                    parts.append(token)
                    if on_token is not None:
                        on_token(token)
    return {
        "content": "".join(parts),
        "model": model,
        "usage": {
            "input_tokens": int(usage.get("prompt_tokens", 0)),
            "output_tokens": int(usage.get("completion_tokens", 0)),
        },
    }
