"""The SIMULATED OpenAI-compatible server, over real loopback HTTP."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio

from loadtests.sim_llm import (
    FINGERPRINT,
    SimLLMConfig,
    SimLLMServer,
    reply_words,
    serve_sim_llm,
    simulated_duration_s,
)

MODEL = "roost-sim"
KEY = "sk-simulated-test-key"
HELLO = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello big world"}]


@asynccontextmanager
async def running(**settings: Any) -> AsyncIterator[tuple[SimLLMServer, httpx.AsyncClient]]:
    """A simulated server on a free loopback port and a client for its ``/v1`` API."""
    config = SimLLMConfig(port=0, **settings)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            server: SimLLMServer = await nursery.start(serve_sim_llm, config)
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                yield server, client
            nursery.cancel_scope.cancel()


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": HELLO, **fields}


def _events(body: str) -> list[Any]:
    """The ``data:`` payloads of an SSE body, JSON-decoded except ``[DONE]``."""
    payloads = [line.removeprefix("data: ") for line in body.split("\n\n") if line]
    assert all(line.startswith("data: ") for line in body.split("\n\n") if line)
    return [p if p == "[DONE]" else json.loads(p) for p in payloads]


def test_reply_words_cycle_the_last_user_message() -> None:
    assert reply_words(HELLO, 5) == ["hello", "big", "world", "hello", "big"]
    assert reply_words([{"role": "user", "content": "  "}], 2) == ["simulated", "simulated"]
    parts = [{"role": "user", "content": [{"type": "text", "text": "a b"}]}]
    assert reply_words(parts, 3) == ["a", "b", "a"]


async def test_non_streaming_completion() -> None:
    async with running(completion_tokens=8) as (_, client):
        response = await client.post("/chat/completions", json=_chat(max_tokens=4))
    assert response.status_code == 200
    assert response.headers["x-simulated"] == "true"
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == MODEL
    assert body["system_fingerprint"] == FINGERPRINT
    [choice] = body["choices"]
    assert choice["message"] == {
        "role": "assistant",
        "content": "hello big world hello",
        "refusal": None,
    }
    assert choice["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}


async def test_reply_length_is_the_configured_one_when_max_tokens_is_larger() -> None:
    async with running(completion_tokens=2) as (server, client):
        response = await client.post("/chat/completions", json=_chat(max_tokens=100))
        assert server.statistics().completion_tokens == 2
    [choice] = response.json()["choices"]
    assert choice["message"]["content"] == "hello big"
    assert choice["finish_reason"] == "stop"
    assert server.recent_requests[-1]["max_tokens"] == 100


async def test_streaming_chunks_in_order_with_final_usage() -> None:
    async with running(completion_tokens=8, tokens_per_s=1000) as (_, client):
        stream_options = {"include_usage": True}
        response = await client.post(
            "/chat/completions",
            json=_chat(max_tokens=3, stream=True, stream_options=stream_options),
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-simulated"] == "true"
    *chunks, done = _events(response.text)
    assert done == "[DONE]"
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["system_fingerprint"] == FINGERPRINT for c in chunks)
    first, *tokens, finish, usage = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [t["choices"][0]["delta"] for t in tokens] == [
        {"content": "hello"},
        {"content": " big"},
        {"content": " world"},
    ]
    assert all(c["usage"] is None and c["choices"][0]["finish_reason"] is None for c in tokens)
    assert finish["choices"][0]["delta"] == {}
    assert finish["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


async def test_streaming_without_include_usage_sends_no_usage() -> None:
    async with running(completion_tokens=2) as (server, client):
        response = await client.post("/chat/completions", json=_chat(stream=True))
        assert server.statistics().completed == 1
    *chunks, done = _events(response.text)
    assert done == "[DONE]"
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "hello big"


async def test_streamed_tokens_arrive_at_the_configured_pace() -> None:
    config: dict[str, Any] = {"latency_ms": 150, "tokens_per_s": 20, "completion_tokens": 3}
    async with running(**config) as (_, client):
        arrivals: list[float] = []
        started = trio.current_time()
        async with client.stream("POST", "/chat/completions", json=_chat(stream=True)) as response:
            async for line in response.aiter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    arrivals.append(trio.current_time() - started)
    assert len(arrivals) == 3
    # First token after the latency, then one every 50 ms: none can arrive before the server
    # sends it (a busy client may read two at once, so the gaps between arrivals can shrink).
    assert 0.15 <= arrivals[0] < 0.15 + 1.0
    assert arrivals[1] >= 0.15 + 0.05 - 0.01
    assert arrivals[2] >= 0.15 + 0.1 - 0.01
    assert simulated_duration_s(SimLLMConfig(**config), 3) == pytest.approx(0.25)


async def test_non_streaming_reply_waits_for_the_simulated_duration() -> None:
    async with running(latency_ms=100, tokens_per_s=50, completion_tokens=6) as (_, client):
        started = trio.current_time()
        response = await client.post("/chat/completions", json=_chat())
        elapsed = trio.current_time() - started
    assert response.status_code == 200
    assert elapsed >= 0.1 + 5 / 50


async def test_failure_rate_one_fails_every_request_with_429_or_500() -> None:
    async with running(failure_rate=1.0, seed=7) as (server, client):
        statuses = []
        for _ in range(20):
            response = await client.post("/chat/completions", json=_chat())
            assert response.headers["x-simulated"] == "true"
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}
            if response.status_code == 429:
                assert response.headers["retry-after"] == "1"
                assert response.json()["error"]["code"] == "rate_limit_exceeded"
            statuses.append(response.status_code)
        stats = server.statistics()
    assert set(statuses) == {429, 500}
    assert (stats.requests, stats.injected_failures, stats.completed) == (20, 20, 0)


async def test_failures_are_reproducible_from_the_seed() -> None:
    async def run() -> list[int]:
        async with running(failure_rate=0.5, seed=42) as (_, client):
            return [
                (await client.post("/chat/completions", json=_chat())).status_code
                for _ in range(30)
            ]

    first = await run()
    assert first == await run()
    assert 200 in first
    assert {429, 500} & set(first)


async def test_wrong_or_missing_api_key_is_401() -> None:
    async with running(api_key=KEY) as (server, client):
        missing = await client.post("/chat/completions", json=_chat())
        wrong = await client.post(
            "/chat/completions", json=_chat(), headers={"Authorization": "Bearer nope"}
        )
        models = await client.get("/models", headers={"Authorization": "Bearer nope"})
        right = await client.post(
            "/chat/completions", json=_chat(), headers={"Authorization": f"Bearer {KEY}"}
        )
        assert server.statistics().unauthorized == 3
    assert (missing.status_code, wrong.status_code, models.status_code) == (401, 401, 401)
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    assert wrong.headers["x-simulated"] == "true"
    assert right.status_code == 200


async def test_models_lists_the_configured_models_and_others_are_404() -> None:
    async with running(models=("small", "large")) as (_, client):
        models = await client.get("/models")
        unknown = await client.post("/chat/completions", json=_chat(model="gpt-x"))
        known = await client.post("/chat/completions", json=_chat(model="large"))
    assert models.headers["x-simulated"] == "true"
    assert models.json() == {
        "object": "list",
        "data": [
            {"id": "small", "object": "model", "created": 0, "owned_by": FINGERPRINT},
            {"id": "large", "object": "model", "created": 0, "owned_by": FINGERPRINT},
        ],
    }
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    assert known.json()["model"] == "large"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": HELLO}, "model"),
        ({"model": MODEL, "messages": []}, "messages"),
        ({"model": MODEL, "messages": HELLO, "max_tokens": 0}, "max_tokens"),
        ({"model": MODEL, "messages": HELLO, "n": 2}, "n"),
    ],
)
async def test_malformed_requests_are_400(body: dict[str, Any], param: str) -> None:
    async with running() as (_, client):
        response = await client.post("/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


async def test_command_line_prints_its_url_and_stops_on_sigterm() -> None:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "loadtests.sim_llm", "--port", "0", "--api-key", KEY],
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        buffer = b""
        with trio.fail_after(30):
            while b"SIMULATED" not in buffer:
                chunk = await process.stderr.receive_some()
                assert chunk, f"exited early: {buffer.decode()}"
                buffer += chunk
        banner = buffer.decode()
        assert "simulated LLM listening on http://127.0.0.1:" in banner
        origin = banner.split("listening on ", 1)[1].split()[0]
        async with httpx.AsyncClient(base_url=f"{origin}/v1", timeout=10) as client:
            response = await client.post(
                "/chat/completions", json=_chat(), headers={"Authorization": f"Bearer {KEY}"}
            )
        assert response.json()["system_fingerprint"] == FINGERPRINT
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            code = await process.wait()
        await process.stderr.aclose()
    assert code == 0
