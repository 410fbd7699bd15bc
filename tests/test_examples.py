"""The example agents in ``examples/``, built by the real toolchain and run in a real host.

LLM answers come from the SIMULATED OpenAI-compatible server (``loadtests/sim_llm.py``),
which answers with the words of the last user message; all traffic stays on loopback.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
from trio.testing import MockClock, wait_all_tasks_blocked
from trio_websocket import open_websocket_url

from loadtests.sim_llm import reply_words
from roost import Host, HostConfig, Manifest, load_manifest, open_host
from roost.api.server import manifests_to_deploy

from .api import conftest as api_conftest
from .api.conftest import Serve
from .conftest import built, sim_llm, sse_events, until

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

serve_host = api_conftest.serve_host  # the fixture serving a host over real HTTP


@pytest.fixture(scope="session")
def assistant_manifest(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    return built(
        EXAMPLES / "assistant" / "agent.toml", tmp_path_factory.mktemp("assistant"), cache_dir
    )


@pytest.fixture(scope="session")
def reminders_manifest(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    return built(
        EXAMPLES / "reminders" / "agent.toml", tmp_path_factory.mktemp("reminders"), cache_dir
    )


@pytest.fixture(scope="session")
def researcher_manifest(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    return built(
        EXAMPLES / "researcher" / "agent.toml", tmp_path_factory.mktemp("researcher"), cache_dir
    )


@pytest.fixture(scope="session")
def team_manifests(
    cache_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Manifest, Manifest]:
    out = tmp_path_factory.mktemp("team")
    return (
        built(EXAMPLES / "team" / "agent.toml", out, cache_dir),
        built(EXAMPLES / "team" / "worker" / "agent.toml", out, cache_dir),
    )


@pytest.fixture
def clock() -> MockClock:
    return MockClock()


@asynccontextmanager
async def running(
    host_config: Callable[..., HostConfig], *manifests: Manifest, **settings: Any
) -> AsyncIterator[Host]:
    async with open_host(host_config(**settings)) as host:
        for manifest in manifests:
            await host.deploy(manifest)
        yield host


async def _settle(host: Host) -> None:
    await until(lambda: host._registry.in_flight == 0)
    await wait_all_tasks_blocked()


async def _state(host: Host, address: str) -> dict[str, Any]:
    exported = await host.export(address)
    assert exported is not None and exported.record.state is not None
    state: dict[str, Any] = msgpack.unpackb(exported.record.state, raw=False)
    return state


async def _hibernate(host: Host, address: str) -> None:
    await _settle(host)
    host.hibernate_idle()
    await wait_all_tasks_blocked()
    assert not host.is_resident(address)


def _grant(manifest: Manifest, capability: str, **grant: Any) -> Manifest:
    capabilities = {**manifest.capabilities, capability: {**manifest.capabilities[capability]}}
    capabilities[capability].update(grant)
    return manifest.model_copy(update={"capabilities": capabilities})


# -- assistant ------------------------------------------------------------------------------


async def test_assistant_remembers_across_hibernation_summarises_and_streams(
    host_config: Callable[..., HostConfig], assistant_manifest: Manifest
) -> None:
    address = "assistant/ada"
    async with (
        sim_llm(completion_tokens=6) as llm,
        running(host_config, assistant_manifest, llm_base_url=llm.url) as host,
    ):
        tokens: list[str] = []
        [first] = await host.send(address, "my name is Ada Lovelace", on_token=tokens.append)
        assert len(tokens) >= 2 and "".join(tokens) == first  # streamed, token by token
        assert first.split() == reply_words(
            [{"role": "user", "content": "my name is Ada Lovelace"}], 6
        )

        await _hibernate(host, address)
        await host.send(address, "what is my name?")  # wakes it: history came from the store
        assert (await host.statistics()).activations == 2
        prompt = llm.recent_requests[-1]["messages"]
        assert {"role": "user", "content": "my name is Ada Lovelace"} in prompt
        assert {"role": "assistant", "content": first} in prompt
        assert prompt[-1] == {"role": "user", "content": "what is my name?"}

        for n in (3, 4):
            await host.send(address, f"question number {n}")
        state = await _state(host, address)
        assert len(state["history"]) == 8 and "summary" not in state

        tokens.clear()
        [fifth] = await host.send(address, "one more question", on_token=tokens.append)
        assert "".join(tokens) == fifth  # the summary that followed was not streamed
        summary_request = llm.recent_requests[-1]["messages"]
        assert "user: my name is Ada Lovelace" in summary_request[-1]["content"]
        state = await _state(host, address)
        assert state["summaries"] == 1
        assert state["summary"] == " ".join(reply_words(summary_request, 6))
        assert "Ada" in state["summary"]
        assert [m["content"] for m in state["history"]] == [
            "question number 4",
            state["history"][1]["content"],
            "one more question",
            fifth,
        ]

        await host.send(address, "do you still know me?")
        prompt = llm.recent_requests[-1]["messages"]
        assert prompt[1] == {
            "role": "system",
            "content": f"Summary of the conversation so far: {state['summary']}",
        }
        assert len(prompt) == 2 + 4 + 1  # system prompts, the kept messages, the question


async def test_assistant_streams_tokens_as_sse_events(
    serve_host: Serve, assistant_manifest: Manifest
) -> None:
    async with (
        sim_llm(completion_tokens=5) as llm,
        serve_host(assistant_manifest, host_settings={"llm_base_url": llm.url}) as served,
    ):
        headers = {**served.agent_headers("assistant/bo"), "Accept": "text/event-stream"}
        events: list[tuple[str, Any]] = []
        async with served.client.stream(
            "POST",
            "/v1/agents/assistant/bo/messages",
            json={"message": "tell me a story"},
            headers=headers,
        ) as response:
            assert response.status_code == 200
            events += [event async for event in sse_events(response)]
    names = [name for name, _ in events]
    tokens = [data for name, data in events if name == "token"]
    assert len(tokens) == 5
    assert names.index("token") < names.index("reply")  # tokens arrive before the reply
    assert [data for name, data in events if name == "reply"] == ["".join(tokens)]
    assert names[-1] == "done"


# -- reminders ------------------------------------------------------------------------------


async def test_reminder_fires_after_ten_virtual_minutes_while_hibernated(
    clock: MockClock, host_config: Callable[..., HostConfig], reminders_manifest: Manifest
) -> None:
    address = "reminders/kim"
    async with running(host_config, reminders_manifest) as host:
        [ok] = await host.send(address, "remind me in 10 minutes to stretch")
        assert ok == "OK, reminder 1: in 10 minutes I will remind you to stretch."
        [ok] = await host.send(address, "Remind me in 2 hours to call Sam")
        assert ok.startswith("OK, reminder 2: in 2 hours")
        [listed] = await host.send(address, "list")
        assert listed == "1. in 10 minutes: stretch\n2. in 2 hours: call Sam"
        assert await host.send(address, "cancel 2") == ["Cancelled reminder 2."]
        assert await host.send(address, "cancel 2") == ["There is no pending reminder 2."]
        [confused] = await host.send(address, "remind me sometime")
        assert "did not understand" in confused

        pushed: list[Any] = []
        async with trio.open_nursery() as nursery, host.subscribe(address) as pushes:

            async def collect() -> None:
                async for message in pushes:
                    pushed.append(message)

            nursery.start_soon(collect)
            await _hibernate(host, address)
            clock.jump(599)
            await _settle(host)
            assert pushed == [] and not host.is_resident(address)
            clock.jump(2)
            await until(lambda: len(pushed) == 1)
            assert pushed == ["Reminder: stretch"]
            assert (await host.statistics()).activations == 2  # woken by the timer
            await _settle(host)
            clock.jump(3 * 3600)  # reminder 2 was cancelled: it never fires
            await _settle(host)
            nursery.cancel_scope.cancel()
        assert pushed == ["Reminder: stretch"]
        assert (await _state(host, address))["pending"] == {}
        exported = await host.export(address)
        assert exported is not None and exported.deliveries == []
        assert (await host.send(address, "list"))[0].startswith("No reminders.")


async def test_reminder_is_pushed_over_the_websocket(
    serve_host: Serve, reminders_manifest: Manifest
) -> None:
    async with serve_host(reminders_manifest) as served:
        url = served.url.replace("http://", "ws://") + "/v1/agents/reminders/lee/ws"
        async with open_websocket_url(f"{url}?token={served.token('reminders/lee')}") as ws:
            await ws.send_message(
                json.dumps({"message": "remind me in 0.3 seconds to drink water"})
            )
            with trio.fail_after(10):
                frames = [json.loads(await ws.get_message()) for _ in range(3)]
    assert frames == [
        {
            "type": "reply",
            "message": "OK, reminder 1: in 0.3 seconds I will remind you to drink water.",
        },
        {"type": "done"},
        {"type": "push", "message": "Reminder: drink water"},
    ]


# -- researcher -----------------------------------------------------------------------------


async def test_researcher_answers_from_the_fetched_page(
    host_config: Callable[..., HostConfig], researcher_manifest: Manifest
) -> None:
    manifest = _grant(researcher_manifest, "http", hosts=["127.0.0.1"])
    async with (
        sim_llm(completion_tokens=40) as llm,
        running(host_config, manifest, llm_base_url=llm.url, http_allow_private=True) as host,
    ):
        url = f"{llm.url}/models"  # the simulated server's model list, over real HTTP
        [reply] = await host.send(
            "researcher/max", {"url": url, "question": "Which models are listed?"}
        )
        prompt = llm.recent_requests[-1]["messages"][-1]["content"]
        assert prompt.startswith(f"Page {url}:\n")
        assert '"id":"roost-sim"' in prompt  # the fetched text is in the prompt
        assert prompt.endswith("Question: Which models are listed?")
        assert reply["source"] == url
        assert "roost-sim" in reply["answer"]
        assert reply["answer"].split() == reply_words([{"role": "user", "content": prompt}], 40)
        [text_form] = await host.send("researcher/max", f"{url} What is listed?")
        assert "roost-sim" in text_form["answer"]
        assert (await host.agent_status("researcher/max")).usage_today.http_calls == 2


async def test_researcher_refuses_urls_outside_its_allow_list(
    host_config: Callable[..., HostConfig], researcher_manifest: Manifest
) -> None:
    async with (
        sim_llm() as llm,
        running(
            host_config,
            researcher_manifest,  # the example's own allow-list: public sites only
            _grant(researcher_manifest, "http", hosts=["127.0.0.1"]).model_copy(
                update={"name": "loopback-researcher"}
            ),
            llm_base_url=llm.url,
        ) as host,
    ):
        [refused] = await host.send("researcher/max", f"{llm.url}/models what is there?")
        assert refused == (
            f"I cannot read {llm.url}/models: http.fetch: host '127.0.0.1' is not on the "
            "http grant's hosts (en.wikipedia.org, docs.python.org)"
        )
        # On the allow-list, but a loopback address: refused too (http_allow_private is off).
        [private] = await host.send("loopback-researcher/max", f"{llm.url}/models")
        assert private.startswith(f"I cannot read {llm.url}/models: http.fetch:")
        assert "a loopback address; outbound requests only go to public addresses" in private
        assert not llm.recent_requests  # nothing reached the llm either


# -- team -----------------------------------------------------------------------------------


def test_team_directory_deploys_the_coordinator_and_its_workers() -> None:
    found = [load_manifest(path).name for path in manifests_to_deploy([EXAMPLES / "team"])]
    assert found == ["team", "team-worker"]


async def test_team_combines_both_workers_answers(
    host_config: Callable[..., HostConfig], team_manifests: tuple[Manifest, Manifest]
) -> None:
    question = "should we ship on Friday?"
    async with (
        sim_llm(completion_tokens=8) as llm,
        running(host_config, *team_manifests, llm_base_url=llm.url) as host,
    ):
        [combined] = await host.send("team/jo", question)
        expected = [
            f"{role}: "
            + " ".join(reply_words([{"role": "user", "content": f"As the {role}: {question}"}], 8))
            for role in ("optimist", "skeptic")
        ]
        assert combined == "\n\n".join(expected)
        for role in ("optimist", "skeptic"):  # each user has their own workers
            assert (await _state(host, f"team-worker/jo-{role}"))["answered"] == 1


async def test_team_reports_a_trapping_worker_instead_of_hanging(
    host_config: Callable[..., HostConfig], team_manifests: tuple[Manifest, Manifest]
) -> None:
    # The provider fails every call; the worker lets the error escape, so its turn traps.
    async with (
        sim_llm(failure_rate=1.0) as llm,
        running(host_config, *team_manifests, llm_base_url=llm.url) as host,
    ):
        with trio.fail_after(20):
            [reply] = await host.send("team/jo", "will it work?")
        lines = reply.splitlines()
        assert lines[0] == "The team could not answer."
        for line, role in zip(lines[1:], ("optimist", "skeptic"), strict=True):
            assert line.startswith(
                f"{role} could not answer: ask team/jo -> team-worker/jo-{role} failed: guest"
            )
            assert "OpError: llm: provider 'default' answered" in line
        assert await host.send("team/jo", "") == ["Ask the team a question."]  # still serving
