"""The llm capability against a real OpenAI-compatible server we did not write: LiteLLM's
proxy (the ``llm-test`` extra), started by the tests on loopback, offline, with its mock
responses and mock errors per model. Its 401 is an upstream's: a model it routes to the
SIMULATED server with the wrong key (LiteLLM's own key checks need a database).

Success (whole and streamed), 401/404/429/500 as op errors with their status and whether
a retry helps, and fallback from a failing provider to the next, op by op and through a
real guest."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadtests.pg_server import free_port
from roost import HostConfig, Manifest

from ..conftest import ROOT
from .conftest import caller_host
from .test_llm_providers import chat, failure, llm_capability

MASTER_KEY = "sk-roost-test"
ANSWER = "hello from the proxy"
_MODELS = {
    "good": ANSWER,
    "limited": "litellm.RateLimitError",
    "broken": "litellm.InternalServerError",
}


@dataclass(frozen=True)
class LiteLLMProxy:
    url: str
    """Its OpenAI-compatible base URL (``.../v1``)."""

    def provider(self, name: str, models: Any, **settings: Any) -> dict[str, Any]:
        return {
            "name": name,
            "base_url": self.url,
            "api_key": MASTER_KEY,
            "models": models,
            **settings,
        }


def _config(upstream_port: int) -> str:
    lines = ["model_list:"]
    for name, mock in _MODELS.items():
        lines += [
            f"  - model_name: {name}",
            "    litellm_params:",
            f"      model: openai/{name}",
            "      api_key: unused",
            f'      mock_response: "{mock}"',
        ]
    lines += [  # routed to the simulated server, with a key it refuses: its 401
        "  - model_name: guarded",
        "    litellm_params:",
        "      model: openai/roost-sim",
        f"      api_base: http://127.0.0.1:{upstream_port}/v1",
        "      api_key: sk-wrong",
        "general_settings:",
        f"  master_key: {MASTER_KEY}",
        "litellm_settings:",
        "  telemetry: false",
        "  num_retries: 0",
        "router_settings:",
        "  num_retries: 0",
        "  disable_cooldowns: true",  # a failed deployment answers again at once
    ]
    return "\n".join(lines) + "\n"


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{url} exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:  # answering (maybe 401)
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)  # a subprocess starting, outside any trio loop
    raise AssertionError(f"{url} not ready in 120 s: {log.read_text(errors='replace')[-2000:]}")


@pytest.fixture(scope="session")
def litellm_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiteLLMProxy]:
    """LiteLLM's proxy on a loopback port for the session (and the simulated server it
    routes ``guarded`` to)."""
    binary = shutil.which("litellm", path=str(Path(sys.executable).parent))
    if binary is None:
        pytest.skip("needs LiteLLM's proxy: pip install -e '.[llm-test]'")
    directory = tmp_path_factory.mktemp("litellm")
    upstream_port, port = free_port(), free_port()
    config = directory / "config.yaml"
    config.write_text(_config(upstream_port))
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # never fetch its price list
        "LITELLM_TELEMETRY": "False",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    processes: list[subprocess.Popen[bytes]] = []
    try:
        sim_log = directory / "sim.log"
        upstream = ["--port", str(upstream_port), "--api-key", "sk-right"]
        with sim_log.open("wb") as out:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "loadtests.sim_llm", *upstream],
                    cwd=ROOT,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
        _wait_ready(f"http://127.0.0.1:{upstream_port}/v1/models", processes[0], sim_log)
        log = directory / "litellm.log"
        with log.open("wb") as out:
            processes.append(
                subprocess.Popen(
                    [binary, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
                    cwd=directory,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
        _wait_ready(f"http://127.0.0.1:{port}/health/liveliness", processes[1], log)
        yield LiteLLMProxy(f"http://127.0.0.1:{port}/v1")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def test_an_answer_whole_and_streamed(litellm_proxy: LiteLLMProxy) -> None:
    async with llm_capability([litellm_proxy.provider("litellm", ["good"])], ["good"]) as (
        llm,
        metrics,
    ):
        whole, usage = await chat(llm, "good")
        tokens: list[str] = []
        streamed, streamed_usage = await chat(llm, "good", stream=True, tokens=tokens)
    assert whole["content"] == streamed["content"] == ANSWER
    assert "".join(tokens) == ANSWER
    assert whole["finish_reason"] == streamed["finish_reason"] == "stop"
    assert whole["provider"] == streamed["provider"] == "litellm"
    # LiteLLM reports usage, streamed too (it honours include_usage): nothing estimated.
    assert whole["usage"]["estimated"] is streamed["usage"]["estimated"] is False
    assert usage is not None and usage.llm_output_tokens == whole["usage"]["output_tokens"] > 0
    assert streamed_usage is not None and streamed_usage.llm_output_tokens > 0
    assert metrics.llm_calls() == {"litellm|good|ok": 2}


@pytest.mark.parametrize("stream", [False, True])
async def test_429_and_500_are_retryable_op_errors(
    litellm_proxy: LiteLLMProxy, stream: bool
) -> None:
    models = ["limited", "broken"]
    async with llm_capability([litellm_proxy.provider("litellm", models)], models) as (
        llm,
        metrics,
    ):
        limited, _ = await failure(llm, "limited", stream=stream)
        broken, _ = await failure(llm, "broken", stream=stream)
    assert (limited["status"], limited["code"], limited["retryable"]) == (429, "429", True)
    assert limited["type"] == "http_error" and limited["provider"] == "litellm"
    assert "this is a mock rate limit error" in limited["message"]
    assert (broken["status"], broken["code"], broken["retryable"]) == (500, "500", True)
    assert "this is a mock internal server error" in broken["message"]
    assert metrics.llm_calls() == {"litellm|limited|429": 1, "litellm|broken|500": 1}


async def test_401_and_404_are_not_retryable(litellm_proxy: LiteLLMProxy) -> None:
    wrong_path = litellm_proxy.url.removesuffix("/v1") + "/v2"  # a base URL with a typo
    providers = [
        litellm_proxy.provider("litellm", ["guarded"]),
        {**litellm_proxy.provider("typo", ["good"]), "base_url": wrong_path},
    ]
    async with llm_capability(providers, ["guarded", "good"]) as (llm, metrics):
        refused, _ = await failure(llm, "guarded")
        missing, _ = await failure(llm, "good", stream=True)
    assert (refused["status"], refused["retryable"], refused["provider"]) == (
        401,
        False,
        "litellm",
    )
    assert refused["message"].startswith("llm: provider 'litellm' answered 401")
    assert "AuthenticationError" in refused["message"]  # LiteLLM's name for the upstream's 401
    assert (missing["status"], missing["retryable"], missing["provider"]) == (404, False, "typo")
    assert missing["message"].startswith("llm: provider 'typo' answered 404")
    assert metrics.llm_calls() == {"litellm|guarded|401": 1, "typo|good|404": 1}


async def test_fallback_on_429_and_500_but_not_on_401(litellm_proxy: LiteLLMProxy) -> None:
    providers = [  # one proxy as three providers: each maps "chat" to another of its models
        litellm_proxy.provider("throttled", {"chat": "limited"}),
        litellm_proxy.provider("failing", {"chat": "broken"}),
        litellm_proxy.provider("healthy", {"chat": "good", "locked": "guarded"}),
        litellm_proxy.provider("spare", {"locked": "good"}),
    ]
    async with llm_capability(providers, ["chat", "locked"]) as (llm, metrics):
        tokens: list[str] = []
        answer, _ = await chat(llm, "chat", stream=True, tokens=tokens)
        refused, _ = await failure(llm, "locked")
    assert answer["provider"] == "healthy" and answer["content"] == ANSWER
    assert "".join(tokens) == ANSWER  # only the provider that answered streamed
    assert refused["status"] == 401 and refused["provider"] == "healthy"
    assert [a["provider"] for a in refused["attempts"]] == ["healthy"]  # spare not tried
    assert metrics.llm_calls() == {
        "throttled|chat|429": 1,
        "failing|chat|500": 1,
        "healthy|chat|ok": 1,
        "healthy|locked|401": 1,
    }


async def test_a_guest_streams_through_the_proxy_and_reads_its_errors(
    litellm_proxy: LiteLLMProxy,
    host_config: Callable[..., HostConfig],
    caller_manifest: Manifest,
) -> None:
    capabilities = dict(caller_manifest.capabilities)
    granted = {k: v for k, v in capabilities["llm"].items() if k != "embedding_models"}
    capabilities["llm"] = {**granted, "models": ["good", "limited"]}
    manifest = caller_manifest.model_copy(update={"capabilities": capabilities})
    providers = [litellm_proxy.provider("litellm", ["good", "limited"])]
    async with caller_host(host_config, manifest, llm_providers=providers) as host:
        [answer] = await host.send("caller/a", {"op": "chat", "text": "hi", "stream": True})
        [error] = await host.send(
            "caller/a", {"op": "chat_error", "text": "hi", "model": "limited", "stream": True}
        )
        usage = (await host.agent_status("caller/a")).usage_today
    assert answer == ANSWER
    assert error["status"] == 429 and error["retryable"] is True
    assert error["type"] == "http_error" and error["provider"] == "litellm"
    assert usage.llm_output_tokens > 0  # reported by the proxy, counted against budgets
