"""roost.testing's fixtures, as an agent's tests use them: a real host on virtual time.

The agent is tests/agents/devprobe on the dev runtime (built once per session)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from roost import GuestTrap
from roost.testing import AgentUnderTest, FakeLlm, HostUnderTest, Sent


@pytest.fixture
def roost_manifest(devprobe_dir: Path) -> Path:
    return devprobe_dir / "agent.toml"


async def test_replies_state_kv_and_logs(agent: AgentUnderTest) -> None:
    assert await agent.send("count") == [1]
    assert await agent.send({"do": "count"}) == [2]
    assert await agent.send({"do": "kv", "key": "k", "value": "v"}) == ["stored"]
    assert (await agent.state())["count"] == 2
    assert await agent.kv() == {"k": b"v"}
    assert agent.logs == ["count 1", "count 2"]
    assert str(agent.address) == "devprobe/test"


async def test_a_sleep_takes_virtual_time_only(
    agent: AgentUnderTest, roost_host: HostUnderTest
) -> None:
    started_real, started_virtual = time.monotonic(), roost_host.now()
    assert await agent.send({"do": "sleep", "seconds": 3600}) == [3600.0]
    assert roost_host.now() - started_virtual == pytest.approx(3600, abs=0.01)
    assert time.monotonic() - started_real < 10


async def test_timers_fire_as_virtual_time_passes(
    agent: AgentUnderTest, roost_host: HostUnderTest
) -> None:
    assert await agent.send({"do": "remind", "text": "stretch", "after": 600}) == ["set"]
    [timer] = await agent.timers()
    assert (timer.timer_id, timer.payload) == ("reminder", {"text": "stretch"})
    assert timer.due_in_s == pytest.approx(600)
    await roost_host.advance(599)
    assert agent.pushes == []
    await roost_host.advance(1)
    assert agent.pushes == ["Reminder: stretch"]
    assert await agent.timers() == []


async def test_idle_agents_hibernate_and_keep_their_state(
    agent: AgentUnderTest, roost_host: HostUnderTest
) -> None:
    await agent.send("count")
    assert agent.resident
    await roost_host.advance(31)  # past limits.idle_timeout_s
    assert not agent.resident
    assert await agent.send("count") == [2]


async def test_the_fake_model_streams_scripted_answers(
    agent: AgentUnderTest, fake_llm: FakeLlm
) -> None:
    fake_llm.reply("Hello there, friend")
    assert await agent.send({"do": "ask", "text": "hi"}) == ["Hello there, friend"]
    assert agent.tokens == ["Hello", " there,", " friend"]
    [request] = fake_llm.requests
    assert request["model"] == "probe-model"
    assert request["messages"] == [{"role": "user", "content": "hi"}]

    fake_llm.fail(503, "overloaded")
    [reply] = await agent.send({"do": "ask", "text": "again"})
    assert reply.startswith("failed: ") and "503" in reply

    fake_llm.respond = lambda messages: messages[-1]["content"].upper()
    assert await agent.send({"do": "ask", "text": "loud"}) == ["LOUD"]


async def test_a_slow_model_takes_virtual_time(
    agent: AgentUnderTest, roost_host: HostUnderTest, fake_llm: FakeLlm
) -> None:
    fake_llm.latency_s = 30.0
    started = roost_host.now()
    assert await agent.send({"do": "ask", "text": "hi"}) == ["(fake) hi"]
    assert roost_host.now() - started == pytest.approx(30.0, abs=0.01)


async def test_sends_to_kinds_not_deployed_wait_in_the_store(agent: AgentUnderTest) -> None:
    assert await agent.send({"do": "tell", "n": 7}) == ["sent"]
    assert await agent.sent() == [Sent("devprobe/test", "elsewhere/bob", {"hello": 7})]


async def test_several_agents_of_the_kind(roost_host: HostUnderTest) -> None:
    alice, bob = roost_host.agent("alice"), roost_host.agent("bob")
    await alice.send("count")
    await alice.send("count")
    assert await bob.send("count") == [1]
    assert [g.address for g in roost_host.logs] == ["devprobe/alice"] * 2 + ["devprobe/bob"]


async def test_guest_errors_are_raised_with_the_agents_traceback(
    agent: AgentUnderTest, devprobe_dir: Path
) -> None:
    with pytest.raises(GuestTrap) as info:
        await agent.send("boom")
    assert f'File "{devprobe_dir / "helper.py"}", line 7, in boom' in info.value.guest_traceback
    assert await agent.send("count") == [1]  # the agent keeps serving


async def test_a_handler_that_waits_forever_fails_the_test_instead_of_hanging(
    agent: AgentUnderTest,
) -> None:
    with pytest.raises(AssertionError, match="still waits after"):
        await agent.send({"do": "sleep", "seconds": 7200}, within_s=60)


async def test_time_moves_only_when_the_test_lets_it(roost_host: HostUnderTest) -> None:
    before = roost_host.now()
    await trio.to_thread.run_sync(time.sleep, 0.05)
    await roost_host.settle()
    assert roost_host.now() == before
