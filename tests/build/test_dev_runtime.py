"""The dev runtime: a Python agent's sources loaded at init, errors that point home, and
redeploys that swap the agent in place (tests/agents/devprobe, through roost.testing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from roost import CpuDeadlineExceeded, GuestTrap, load_manifest
from roost.build.dev import DEV_KEY, dev_build
from roost.testing import AgentUnderTest, HostUnderTest


@pytest.fixture
def roost_manifest(devprobe_dir: Path) -> Path:
    return devprobe_dir / "agent.toml"


def test_only_the_agents_own_sources_travel(devprobe_dir: Path, cache_dir: Path) -> None:
    (devprobe_dir / "test_agent.py").write_text("import agent\n")
    (devprobe_dir / "notes.py").write_text("broken (\n")
    manifest = load_manifest(devprobe_dir / "agent.toml")
    built = dev_build(manifest, cache_dir=cache_dir)
    spec = built.manifest.config[DEV_KEY]
    assert sorted(spec["files"]) == ["agent.py", "helper.py"]
    assert spec["root"] == str(devprobe_dir)
    assert spec["deadline_ms"] == 400
    assert built.manifest.component == built.runtime
    assert built.runtime.name.startswith("dev-")


async def test_the_agent_sees_its_config_without_its_sources(agent: AgentUnderTest) -> None:
    assert await agent.send("config") == [{"greeting": "hi"}]


async def test_a_redeploy_swaps_the_agent_in_place_and_keeps_its_state(
    agent: AgentUnderTest, roost_host: HostUnderTest, devprobe_dir: Path
) -> None:
    assert await agent.send("version") == [1]
    assert await agent.send("count") == [1]
    helper = devprobe_dir / "helper.py"
    helper.write_text(helper.read_text().replace("VERSION = 1", "VERSION = 2"))
    await roost_host.deploy(devprobe_dir / "agent.toml")
    assert await agent.send("version") == [2]
    assert await agent.send("count") == [2]


async def test_a_runaway_turn_is_stopped_at_the_line_it_was_on(
    agent: AgentUnderTest, devprobe_dir: Path
) -> None:
    with pytest.raises(CpuDeadlineExceeded) as info:
        await agent.send("spin")
    helper = devprobe_dir / "helper.py"
    assert f"ran past the kind's CPU deadline at {helper}:1" in str(info.value)
    assert "(in spin)" in str(info.value)
    traceback = info.value.guest_traceback
    assert f'File "{devprobe_dir / "agent.py"}", line' in traceback
    assert "helper.spin()" in traceback
    assert "roost_sdk/_dev.py" not in traceback
    assert await agent.send("count") == [1]


async def test_a_set_in_state_names_its_key(agent: AgentUnderTest) -> None:
    with pytest.raises(GuestTrap, match=r"state\['tags'\] is a set; use a list"):
        await agent.send("tags")


async def test_an_import_error_shows_the_agents_lines_only(
    roost_host: HostUnderTest, devprobe_dir: Path
) -> None:
    source = devprobe_dir / "agent.py"
    source.write_text(source.read_text().replace("import helper\n", "import helper\nnope + 1\n"))
    await roost_host.deploy(devprobe_dir / "agent.toml")
    with pytest.raises(GuestTrap) as info:
        await roost_host.agent("a").send("count")
    assert "NameError: name 'nope' is not defined" in str(info.value)
    traceback = info.value.guest_traceback
    lines = traceback.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[1:4] == [f'  File "{source}", line 9, in <module>', "    nope + 1", "    ^^^^"]
    assert lines[4].startswith("NameError: name 'nope' is not defined")
    assert len(lines) == 5
