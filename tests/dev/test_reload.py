"""roost dev's reloads, its watcher and its console (in process; tests/dev/test_roost_dev.py
runs the command)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
import trio

from roost import GuestTrap
from roost.dev.chat import Console, _show_pushes, send
from roost.dev.session import Reloader
from roost.dev.watch import changes
from roost.testing import FakeLlm, HostUnderTest

from ..conftest import C_ECHO_DIR as ECHO_C


@pytest.fixture
def roost_manifest(devprobe_dir: Path) -> Path:
    return devprobe_dir / "agent.toml"


def _reloader(roost_host: HostUnderTest, manifest: Path) -> tuple[Reloader, io.StringIO]:
    err = io.StringIO()
    console = Console(out=io.StringIO(), err=err)
    return Reloader(manifest, roost_host.host, console, roost_host.host.config), err


async def test_a_save_reloads_the_agent_and_its_state_stays(
    roost_host: HostUnderTest, devprobe_dir: Path
) -> None:
    reloader, err = _reloader(roost_host, devprobe_dir / "agent.toml")
    await reloader.reload(None)
    agent = roost_host.agent("a")
    assert await agent.send("count") == [1]
    helper = devprobe_dir / "helper.py"
    helper.write_text(helper.read_text().replace("VERSION = 1", "VERSION = 2"))
    await reloader.reload({helper})
    assert reloader.version == 2
    assert "helper.py changed; devprobe reloaded (version 2)" in err.getvalue()
    assert await agent.send("version") == [2]
    assert await agent.send("count") == [2]


async def test_a_save_that_does_not_build_leaves_the_last_version_serving(
    roost_host: HostUnderTest, devprobe_dir: Path
) -> None:
    reloader, err = _reloader(roost_host, devprobe_dir / "agent.toml")
    await reloader.reload(None)
    helper = devprobe_dir / "helper.py"
    helper.write_text("VERSION = (\n")
    await reloader.reload({helper})
    assert reloader.version == 1
    assert f"roost dev: {helper}:1: " in err.getvalue()
    assert "the last version that built keeps serving" in err.getvalue()
    assert await roost_host.agent("a").send("version") == [1]


async def test_a_file_the_agent_does_not_use_changes_nothing(
    roost_host: HostUnderTest, devprobe_dir: Path
) -> None:
    reloader, err = _reloader(roost_host, devprobe_dir / "agent.toml")
    await reloader.reload(None)
    test_file = devprobe_dir / "test_agent.py"
    test_file.write_text("def test_nothing():\n    pass\n")
    await reloader.reload({test_file})
    assert reloader.version == 1
    assert err.getvalue() == ""


async def test_an_import_error_after_a_save_fails_the_next_message_with_its_line(
    roost_host: HostUnderTest, devprobe_dir: Path
) -> None:
    reloader, _ = _reloader(roost_host, devprobe_dir / "agent.toml")
    await reloader.reload(None)
    helper = devprobe_dir / "helper.py"
    helper.write_text("VERSION = undefined_name\n")
    await reloader.reload({helper})
    with pytest.raises(GuestTrap) as info:
        await roost_host.agent("a").send("version")
    assert f'File "{helper}", line 1, in <module>' in info.value.guest_traceback


async def test_the_watcher_reports_each_save(tmp_path: Path) -> None:
    (tmp_path / "agent.py").write_text("x = 1\n")
    (tmp_path / "__pycache__").mkdir()
    seen: list[set[Path]] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for changed in changes(tmp_path, poll_s=0.01):
                    seen.append(changed)
                    if len(seen) == 2:
                        nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            await trio.sleep(0.05)
            (tmp_path / "__pycache__" / "agent.cpython-311.pyc").write_bytes(b"ignored")
            (tmp_path / "agent.py").write_text("x = 22\n")
            await trio.sleep(0.2)
            (tmp_path / "tools.py").write_text("y = 1\n")
    assert seen == [{tmp_path / "agent.py"}, {tmp_path / "tools.py"}]


def test_the_console_shows_tokens_then_the_reply_and_pushes() -> None:
    out, err = io.StringIO(), io.StringIO()
    console = Console(out=out, err=err)
    console.token("Hello")
    console.token(" there")
    console.reply("Hello there")
    console.push({"reminder": "stretch"})
    console.log("info", "assistant/local: thinking")
    assert out.getvalue() == (
        'agent~ Hello there\nagent> "Hello there"\npush> {"reminder": "stretch"}\n'
    )
    assert err.getvalue() == "log> info assistant/local: thinking\n"


async def test_the_chat_shows_streamed_tokens_replies_and_pushes(
    roost_host: HostUnderTest, fake_llm: FakeLlm
) -> None:
    out, err = io.StringIO(), io.StringIO()
    console = Console(out=out, err=err)
    address = roost_host.agent("local").address
    fake_llm.reply("Good morning")
    await send(roost_host.host, address, {"do": "ask", "text": "hi"}, console)
    await send(roost_host.host, address, {"do": "remind", "text": "stretch", "after": 5}, console)
    async with trio.open_nursery() as nursery:
        await nursery.start(_show_pushes, roost_host.host, address, console)
        await roost_host.advance(5)
        nursery.cancel_scope.cancel()
    assert out.getvalue().splitlines() == [
        "agent~ Good morning",
        'agent> "Good morning"',
        'agent> "set"',
        'push> "Reminder: stretch"',
    ]


async def test_a_native_agent_is_rebuilt_on_save(roost_host: HostUnderTest, tmp_path: Path) -> None:
    agent_dir = Path(shutil.copytree(ECHO_C, tmp_path / "echo_c"))
    reloader, _ = _reloader(roost_host, agent_dir / "agent.toml")
    await reloader.reload(None)
    agent = roost_host.agent("a", kind="echo-c")
    assert await agent.send("hi") == [{"echo": "hi", "count": 1}]
    source = agent_dir / "agent.c"
    source.write_text(source.read_text().replace('(&reply, "count")', '(&reply, "n")'))
    await reloader.reload({source})
    assert reloader.version == 2
    assert await agent.send("hi") == [{"echo": "hi", "n": 2}]
