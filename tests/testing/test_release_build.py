"""roost.testing with --roost-build release: the production component, whose tracebacks
the host names by the agent's real paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from roost import CpuDeadlineExceeded, GuestTrap
from roost.testing import AgentUnderTest

pytestmark = pytest.mark.slow


@pytest.fixture
def roost_manifest(devprobe_dir: Path) -> Path:
    return devprobe_dir / "agent.toml"


@pytest.fixture
def roost_build() -> str:
    return "release"


async def test_the_production_component_behaves_the_same(agent: AgentUnderTest) -> None:
    assert await agent.send("count") == [1]
    assert await agent.send("config") == [{"greeting": "hi"}]
    with pytest.raises(GuestTrap, match=r"state\['tags'\] is a set; use a list"):
        await agent.send("tags")


async def test_its_tracebacks_name_the_real_files_with_their_lines(
    agent: AgentUnderTest, devprobe_dir: Path
) -> None:
    with pytest.raises(GuestTrap) as info:
        await agent.send("boom")
    traceback = info.value.guest_traceback
    assert f'File "{devprobe_dir / "agent.py"}", line' in traceback
    assert "    helper.boom()" in traceback
    assert f'File "{devprobe_dir / "helper.py"}", line 7, in boom' in traceback
    assert '    raise KeyError("missing")' in traceback
    assert "/1/" not in traceback and "_exports.py" not in traceback


async def test_a_deadline_trap_says_where_to_find_the_line(agent: AgentUnderTest) -> None:
    with pytest.raises(CpuDeadlineExceeded) as info:
        await agent.send("spin")
    assert "roost dev" in str(info.value)
    assert info.value.guest_traceback == ""  # no interpreter frames
