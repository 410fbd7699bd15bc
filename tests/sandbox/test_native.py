"""What only native (C and Zig) guests do: the dense memory profile, event turns on the
event loop, the C and Zig SDKs' own checks, and handing the host malformed canonical-ABI
values. Built by the real toolchain (ziglang + wasm-tools, cached for the session).

The behaviour native guests share with Python ones is ``tests/test_host.py``'s suite,
which runs on both tiers."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgpack
import pytest
import trio
from hypothesis import example, given, settings
from hypothesis import strategies as st
from trio.testing import MockClock, wait_all_tasks_blocked

from roost import GuestTrap, Host, HostConfig, Manifest, open_host
from roost.abi import WIT_DIR
from roost.build.native import STACK_BYTES, wasm_tools_executable
from roost.capabilities import bind_capabilities, link_table
from roost.errors import GuestAbiError, GuestError
from roost.sandbox import WasmEngine
from roost.sandbox.protocol import Sandbox

from ..conftest import ROOT, built, offline_services, sim_llm, with_limits

ZIG_PROBE_DIR = ROOT / "tests" / "agents" / "zig_probe"
BROKEN_SOURCE = ROOT / "tests" / "agents" / "broken" / "agent.c"
ECHO_EXAMPLES = {"c": ROOT / "examples" / "echo_c", "zig": ROOT / "examples" / "echo_zig"}
CHAT_EXAMPLE = ROOT / "examples" / "chat_c" / "agent.toml"
BROKEN_WORLD = """world broken {
  include agent-core;
  import log;
}
"""


@pytest.fixture(scope="session")
def zig_probe(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    return built(ZIG_PROBE_DIR / "agent.toml", tmp_path_factory.mktemp("zprobe"), cache_dir)


@pytest.fixture(scope="session")
def zig_echo(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    return built(ECHO_EXAMPLES["zig"] / "agent.toml", tmp_path_factory.mktemp("echo"), cache_dir)


@pytest.fixture(params=sorted(ECHO_EXAMPLES))
def native_echo(request: pytest.FixtureRequest) -> Manifest:
    """The echo example in C, then in Zig."""
    name = {"c": "c_echo_manifest", "zig": "zig_echo"}[request.param]
    manifest: Manifest = request.getfixturevalue(name)
    return manifest


@pytest.fixture(scope="session")
def broken(native_probe_manifest: Manifest, tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    """A guest that implements the ABI by hand, without the SDK, and breaks it on request."""
    work = tmp_path_factory.mktemp("broken")
    core = work / "core.wasm"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ziglang",
            "cc",
            "-target",
            "wasm32-freestanding",
            "-O2",
            "-nostdlib",
            "-Wl,--no-entry",
            f"-Wl,-z,stack-size={STACK_BYTES}",
            str(BROKEN_SOURCE),
            "-o",
            str(core),
        ],
        check=True,
        capture_output=True,
    )
    wit = work / "wit"
    wit.mkdir()
    for path in WIT_DIR.glob("*.wit"):
        (wit / path.name).write_bytes(path.read_bytes())
    (wit / "broken.wit").write_text(BROKEN_WORLD)
    tool = str(wasm_tools_executable())
    embedded, component = work / "embedded.wasm", work / "broken.wasm"
    subprocess.run(
        [tool, "component", "embed", str(wit), "-w", "broken", str(core), "-o", str(embedded)],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [tool, "component", "new", str(embedded), "-o", str(component)],
        check=True,
        capture_output=True,
    )
    return native_probe_manifest.model_copy(
        update={"name": "broken", "source": None, "capabilities": {"log": {}}}
    ).with_component(component)


@pytest.fixture
async def nprobe_host(
    host_config: Callable[..., HostConfig], native_probe_manifest: Manifest
) -> AsyncIterator[Host]:
    # No cool-down: on a busy machine a turn that copies a large message may pass its CPU
    # deadline, and the tests here send to the same agent again at once.
    async with open_host(host_config(deadline_cool_down_s=0)) as host:
        await host.deploy(native_probe_manifest)
        yield host


# -- the Zig SDK and the native examples -----------------------------------------------------------


async def test_zig_echo_round_trip_and_hibernation(
    host_config: Callable[..., HostConfig], zig_echo: Manifest
) -> None:
    kind = zig_echo.name
    async with open_host(host_config()) as host:
        await host.deploy(zig_echo)
        assert await host.send(f"{kind}/alice", "hello") == [{"echo": "hello", "count": 1}]
        assert await host.send(f"{kind}/alice", {"n": [1, 2], "b": b"\x00"}) == [
            {"echo": {"n": [1, 2], "b": b"\x00"}, "count": 2}
        ]
        assert await host.send(f"{kind}/bob", "hi") == [{"echo": "hi", "count": 1}]
        host.hibernate_idle()
        await wait_all_tasks_blocked()
        assert not host.is_resident(f"{kind}/alice")
        assert await host.send(f"{kind}/alice", "two") == [{"echo": "two", "count": 3}]


async def test_zig_sdk_state_kv_sleep_and_errors(
    host_config: Callable[..., HostConfig], zig_probe: Manifest, autojump_clock: MockClock
) -> None:
    async with open_host(host_config()) as host:
        await host.deploy(zig_probe)
        assert await host.send("zprobe/a", "count") == [1]
        assert await host.send("zprobe/a", {"op": "kv_set", "key": "k", "value": b"v"}) == ["ok"]
        assert await host.send("zprobe/a", {"op": "kv_get", "key": "k"}) == [b"v"]
        assert await host.send("zprobe/b", {"op": "kv_get", "key": "k"}) == [None]
        start = trio.current_time()
        assert await host.send("zprobe/a", "sleep") == ["before", {"after": 1}]
        assert trio.current_time() - start >= 5
        with pytest.raises(GuestTrap, match="ProbeAskedToFail"):
            await host.send("zprobe/a", "raise")
        assert await host.send("zprobe/a", "count") == [2]


def _mappings() -> int:
    with open("/proc/self/maps", encoding="ascii") as maps:
        return sum(1 for _ in maps)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps")
async def test_native_instances_do_not_take_a_mapping_each(
    host_config: Callable[..., HostConfig], native_echo: Manifest
) -> None:
    """The dense memory profile: 100,000 instances must fit under vm.max_map_count
    (65,530 by default), so resident native agents may not add a mapping each."""
    agents = 1_000
    config = host_config(max_resident_agents=agents + 1, max_activations_per_s=1e6)
    async with open_host(config) as host:
        await host.deploy(native_echo)
        await host.send(f"{native_echo.name}/warm", "x")
        before = _mappings()
        for i in range(agents):
            await host.send(f"{native_echo.name}/a{i}", "x")
        assert (await host.statistics()).resident == agents + 1
        assert _mappings() - before < agents // 10


async def test_native_chat_agent_keeps_the_conversation(
    host_config: Callable[..., HostConfig], cache_dir: Path, tmp_path: Path
) -> None:
    chat = built(CHAT_EXAMPLE, tmp_path, cache_dir)
    async with (
        sim_llm(completion_tokens=5) as server,
        open_host(host_config(llm_base_url=server.url)) as host,
    ):
        await host.deploy(chat)
        # The simulated model cycles the words of the last user message.
        assert await host.send("chat-c/ann", "hello there") == ["hello there hello there hello"]
        assert await host.send("chat-c/ann", "and again") == ["and again and again and"]
        usage = (await host.agent_status("chat-c/ann")).usage_today
        # The second request carried the whole conversation: 2 + (2 + 5 + 2) words.
        assert (usage.llm_input_tokens, usage.llm_output_tokens) == (11, 10)
        with pytest.raises(GuestTrap, match="send the chat agent text"):
            await host.send("chat-c/ann", {"not": "text"})


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc/self/statm")
async def test_hundred_thousand_resident_native_agents(
    host_config: Callable[..., HostConfig], c_echo_manifest: Manifest
) -> None:
    """The dense tier's target: 100,000 resident native agents in one process, each
    costing under 64 KiB (instance, linear memory and the host's actor together)."""
    agents = 100_000
    echo = with_limits(c_echo_manifest, idle_timeout_s=24 * 3600)  # resident until the test ends
    async with open_host(
        # Woken in a burst far past what the host serves at once, on purpose: no activation
        # rate and no queueing-delay admission (they would rightly shed the burst).
        host_config(
            max_resident_agents=agents, max_activations_per_s=1e6, queue_target_ms=3_600_000
        )
    ) as host:
        await host.deploy(echo)
        await host.send("echo-c/0", "warm")
        rss_before = _rss_bytes()
        limiter = trio.CapacityLimiter(8)

        async def talk(i: int) -> None:
            async with limiter:
                assert await host.send(f"echo-c/{i}", i) == [
                    {"echo": i, "count": 2 if i == 0 else 1}
                ]

        async with trio.open_nursery() as nursery:
            for i in range(agents):
                nursery.start_soon(talk, i)
        stats = await host.statistics()
        assert (stats.resident, stats.hibernations) == (agents, 0)
        assert (_rss_bytes() - rss_before) / agents < 64 * 1024
        assert await host.send(f"echo-c/{agents - 1}", "again") == [{"echo": "again", "count": 2}]


# -- the C SDK on the event loop and at its limits ----------------------------------------------


async def test_keys_that_are_not_utf8_are_refused_by_the_sdk(nprobe_host: Host) -> None:
    assert await nprobe_host.send("nprobe/a", {"op": "kv_get", "key": b"\xff"}) == [None]
    [reply] = await nprobe_host.send(
        "nprobe/a", {"op": "kv_try_set", "key": b"k\xff", "value": b"v"}
    )
    assert "UTF-8" in reply["error"]
    assert await nprobe_host.send("nprobe/a", {"op": "kv_keys"}) == [[]]
    assert await nprobe_host.send("nprobe/a", "count") == [1]


async def test_event_turns_run_on_the_event_loop_until_one_overruns_its_slice(
    host_config: Callable[..., HostConfig],
    native_probe_manifest: Manifest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="roost.guest")
    # Slices of 2 ms (plus up to one 1 ms tick); the probe's CPU deadline is 300 ms.
    async with open_host(host_config(epoch_tick_ms=1, inline_slice_ms=2)) as host:
        await host.deploy(native_probe_manifest)
        assert await host.send("nprobe/a", {"op": "spin", "count": 0}) == [1]
        assert _spin_lines(caplog) == [("spin start", "MainThread"), ("spin done", "MainThread")]
        caplog.clear()
        # Tens of ms of work: stopped on the loop, run again on a worker, committed once.
        assert await host.send("nprobe/a", {"op": "spin", "count": 20_000_000}) == [2]
        lines = _spin_lines(caplog)
        assert lines[0] == ("spin start", "MainThread")
        assert [text for text, _ in lines[1:]] == ["spin start", "spin done"]
        assert all(thread != "MainThread" for _, thread in lines[1:])
        caplog.clear()
        # The agent's turns stay on worker threads until it hibernates.
        assert await host.send("nprobe/a", {"op": "spin", "count": 0}) == [3]
        assert all(thread != "MainThread" for _, thread in _spin_lines(caplog))
        caplog.clear()
        host.hibernate_idle()
        await wait_all_tasks_blocked()
        assert await host.send("nprobe/a", {"op": "spin", "count": 0}) == [4]
        assert all(thread == "MainThread" for _, thread in _spin_lines(caplog))


def _spin_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [
        (record.getMessage().split(": ", 1)[1], record.threadName or "")
        for record in caplog.records
        if record.name == "roost.guest" and "spin" in record.getMessage()
    ]


async def test_memory_cannot_grow_past_the_cap(
    nprobe_host: Host, native_probe_manifest: Manifest
) -> None:
    cap = native_probe_manifest.limits.max_memory_bytes
    [reached] = await nprobe_host.send("nprobe/a", {"op": "grow"})
    assert cap - 1024 * 1024 < reached <= cap
    # A message the guest has no room for fails that agent's turn only.
    with pytest.raises(GuestError):
        await nprobe_host.send("nprobe/a", {"op": "count", "pad": b"x" * cap})
    assert await nprobe_host.send("nprobe/b", "count") == [1]
    assert await nprobe_host.send("nprobe/a", "count") == [1]


# -- malformed canonical-ABI values --------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "says"),
    [
        ("oob-list", "out of bounds"),
        ("oob-payload", "out of bounds"),
        ("huge-len", "out of bounds"),
        ("huge-string", "out of bounds"),
        ("bad-utf8", "utf-8"),
        ("bad-tag", "discriminant"),
        ("bad-option", "discriminant"),
        ("bad-utf8-import", "utf-8"),
        ("oob-import", "out of bounds"),
    ],
)
async def test_malformed_abi_values_fail_only_that_agent(
    host_config: Callable[..., HostConfig],
    broken: Manifest,
    native_echo: Manifest,
    fault: str,
    says: str,
) -> None:
    echo = native_echo.name
    async with open_host(host_config()) as host:
        await host.deploy(broken)
        await host.deploy(native_echo)
        assert await host.send("broken/a", "fine") == ["ok"]
        assert await host.send(f"{echo}/n", "x") == [{"echo": "x", "count": 1}]
        with pytest.raises(GuestAbiError, match=says):
            await host.send("broken/a", fault)
        # The neighbour is untouched; the broken agent gets a fresh instance.
        assert await host.send(f"{echo}/n", "y") == [{"echo": "y", "count": 2}]
        assert await host.send("broken/a", "fine") == ["ok"]


# -- values crossing the ABI --------------------------------------------------------------------


@pytest.fixture(scope="module")
def echo_sandbox(cache_dir: Path, c_echo_manifest: Manifest) -> Sandbox:
    """The C echo example in a bare sandbox: no host, no turn (its log lines go nowhere)."""
    manifest = c_echo_manifest
    assert manifest.component is not None
    engine = WasmEngine(cache_dir=cache_dir, epoch_tick_ms=10)
    capabilities = bind_capabilities({"log": {}}, offline_services())
    factory = engine.load_kind(
        manifest.name, manifest.component.read_bytes(), link_table(capabilities)
    )
    sandbox = factory.instantiate(manifest.limits)
    sandbox.init(msgpack.packb({"kind": manifest.name, "id": "a", "config": {}}), None)
    return sandbox


@settings(max_examples=60, deadline=None)
@given(payload=st.binary(max_size=20_000), event_id=st.integers(1, 2**64 - 1))
@example(payload=bytes(range(255, -1, -1)) * 70, event_id=2**64 - 1)  # copied in two chunks
def test_bytes_cross_the_abi_intact(echo_sandbox: Sandbox, payload: bytes, event_id: int) -> None:
    """Lowering and lifting by hand: any bytes, any event id, both ways."""
    sandbox = echo_sandbox
    output = sandbox.on_event(event_id, "message", payload)
    [reply] = output.replies
    assert reply.event_id == event_id
    assert output.done == [event_id]
    assert output.state is not None
    count = msgpack.unpackb(output.state)["count"]
    assert reply.payload == b"\x82\xa4echo" + payload + b"\xa5count" + msgpack.packb(count)


def test_unknown_event_kind_is_the_guests_error(echo_sandbox: Sandbox) -> None:
    with pytest.raises(GuestTrap, match="unknown event kind"):
        echo_sandbox.on_event(1, "gossip", b"\xc0")
