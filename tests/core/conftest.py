"""The core without the facade, around a scripted fake guest, on a MockClock.

Everything but the guest is real: a SQLite store in ``tmp_path``, capabilities bound from
the manifest's grants, the registry, the dispatcher and the delivery loop. The guest is a
:class:`ScriptedFactory`: each call into it runs a Python handler the test supplies, which
replies, changes state, finishes the event (or not), traps, and makes host calls the way a
real guest does, through the host functions of the kind's link table.

Turns run on the event loop (:class:`InlineWorkers`, ``AsyncStore(inline=True)``): no
worker-thread hop lets ``MockClock(autojump_threshold=0)`` jump while a turn runs, so tests
assert exact virtual times.
"""

from __future__ import annotations

import hashlib
import time
import types
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
import pytest
import trio
import trio.lowlevel
from trio.testing import MockClock

import roost.wall_clock
from roost._lifetime import open_service_nursery
from roost.abi import HostCallError, HostFunction, interface_name
from roost.address import AgentAddress
from roost.capabilities import HostServices, bind_capabilities, link_table
from roost.config import DEFAULT_MAX_ASKS_IN_FLIGHT, HostConfig
from roost.core.admission import QueueDelays
from roost.core.deliveries import DeliveryLoop
from roost.core.dispatch import Dispatcher, Pushes
from roost.core.kind import Kind, KindTable
from roost.core.leases import LeaseKeeper, incarnation
from roost.core.ops import Continuations
from roost.core.registry import Registry
from roost.core.services import CoreCounters, CoreServices, Doorbell
from roost.limits import Limits
from roost.manifest import Manifest
from roost.payload import pack, unpack
from roost.sandbox.protocol import GuestReply, TurnOutput
from roost.store.async_store import AsyncStore
from roost.store.protocol import AgentRecord, CatchUp, Commit, Delivery
from roost.store.sqlite import SqliteStore, open_sqlite_store
from roost.telemetry import Telemetry
from roost.wall_clock import WallClock

T = TypeVar("T")


@pytest.fixture
def clock() -> MockClock:
    """pytest-trio runs a test on the Clock among its arguments: request ``clock``."""
    return MockClock(autojump_threshold=0)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """A real SQLite store. Opened and closed on worker threads, so outside the test body
    (and its ``fail_after``), where no deadline lets the clock jump meanwhile."""
    async with open_sqlite_store(tmp_path / "roost.db") as opened:
        yield opened


# -- workers --------------------------------------------------------------------------------


class InlineWorkers:
    """Runs each turn on the event loop after a checkpoint (implements ``Workers``)."""

    def __init__(self) -> None:
        self.calls = 0
        """Turns handed to the workers (light kinds' inline turns do not count)."""
        self.running = 0

    async def run(self, call: Callable[[], T], *, owner: str, background: bool = False) -> T:
        await trio.lowlevel.checkpoint()
        self.calls += 1
        return call()

    def dispose(self, close: Callable[[], None]) -> None:
        close()


# -- the scripted guest ---------------------------------------------------------------------


@dataclass(eq=False)
class Call:
    """One call into a scripted guest (``on-event`` or ``on-complete``) and what the handler
    made of it."""

    export: Literal["on-event", "on-complete"]
    sandbox: ScriptedSandbox
    event_id: int
    at: float
    """Trio time of the call."""
    slice_ms: int | None
    event_kind: str = ""
    message: Any = None
    """The event's payload, unpacked (``on-event``)."""
    op_id: int | None = None
    ok: bool | None = None
    value: bytes | str | None = None
    """The op's result (``on-complete``)."""
    replies: list[GuestReply] = field(default_factory=list)
    done: bool = False
    new_state: bytes | None = None

    @property
    def state(self) -> Any:
        """The instance's current state (unpacked; None before any was committed)."""
        return self.sandbox.state

    def reply(self, value: Any) -> None:
        self.replies.append(GuestReply(self.event_id, pack(value)))

    def set_state(self, value: Any) -> None:
        self.new_state = pack(value)
        self.sandbox.state = value

    def finish(self) -> None:
        self.done = True

    def host(self, capability: str, function: str, *args: Any) -> Any:
        """Call a host function of the kind's link table, as a guest's import would."""
        return self.sandbox.factory.host_function(capability, function).call(*args)

    def start_op(self, capability: str, function: str, *args: Any) -> int:
        """A host call that starts an async op; the op's completion resumes this event."""
        op_id = self.host(capability, function, *args)
        if isinstance(op_id, HostCallError):
            raise AssertionError(f"{capability}.{function} failed: {op_id.message}")
        assert isinstance(op_id, int)
        self.sandbox.ops[op_id] = self.event_id
        self.sandbox.factory.op_ids.append(op_id)
        return op_id

    def sleep(self, seconds: float) -> int:
        return self.start_op("timers", "sleep", seconds)

    def ask(
        self,
        target: str,
        message: Any,
        *,
        timeout_s: float = 60.0,
        then: str | None = None,
        tag: Any = None,
    ) -> int:
        """``agents.ask`` of ``target`` (``kind/id``). Awaited by this event, unless ``then``
        names the handler that receives its result (the continuation form)."""
        kind, agent_id = target.split("/", 1)
        request: dict[str, Any] = {
            "kind": kind,
            "id": agent_id,
            "message": message,
            "timeout_s": timeout_s,
        }
        if then is None:
            return self.start_op("agents", "ask", pack(request))
        request.update(then=then, tag=tag)
        op_id = self.host("agents", "ask", pack(request))
        if isinstance(op_id, HostCallError):
            raise AssertionError(f"agents.ask failed: {op_id.message}")
        assert isinstance(op_id, int)
        return op_id


Handler = Callable[[Call], None]


class ScriptedSandbox:
    """One instance of a scripted guest (implements ``Sandbox``)."""

    def __init__(self, factory: ScriptedFactory, limits: Limits) -> None:
        self.factory = factory
        self.limits = limits
        self.address = ""
        self.state: Any = None
        self.restored: Any = None
        """The state ``init`` was handed (unpacked)."""
        self.closed = False
        self.ops: dict[int, int] = {}
        """Op id -> the event that awaits it."""
        self.memo: dict[Any, Any] = {}
        """Free for a handler to keep what it needs across the turns of this instance."""

    def init(self, config: bytes, state: bytes | None, *, slice_ms: int | None = None) -> None:
        assert not self.closed
        settings = unpack(config)
        self.address = f"{settings['kind']}/{settings['id']}"
        self.state = self.restored = None if state is None else unpack(state)

    def on_event(
        self, event_id: int, kind: str, payload: bytes, *, slice_ms: int | None = None
    ) -> TurnOutput:
        call = Call(
            "on-event",
            self,
            event_id,
            trio.current_time(),
            slice_ms,
            event_kind=kind,
            message=unpack(payload),
        )
        return self._run(call)

    def on_complete(
        self, op_id: int, ok: bool, value: bytes | str, *, slice_ms: int | None = None
    ) -> TurnOutput:
        event_id = self.ops.pop(op_id)
        call = Call(
            "on-complete",
            self,
            event_id,
            trio.current_time(),
            slice_ms,
            op_id=op_id,
            ok=ok,
            value=value,
        )
        return self._run(call)

    def _run(self, call: Call) -> TurnOutput:
        assert not self.closed, "a closed instance was called"
        self.factory.record(call)
        self.factory.handler(call)
        return TurnOutput(
            replies=call.replies,
            done=[call.event_id] if call.done else [],
            state=call.new_state,
        )

    def close(self) -> None:
        assert not self.closed, "an instance was closed twice"
        self.closed = True
        self.factory.closed.append(self.address)


class ScriptedFactory:
    """Makes scripted instances of one kind (implements ``SandboxFactory``); counts them."""

    def __init__(self, handler: Handler, *, light: bool = False) -> None:
        self.handler = handler
        self.light = light
        self.instances: list[ScriptedSandbox] = []
        self.closed: list[str] = []
        """The address of each instance closed, in order."""
        self.calls: list[Call] = []
        self.op_ids: list[int] = []
        self._link: dict[str, list[HostFunction]] = {}
        self._progress = trio.Event()

    def link(self, table: dict[str, list[HostFunction]]) -> None:
        """Link the host functions of the kind's capabilities (as the engine does)."""
        self._link = table

    def host_function(self, capability: str, function: str) -> HostFunction:
        for candidate in self._link.get(interface_name(capability), []):
            if candidate.name == function:
                return candidate
        raise AssertionError(f"{capability}.{function} is not linked (not granted?)")

    def instantiate(self, limits: Limits, *, slice_ms: int | None = None) -> ScriptedSandbox:
        sandbox = ScriptedSandbox(self, limits)
        self.instances.append(sandbox)
        return sandbox

    @property
    def instantiations(self) -> int:
        return len(self.instances)

    @property
    def closes(self) -> int:
        return len(self.closed)

    @property
    def live(self) -> list[ScriptedSandbox]:
        return [sandbox for sandbox in self.instances if not sandbox.closed]

    def record(self, call: Call) -> None:
        self.calls.append(call)
        self._progress.set()
        self._progress = trio.Event()

    def events(self) -> list[Call]:
        return [call for call in self.calls if call.export == "on-event"]

    async def wait_calls(self, count: int) -> None:
        """Until the guest has been called ``count`` times."""
        while len(self.calls) < count:
            await self._progress.wait()


def counter(call: Call) -> None:
    """Counts the events handled: replies with the new count and keeps it as state."""
    count = (call.state or {}).get("n", 0) + 1
    call.set_state({"n": count})
    call.reply(count)
    call.finish()


# -- kinds ----------------------------------------------------------------------------------


def manifest(
    name: str,
    *,
    capabilities: dict[str, dict[str, Any]] | None = None,
    version: str = "0.1.0",
    **limits: Any,
) -> Manifest:
    return Manifest.model_validate(
        {
            "name": name,
            "version": version,
            "capabilities": capabilities if capabilities is not None else {"timers": {}},
            "limits": limits,
        }
    )


def build_kind(manifest: Manifest, factory: ScriptedFactory, services: HostServices) -> Kind:
    """What ``Host.deploy`` builds, with the scripted factory linked to the bound
    capabilities' host functions instead of a compiled component."""
    capabilities = bind_capabilities(manifest.capabilities, services)
    factory.link(link_table(capabilities))
    digest = hashlib.sha256(f"{manifest.name}:{id(factory)}".encode()).hexdigest()
    return Kind(manifest, capabilities, factory, digest)


# -- the core -------------------------------------------------------------------------------


def whole_second_wall_clock() -> WallClock:
    """A WallClock (made now, inside the trio run) whose wall base is a whole second, so the
    unix time of any whole (or binary-fraction) virtual time is an exact float and a timer
    committed for ``now + 10`` comes due at exactly +10 s of trio time."""

    def whole_second() -> float:
        return float(int(time.time()))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(roost.wall_clock, "time", types.SimpleNamespace(time=whole_second))
        return WallClock()


@dataclass
class Core:
    """The core's parts, wired as the facade wires them."""

    services: CoreServices
    kinds: KindTable
    registry: Registry
    dispatcher: Dispatcher
    pushes: Pushes
    deliveries: DeliveryLoop
    host_services: HostServices
    workers: InlineWorkers
    continuations: Continuations

    @property
    def store(self) -> SqliteStore:
        store = self.services.store
        assert isinstance(store, SqliteStore)
        return store

    def deploy(self, manifest: Manifest, factory: ScriptedFactory) -> Kind:
        """Put a kind in the table and tell the delivery loop (as ``Host.deploy`` does)."""
        kind = build_kind(manifest, factory, self.host_services)
        self.kinds.put(kind)
        self.deliveries.kind_deployed(kind.name)
        self.continuations.kind_deployed(kind.name)
        return kind

    async def send(
        self, address: str, message: Any, *, on_reply: Callable[[Any], None] | None = None
    ) -> list[Any]:
        return await self.dispatcher.deliver(
            AgentAddress.parse(address), "message", message, on_reply=on_reply
        )

    async def commit_delivery(
        self,
        address: str,
        delivery_id: str,
        *,
        after_s: float,
        payload: Any = None,
        every_s: float | None = None,
        event_kind: str = "timer",
        catch_up: CatchUp = "once",
    ) -> Delivery:
        """Write a delivery into the store the way the host does, and ring the doorbell
        (``after_s`` may be negative: a delivery that fell due while the host was down)."""
        now = self.services.clock.now()
        target = AgentAddress.parse(address)
        delivery = Delivery(
            target,
            delivery_id,
            now + after_s,
            event_kind,
            pack(payload),
            every_s=every_s,
            catch_up=catch_up,
        )
        await self.services.stores.commit(Commit(target, at=now, turn=False, deliveries=[delivery]))
        self.services.deliveries_due.ring()
        return delivery

    def record(self, address: str) -> AgentRecord | None:
        return self.store.read_agent(AgentAddress.parse(address))

    def state(self, address: str) -> Any:
        record = self.record(address)
        return None if record is None or record.state is None else unpack(record.state)

    def trio_time(self, unix_time: float) -> float:
        return self.services.clock.trio_time(unix_time)


@asynccontextmanager
async def open_core(
    store: SqliteStore,
    *,
    max_resident: int = 1000,
    max_in_flight: int = 1000,
    inline_slice_ms: int = 0,
    max_delivery_attempts: int = 100,
    wall_clock: WallClock | None = None,
    cool_down_s: float = 10.0,
    memory_cap_bytes: int | None = None,
    max_asks_in_flight: int = DEFAULT_MAX_ASKS_IN_FLIGHT,
) -> AsyncIterator[Core]:
    """The core on ``store``, with its delivery loop running; cancelled on exit.

    A core opened again on the same store after the first one was cancelled is the host
    restarting after a crash; pass the first core's ``services.clock`` as ``wall_clock``
    so that unix times stored before the crash keep their place in virtual time."""
    telemetry = Telemetry.off()
    workers = InlineWorkers()
    stores = AsyncStore(store, inline=True)
    services = CoreServices(
        store=store,
        stores=stores,
        clock=wall_clock if wall_clock is not None else whole_second_wall_clock(),
        telemetry=telemetry,
        metrics=telemetry.host_metrics(),
        workers=workers,
        counters=CoreCounters(),
        queue_delay=QueueDelays(target_s=3600.0, interval_s=3600.0),
        deliveries_due=Doorbell(),
        epoch_tick_ms=10,
        inline_slice_ms=inline_slice_ms,
        leases=LeaseKeeper(stores, owner=incarnation("test-host"), ttl_s=30.0),
    )
    kinds = KindTable()
    async with httpx.AsyncClient() as http_client, open_service_nursery() as nursery:
        continuations = Continuations(services, kinds, nursery)
        registry = Registry(
            services,
            nursery,
            continuations,
            max_resident=max_resident,
            max_in_flight=max_in_flight,
            cool_down_s=cool_down_s,
            memory_cap_bytes=memory_cap_bytes,
        )
        dispatcher = Dispatcher(services, kinds, registry, max_asks_in_flight=max_asks_in_flight)
        pushes = Pushes()
        deliveries = DeliveryLoop(
            services, kinds, dispatcher, pushes, max_attempts=max_delivery_attempts
        )
        host_services = HostServices(
            settings=HostConfig.model_validate({}),  # defaults, not the environment
            http_client=http_client,
            metrics=services.metrics,
            ask=dispatcher.ask,
        )
        await nursery.start(services.leases.run)
        await nursery.start(deliveries.run)
        try:
            yield Core(
                services,
                kinds,
                registry,
                dispatcher,
                pushes,
                deliveries,
                host_services,
                workers,
                continuations,
            )
        finally:
            nursery.cancel_scope.cancel()
