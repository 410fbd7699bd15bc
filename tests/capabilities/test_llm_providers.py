"""The llm capability's calls to providers, op by op (no guest): honest results against the
SIMULATED provider's faults, estimated usage, timeouts, routing and fallback, tool calls,
embeddings, metrics and host logs."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio

from roost import HostConfig, ManifestError
from roost.address import AgentAddress
from roost.capabilities import (
    Capability,
    HostServices,
    OpContext,
    OpFailed,
    bind_capabilities,
    op_error_text,
)
from roost.dev.sim_llm import SimFault, SimLLMServer
from roost.errors import ConfigError
from roost.payload import pack, unpack
from roost.store import Usage
from roost.telemetry import HostMetrics

from ..conftest import sim_llm

AGENT = AgentAddress("caller", "a")
FAULTS: dict[str, SimFault] = {
    "mid": "error_mid_stream",
    "in-stream": "error_in_stream",
    "cut": "cut_off",
    "empty": "empty",
    "not-sse": "not_sse",
    "hang": "hang",
    "hang-later": "hang_after_first_token",
    "r429": "error_429",
    "r500": "error_500",
}
MESSAGES = [{"role": "user", "content": "hello there world"}]


@asynccontextmanager
async def llm_capability(
    providers: list[dict[str, Any]], models: list[str], **grant: Any
) -> AsyncIterator[tuple[Capability[Any], HostMetrics]]:
    async with httpx.AsyncClient() as client:
        metrics = HostMetrics()
        services = HostServices(
            settings=HostConfig(llm_providers=providers),
            http_client=client,
            metrics=metrics,
            ask=None,  # type: ignore[arg-type]
        )
        yield bind_capabilities({"llm": {"models": models, **grant}}, services)["llm"], metrics


async def chat(
    llm: Capability[Any], model: str, *, stream: bool = False, tokens: list[str] | None = None
) -> tuple[dict[str, Any], Usage | None]:
    body: dict[str, Any] = {"model": model, "messages": MESSAGES, "max_tokens": 5}
    if stream:
        body["stream"] = True
    context = OpContext(
        AGENT, idempotency_key="m-1/1", on_token=None if tokens is None else tokens.append
    )
    result = await llm.op("chat", pack(body), context)()
    return unpack(result.value), result.usage


async def failure(llm: Capability[Any], model: str, **kwargs: Any) -> tuple[dict[str, Any], Usage]:
    """The error the guest gets (its JSON details) and the usage the failed op recorded."""
    with pytest.raises(OpFailed) as caught:
        await chat(llm, model, **kwargs)
    return json.loads(op_error_text(caught.value)), caught.value.usage


@asynccontextmanager
async def faulty() -> AsyncIterator[SimLLMServer]:
    async with sim_llm(models=("ok", *FAULTS), faults=FAULTS, completion_tokens=5) as server:
        yield server


def provider(name: str, server: SimLLMServer, models: Any, **timeouts: float) -> dict[str, Any]:
    return {"name": name, "base_url": server.url, "models": models, **timeouts}


async def test_a_good_answer_streamed_or_not(caplog: pytest.LogCaptureFixture) -> None:
    async with (
        faulty() as server,
        llm_capability([provider("sim", server, ["ok"])], ["ok"]) as (
            llm,
            metrics,
        ),
    ):
        tokens: list[str] = []
        streamed, usage = await chat(llm, "ok", stream=True, tokens=tokens)
        whole, _ = await chat(llm, "ok")
    assert streamed["content"] == whole["content"] == "hello there world hello there"
    assert "".join(tokens) == streamed["content"]
    assert streamed["finish_reason"] == whole["finish_reason"] == "stop"
    assert streamed["tool_calls"] == whole["tool_calls"] == []
    assert streamed["message"] == {"role": "assistant", "content": streamed["content"]}
    assert streamed["usage"] == {"input_tokens": 3, "output_tokens": 5, "estimated": False}
    assert streamed["provider"] == "sim"
    assert usage == Usage(llm_input_tokens=3, llm_output_tokens=5)
    assert metrics.llm_calls() == {"sim|ok|ok": 2}
    assert metrics.llm_call_seconds()["sim|ok"].count == 2
    assert not [r for r in caplog.records if r.name == "roost.llm"]
    [request] = [r for r in server.recent_requests if r.get("stream")]
    assert request["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("model", "kind", "retryable", "code", "used"),
    [
        ("mid", "stream_error", True, "upstream_error", True),
        ("in-stream", "stream_error", True, "upstream_error", False),
        ("cut", "truncated", True, None, True),
        ("empty", "truncated", True, None, False),
        ("not-sse", "malformed", False, None, False),
    ],
)
async def test_a_broken_stream_is_an_error_never_a_short_answer(
    model: str, kind: str, retryable: bool, code: str | None, used: bool
) -> None:
    async with (
        faulty() as server,
        llm_capability([provider("sim", server, list(FAULTS))], list(FAULTS)) as (llm, metrics),
    ):
        details, usage = await failure(llm, model, stream=True, tokens=[])
    assert details["type"] == kind
    assert details["provider"] == "sim"
    assert details["retryable"] is retryable
    assert details["code"] == code
    assert details["message"].startswith("llm: ")
    assert details["attempts"] == [
        {"provider": "sim", "type": kind, "status": details["status"], "code": code}
    ]
    # Tokens generated before the stream broke are counted (estimated), never lost.
    assert (usage.llm_output_tokens > 0) is used
    assert metrics.llm_calls() == {f"sim|{model}|{kind}": 1}


async def test_an_http_error_carries_status_code_and_the_whole_message() -> None:
    async with (
        faulty() as server,
        llm_capability([provider("sim", server, ["r429", "r500"])], ["r429", "r500"]) as (
            llm,
            metrics,
        ),
    ):
        limited, _ = await failure(llm, "r429")
        broken, _ = await failure(llm, "r500", stream=True)
    assert limited["status"] == 429
    assert limited["code"] == "rate_limit_exceeded"
    assert limited["retryable"] is True
    assert limited["retry_after_s"] == 2.0
    assert limited["message"] == (
        "llm: provider 'sim' answered 429 (rate_limit_exceeded): SIMULATED: rate limit reached"
    )
    assert broken["status"] == 500 and broken["retryable"] is True
    assert metrics.llm_calls() == {"sim|r429|429": 1, "sim|r500|500": 1}


async def test_usage_a_provider_does_not_report_is_estimated() -> None:
    async with (
        sim_llm(completion_tokens=5, omit_usage=True, any_model=True) as server,
        llm_capability([provider("llama", server, ["*"])], ["local"]) as (llm, metrics),
    ):
        streamed, usage = await chat(llm, "local", stream=True)
        whole, _ = await chat(llm, "local")
    # "hello there world hello there": 29 characters, 8 tokens at 4 characters a token;
    # the prompt: 17 characters (5 tokens) and 4 tokens of message overhead.
    assert (
        streamed["usage"]
        == whole["usage"]
        == {
            "input_tokens": 9,
            "output_tokens": 8,
            "estimated": True,
        }
    )
    assert usage == Usage(llm_input_tokens=9, llm_output_tokens=8)
    assert metrics.tokens() == {"caller/input": 18, "caller/output": 16}


async def test_timeouts_first_token_and_total() -> None:
    timeouts = {"first_token_timeout_s": 0.3, "total_timeout_s": 0.8}
    async with (
        faulty() as server,
        llm_capability(
            [provider("sim", server, ["hang", "hang-later"], **timeouts)], ["hang", "hang-later"]
        ) as (llm, metrics),
    ):
        with trio.fail_after(5):
            silent, _ = await failure(llm, "hang", stream=True)
            stalled, usage = await failure(llm, "hang-later", stream=True, tokens=[])
            whole, _ = await failure(llm, "hang")
    assert silent["type"] == stalled["type"] == whole["type"] == "timeout"
    assert silent["message"] == "llm: provider 'sim' timed out: no first token within 0.3 s"
    assert stalled["message"] == "llm: provider 'sim' timed out: not finished within 0.8 s"
    assert silent["retryable"] is stalled["retryable"] is True
    assert usage.llm_output_tokens == 2  # "hello": the one token that came, estimated
    assert metrics.llm_calls() == {"sim|hang|timeout": 2, "sim|hang-later|timeout": 1}


async def test_fallback_to_the_next_provider_on_429_5xx_and_timeouts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with faulty() as bad, sim_llm(models=("good",), completion_tokens=5) as good:
        providers = [
            provider("primary", bad, ["r429", "r500", "hang"], first_token_timeout_s=0.3),
            provider("backup", good, {"r429": "good", "r500": "good", "hang": "good"}),
        ]
        async with llm_capability(providers, ["r429", "r500", "hang"]) as (llm, metrics):
            with caplog.at_level(logging.WARNING, logger="roost.llm"):
                for model in ("r429", "r500", "hang"):
                    answer, _ = await chat(llm, model, stream=True, tokens=[])
                    assert answer["provider"] == "backup"
                    assert answer["content"] == "hello there world hello there"
    assert [r["model"] for r in good.recent_requests] == ["good"] * 3  # the provider's name
    assert metrics.llm_calls() == {
        "primary|r429|429": 1,
        "primary|r500|500": 1,
        "primary|hang|timeout": 1,
        "backup|r429|ok": 1,
        "backup|r500|ok": 1,
        "backup|hang|ok": 1,
    }
    logged = [r for r in caplog.records if r.name == "roost.llm"]
    assert len(logged) == 3
    assert (
        logged[0]
        .getMessage()
        .startswith("agent caller/a: llm chat r429 on provider primary failed after")
    )
    assert "(429); falling back to backup: llm: provider 'primary' answered 429" in (
        logged[0].getMessage()
    )
    assert logged[0].__dict__["llm_provider"] == "primary"
    assert logged[0].__dict__["llm_status"] == 429


async def test_no_fallback_on_client_errors_or_after_tokens_reached_the_user() -> None:
    async with faulty() as bad, sim_llm(models=("good",), completion_tokens=5) as good:
        providers = [
            provider("primary", bad, ["mid", "missing"]),
            provider("backup", good, {"mid": "good", "missing": "good"}),
        ]
        async with llm_capability(providers, ["mid", "missing"]) as (llm, metrics):
            unknown, _ = await failure(llm, "missing")  # 404 model_not_found: not retryable
            broken, _ = await failure(llm, "mid", stream=True, tokens=[])
            quiet, _ = await chat(llm, "mid", stream=True)  # nobody was streamed to
    assert unknown["status"] == 404 and unknown["retryable"] is False
    assert broken["type"] == "stream_error" and broken["retryable"] is True
    assert quiet["provider"] == "backup"
    assert metrics.llm_calls()["primary|mid|stream_error"] == 2
    assert "backup|missing|ok" not in metrics.llm_calls()


async def test_every_provider_failing_names_each_attempt() -> None:
    async with faulty() as first, faulty() as second:
        providers = [
            provider("one", first, ["r429"]),
            provider("two", second, {"r429": "r500"}),
        ]
        async with llm_capability(providers, ["r429"]) as (llm, _):
            details, _ = await failure(llm, "r429")
    assert details["provider"] == "two" and details["status"] == 500
    assert details["message"].endswith("(after one: 429)")
    assert [(a["provider"], a["status"]) for a in details["attempts"]] == [
        ("one", 429),
        ("two", 500),
    ]


async def test_routing_by_model_and_keys_per_provider() -> None:
    async with (
        sim_llm(models=("a",), api_key="key-a") as server_a,
        sim_llm(models=("b-upstream",), api_key="key-b") as server_b,
    ):
        providers = [
            {**provider("pa", server_a, ["a"]), "api_key": "key-a"},
            {**provider("pb", server_b, {"b": "b-upstream"}), "api_key": "key-b"},
        ]
        async with llm_capability(providers, ["a", "b"]) as (llm, _):
            via_a, _ = await chat(llm, "a")
            via_b, _ = await chat(llm, "b")
    assert (via_a["provider"], via_b["provider"]) == ("pa", "pb")
    assert via_b["model"] == "b-upstream"
    assert server_a.statistics().unauthorized == server_b.statistics().unauthorized == 0


async def test_a_granted_model_no_provider_serves_is_refused_at_deploy() -> None:
    async with sim_llm() as server:
        with pytest.raises(ManifestError, match=r"no model provider of this host serves 'gpt-x'"):
            async with llm_capability([provider("sim", server, ["roost-sim"])], ["gpt-x"]):
                pass


async def test_tool_calls_parsed_streamed_or_not() -> None:
    tools = [
        {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}},
    ]
    messages = [{"role": "user", "content": 'add {"a": 2, "b": [3, 4]} then now'}]
    async with (
        sim_llm() as server,
        llm_capability([provider("sim", server, ["*"])], ["roost-sim"]) as (llm, _),
    ):
        results = []
        for stream in (False, True):
            body = {"model": "roost-sim", "messages": messages, "max_tokens": 5, "tools": tools}
            if stream:
                body["stream"] = True
            done = await llm.op("chat", pack(body), OpContext(AGENT, idempotency_key="k"))()
            results.append(unpack(done.value))
    whole, streamed = results
    assert (
        whole["tool_calls"]
        == streamed["tool_calls"]
        == [
            {
                "id": "call_sim_1",
                "name": "add",
                "arguments": {"a": 2, "b": [3, 4]},
                "arguments_json": '{"a": 2, "b": [3, 4]}',
            },
            {"id": "call_sim_2", "name": "now", "arguments": {}, "arguments_json": "{}"},
        ]
    )
    assert whole["finish_reason"] == streamed["finish_reason"] == "tool_calls"
    assert streamed["message"] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_sim_1",
                "type": "function",
                "function": {"name": "add", "arguments": '{"a": 2, "b": [3, 4]}'},
            },
            {
                "id": "call_sim_2",
                "type": "function",
                "function": {"name": "now", "arguments": "{}"},
            },
        ],
    }


async def test_embeddings_on_the_same_routing() -> None:
    async with (
        faulty() as bad,
        sim_llm(models=("embed-upstream",)) as good,
    ):
        providers = [
            provider("primary", bad, ["r500"]),
            provider("backup", good, {"r500": "embed-upstream"}),
        ]
        async with llm_capability(providers, [], embedding_models=["r500"]) as (llm, metrics):
            body = {"model": "r500", "input": ["one text", "two"]}
            done = await llm.op("embed", pack(body), OpContext(AGENT, idempotency_key="k"))()
    result = unpack(done.value)
    assert len(result["embeddings"]) == 2 and len(result["embeddings"][0]) == 8
    assert result["embeddings"][0] != result["embeddings"][1]
    assert result["provider"] == "backup"
    assert result["usage"] == {"input_tokens": 3, "output_tokens": 0, "estimated": False}
    assert done.usage == Usage(llm_input_tokens=3)
    assert metrics.llm_calls() == {"primary|r500|500": 1, "backup|r500|ok": 1}


def test_providers_file_and_shorthand(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "providers.toml"
    path.write_text(
        """
[[providers]]
name = "openai"
base_url = "https://api.openai.com/v1"
api_key_env = "TEST_OPENAI_KEY"
models = ["gpt-4o-mini", "text-embedding-3-small"]
first_token_timeout_s = 20

[[providers]]
name = "gateway"
base_url = "http://litellm.internal:4000/v1"
models = { "gpt-4o-mini" = "azure/gpt-4o-mini" }
"""
    )
    monkeypatch.setenv("TEST_OPENAI_KEY", "sk-secret")
    config = HostConfig(llm_providers_file=path, llm_base_url="http://local:8080/v1")
    openai, gateway, shorthand = config.providers()
    assert (openai.name, openai.api_key, openai.first_token_timeout_s) == (
        "openai",
        "sk-secret",
        20,
    )
    assert gateway.upstream_model("gpt-4o-mini") == "azure/gpt-4o-mini"
    assert not gateway.serves("text-embedding-3-small")
    assert (shorthand.name, shorthand.serves("anything")) == ("default", True)
    assert "sk-secret" not in repr(config)  # keys stay out of logs
    monkeypatch.delenv("TEST_OPENAI_KEY")
    with pytest.raises(ValueError, match="TEST_OPENAI_KEY, which is not set"):
        HostConfig(llm_providers_file=path)


def test_bad_provider_settings_are_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    from roost.config import load_config

    monkeypatch.setenv(
        "ROOST_LLM_PROVIDERS",
        json.dumps([{"name": "a", "base_url": "http://a/v1", "models": ["m"], "colour": "red"}]),
    )
    with pytest.raises(ConfigError, match=r"llm_providers\.0\.colour"):
        load_config()
    monkeypatch.setenv(
        "ROOST_LLM_PROVIDERS",
        json.dumps(
            [
                {"name": "a", "base_url": "http://a/v1", "models": ["m"]},
                {"name": "a", "base_url": "http://b/v1", "models": ["m"]},
            ]
        ),
    )
    with pytest.raises(ConfigError, match="unique: a"):
        load_config()
