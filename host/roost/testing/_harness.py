"""A real host on a virtual clock, and handles on its agents, for tests."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import trio
import trio.lowlevel
from trio.testing import MockClock, wait_all_tasks_blocked

from .._progress import progress
from ..address import AgentAddress
from ..build import ensure_component
from ..build.dev import dev_build
from ..config import HostConfig
from ..core.kind import KindInfo
from ..host import Host, open_host
from ..manifest import Manifest, load_manifest
from ..payload import unpack
from ._fake_llm import FAKE_LLM_URL, FakeLlm

BuildMode = Literal["dev", "release"]
Progress = Callable[[str], AbstractContextManager[None]]
"""Shows that a slow step (a build, native compilation) is under way."""
REAL_TIMEOUT_S = 60.0
"""How long (real time) the host may stay busy before a test step gives up on it."""
SEND_TIMEOUT_S = 24 * 3600.0
"""Virtual time a :meth:`AgentUnderTest.send` lets pass before it gives up."""


@dataclass(frozen=True)
class GuestLog:
    address: str
    level: str
    message: str


@dataclass(frozen=True)
class Timer:
    """A durable timer an agent set, as the store holds it."""

    timer_id: str
    due_in_s: float
    """Virtual seconds from now until it fires."""
    every_s: float | None
    payload: Any


@dataclass(frozen=True)
class Sent:
    """A message an agent sent (``ctx.send``) to a kind not deployed on the test host."""

    sender: str
    to: str
    message: Any


class HostUnderTest:
    """A real :class:`~roost.Host` (SQLite store, wasmtime sandboxes) on trio's
    ``MockClock``, with a scripted model (:attr:`llm`). Time moves only when a test lets it:
    :meth:`advance`, and :meth:`AgentUnderTest.send` while a handler waits on an op."""

    def __init__(
        self,
        host: Host,
        clock: MockClock,
        llm: FakeLlm,
        nursery: trio.Nursery,
        build: BuildMode,
        show_progress: Progress = progress,
    ) -> None:
        self.host = host
        self.clock = clock
        self.llm = llm
        self.build: BuildMode = build
        self.kind: str | None = None
        """The kind deployed first: the one :meth:`agent` talks to by default."""
        self.logs: list[GuestLog] = []
        """Every log line of every agent, oldest first."""
        self._nursery = nursery
        self._progress = show_progress
        self._agents: dict[AgentAddress, AgentUnderTest] = {}

    # -- kinds and agents ------------------------------------------------------------------
    async def deploy(self, manifest: Manifest | Path) -> KindInfo:
        """Build (cached) and deploy a kind: a Python agent on the dev runtime in ``dev``
        mode, its production component in ``release`` mode; C and Zig agents always as
        built for production."""
        if not isinstance(manifest, Manifest):
            manifest = await trio.to_thread.run_sync(load_manifest, manifest)
        cache_dir = self.host.config.cache_dir
        source = manifest.source
        name = source.name if source is not None else manifest.name
        if self.build == "dev" and source is not None and source.suffix == ".py":
            with self._progress(f"roost: building the dev runtime for {name} (once; cached)"):
                built = await trio.to_thread.run_sync(
                    partial(dev_build, manifest, cache_dir=cache_dir)
                )
            deployable = built.manifest
        else:
            with self._progress(f"roost: building {name} (cached by content)"):
                deployable = await trio.to_thread.run_sync(
                    partial(ensure_component, manifest, cache_dir=cache_dir)
                )
        with self._progress(f"roost: compiling {manifest.name} to native code (once; cached)"):
            info = await self.host.deploy(deployable)
        if self.kind is None:
            self.kind = info.name
        return info

    def agent(self, agent_id: str = "test", *, kind: str | None = None) -> AgentUnderTest:
        """The agent ``kind/agent_id`` (default: the first kind deployed)."""
        name = kind or self.kind
        if name is None:
            raise RuntimeError("deploy a kind before asking for one of its agents")
        address = AgentAddress(name, agent_id)
        found = self._agents.get(address)
        if found is None:
            found = self._agents[address] = AgentUnderTest(self, address)
            self._nursery.start_soon(found._collect_pushes)
        return found

    # -- time --------------------------------------------------------------------------------
    def now(self) -> float:
        """Unix time as the agents see it (``ctx.now()``): virtual."""
        return self.host.now()

    async def settle(self) -> None:
        """Wait until the host can only make progress if time passes: no turn or store call
        running, nothing runnable. Real work (wasm turns) still takes real time."""
        limiter = trio.to_thread.current_default_thread_limiter()
        deadline = time.monotonic() + REAL_TIMEOUT_S
        while True:
            await wait_all_tasks_blocked()
            if (
                self.host.turns_running == 0
                and self.host.store_calls_running == 0
                and limiter.statistics().borrowed_tokens == 0
            ):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the host stayed busy for {REAL_TIMEOUT_S:.0f} s of real time")
            await trio.to_thread.run_sync(time.sleep, 0.0005)

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` of virtual time pass, everything due on the way happening in order
        (timers fire, idle agents hibernate, sleeps end), each turn committed."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        target = trio.current_time() + seconds
        for _ in range(100_000):
            await self.settle()
            step = trio.lowlevel.current_statistics().seconds_to_next_deadline
            if trio.current_time() + step > target:
                break
            self.clock.jump(max(step, 1e-9))
        self.clock.jump(max(target - trio.current_time(), 0.0))
        await self.settle()

    async def _until(self, done: Callable[[], bool], limit_s: float, what: str) -> None:
        """Let virtual time pass, deadline by deadline, until ``done()`` (at most
        ``limit_s``)."""
        started = trio.current_time()
        while True:
            await self.settle()
            if done():
                return
            step = trio.lowlevel.current_statistics().seconds_to_next_deadline
            waited = trio.current_time() - started
            if math.isinf(step):
                raise AssertionError(
                    f"{what} still waits after {waited:g} virtual seconds, and nothing is due "
                    "that could end the wait"
                )
            if waited + step > limit_s:
                raise AssertionError(
                    f"{what} still waits after {waited:g} virtual seconds (the limit is "
                    f"{limit_s:g}); the next thing due is {step:g} s away"
                )
            self.clock.jump(max(step, 1e-9))

    async def hibernate_idle(self) -> None:
        """Hibernate every agent that is idle now (its next event wakes it from its
        committed state)."""
        await self.settle()
        self.host.hibernate_idle()
        await self.settle()

    # -- what agents sent -------------------------------------------------------------------
    async def sent(self) -> list[Sent]:
        """Messages agents sent to kinds not deployed here (``ctx.send``): they wait in the
        store, oldest first."""
        await self.settle()
        store = self.host.store
        due = await trio.to_thread.run_sync(store.due_deliveries, math.inf, 100_000)
        found = []
        for delivery in due:
            if delivery.event_kind != "agent":
                continue
            payload = unpack(delivery.payload)
            found.append(Sent(payload["sender"], str(delivery.address), payload["message"]))
        return found


class AgentUnderTest:
    """One agent of a :class:`HostUnderTest`: send it messages, look at what it keeps."""

    __test__ = False  # not a test class, whatever pytest's naming rules say

    def __init__(self, host: HostUnderTest, address: AgentAddress) -> None:
        self._test_host = host
        self.address = address
        self.pushes: list[Any] = []
        """Replies to events nobody waited on (timers, other agents' messages), in order."""
        self.tokens: list[str] = []
        """The tokens streamed to the caller while the last :meth:`send` was handled."""

    def __repr__(self) -> str:
        return f"AgentUnderTest({str(self.address)!r})"

    async def send(self, message: Any, *, within_s: float = SEND_TIMEOUT_S) -> list[Any]:
        """Send a message and return the replies of its whole handler. While the handler
        waits on an op (a sleep, the model, another agent), virtual time moves on to the
        next thing due, so ``await ctx.sleep(3600)`` takes no real time; it fails if the
        handler still waits after ``within_s`` virtual seconds."""
        tokens: list[str] = []
        self.tokens = tokens
        result: list[Any] = []
        error: list[BaseException] = []
        finished = trio.Event()

        async def run() -> None:
            try:
                result.extend(
                    await self._test_host.host.send(self.address, message, on_token=tokens.append)
                )
            except Exception as exc:
                error.append(exc)
            finally:
                finished.set()

        stuck: list[AssertionError] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            try:
                await self._test_host._until(finished.is_set, within_s, f"{self.address}'s handler")
            except AssertionError as exc:
                stuck.append(exc)
                nursery.cancel_scope.cancel()
        if stuck:
            raise stuck[0]
        if error:
            raise error[0]
        return result

    async def state(self) -> dict[str, Any]:
        """The agent's committed state (``ctx.state``); empty if it has none."""
        exported = await self._export()
        if exported is None or not exported.record.state:
            return {}
        state: dict[str, Any] = unpack(exported.record.state)
        return state

    async def kv(self) -> dict[str, bytes]:
        """The agent's committed key/value entries."""
        exported = await self._export()
        return {} if exported is None else dict(exported.kv)

    async def timers(self) -> list[Timer]:
        """The agent's durable timers, soonest first."""
        exported = await self._export()
        if exported is None:
            return []
        now = self._test_host.now()
        timers = [
            Timer(d.delivery_id, d.due_at - now, d.every_s, unpack(d.payload))
            for d in exported.deliveries
            if d.event_kind == "timer"
        ]
        return sorted(timers, key=lambda t: t.due_in_s)

    async def sent(self) -> list[Sent]:
        """What this agent sent to kinds not deployed here (see :meth:`HostUnderTest.sent`)."""
        return [s for s in await self._test_host.sent() if s.sender == str(self.address)]

    @property
    def logs(self) -> list[str]:
        """This agent's log lines (``ctx.log``), oldest first."""
        return [g.message for g in self._test_host.logs if g.address == str(self.address)]

    @property
    def resident(self) -> bool:
        """Whether an instance is in memory (False once hibernated)."""
        return self._test_host.host.is_resident(self.address)

    async def _export(self) -> Any:
        await self._test_host.settle()
        return await self._test_host.host.export(self.address)

    async def _collect_pushes(self) -> None:
        async with self._test_host.host.subscribe(self.address) as pushes:
            async for message in pushes:
                self.pushes.append(message)


class _LogCollector(logging.Handler):
    def __init__(self, logs: list[GuestLog]) -> None:
        super().__init__(logging.DEBUG)
        self._logs = logs

    def emit(self, record: logging.LogRecord) -> None:
        kind = getattr(record, "agent_kind", "")
        agent_id = getattr(record, "agent_id", "")
        address = f"{kind}/{agent_id}"
        message = record.getMessage().removeprefix(f"{address}: ")
        self._logs.append(GuestLog(address, record.levelname.lower(), message))


@asynccontextmanager
async def open_test_host(
    manifest: Manifest | Path | None = None,
    *,
    data_dir: Path,
    cache_dir: Path,
    build: BuildMode = "dev",
    show_progress: Progress = progress,
    **settings: Any,
) -> AsyncIterator[HostUnderTest]:
    """A :class:`HostUnderTest` with ``manifest``'s kind deployed (if given). Must run under
    trio's ``MockClock`` (the pytest plugin arranges it for tests that use its fixtures;
    elsewhere ``trio.run(main, clock=MockClock())``). ``settings`` are more
    :class:`~roost.HostConfig` fields; ``show_progress`` shows a build or a compilation
    that takes more than a second (on stderr by default)."""
    clock = trio.lowlevel.current_clock()
    if not isinstance(clock, MockClock):
        raise RuntimeError(
            "roost.testing drives time itself: run under trio's MockClock (the roost pytest "
            "plugin gives one to tests that use its fixtures, unless another clock fixture "
            "is requested)"
        )
    llm = FakeLlm()
    settings = {"deadline_cool_down_s": 0.0, **settings}  # run a runaway agent again at once
    config = HostConfig(
        data_dir=data_dir, cache_dir=cache_dir, llm_base_url=FAKE_LLM_URL, **settings
    )
    logs: list[GuestLog] = []
    guest_logger = logging.getLogger("roost.guest")
    collector = _LogCollector(logs)
    level = guest_logger.level
    guest_logger.addHandler(collector)
    guest_logger.setLevel(logging.DEBUG)
    try:
        async with open_host(config, http_transport=llm) as host, trio.open_nursery() as nursery:
            tested = HostUnderTest(host, clock, llm, nursery, build, show_progress)
            tested.logs = logs
            if manifest is not None:
                await tested.deploy(manifest)
            yield tested
            nursery.cancel_scope.cancel()
    finally:
        guest_logger.removeHandler(collector)
        guest_logger.setLevel(level)
