"""The native SDK passes tools to the model and reads its tool calls: a C agent
(tests/agents/native_tools) built by the real toolchain, against the SIMULATED model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from roost import GuestError, HostConfig, Manifest

from ..conftest import ROOT, built, sim_llm
from .conftest import caller_host

ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
NOW = {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}


@pytest.fixture(scope="session")
def native_tools_manifest(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    directory = ROOT / "tests" / "agents" / "native_tools"
    return built(directory / "agent.toml", tmp_path_factory.mktemp("ntools"), cache_dir)


async def test_a_c_agent_passes_tools_and_reads_the_calls(
    host_config: Callable[..., HostConfig], native_tools_manifest: Manifest
) -> None:
    async with sim_llm(completion_tokens=4) as llm:
        async with caller_host(host_config, native_tools_manifest, llm_base_url=llm.url) as host:
            [calls] = await host.send(
                "ntools/a", {"text": 'add {"a": 2, "b": 3} and now', "tools": [ADD, NOW]}
            )
            [plain] = await host.send("ntools/a", {"text": "no tools here", "tools": [ADD]})
            with pytest.raises(GuestError, match="5 tools exceed the llm grant max_tools = 4"):
                await host.send("ntools/a", {"text": "add", "tools": [ADD, NOW, ADD, NOW, ADD]})
        [asked, *_] = [r for r in llm.recent_requests if "tools" in r]
    assert calls == [
        {"name": "add", "arguments": {"a": 2, "b": 3}},
        {"name": "now", "arguments": {}},
    ]
    assert plain == "no tools here no"
    assert asked["tools"] == [ADD, NOW]  # as the agent passed them
