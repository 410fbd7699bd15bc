"""The embedding API: open a host on a store, deploy kinds, send events to agents.

This facade wires the parts together (store, sandbox engine, capabilities, the core's
registry, dispatcher and delivery loop) and answers questions about them; the work is done
below it, and nothing below calls back up to it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import trio

from ._lifetime import open_service_nursery
from ._outbound import ShardedTransport
from ._tracebacks import with_source_paths
from .address import AgentAddress, validate_agent_id, validate_kind_name
from .capabilities import HostServices, bind_capabilities, link_table
from .capabilities.approval import ApprovalDesk, decision_of
from .config import HostConfig, load_config, load_telemetry_config
from .core.admission import QueueDelays, machine_memory_bytes
from .core.background_threads import BackgroundThreads
from .core.deliveries import DeliveryLoop
from .core.dispatch import Dispatcher, Pushes
from .core.envelope import EventTiming
from .core.kind import Kind, KindInfo, KindTable
from .core.leases import LeaseKeeper, incarnation
from .core.ops import Continuations
from .core.registry import Registry
from .core.services import CoreCounters, CoreServices, Doorbell, Peers, WorkerPool
from .errors import (
    AgentExists,
    DeployError,
    GuestError,
    ManifestError,
    RoostError,
    UnknownAgent,
)
from .manifest import Manifest, load_manifest
from .payload import unpack
from .sandbox import WasmEngine, open_engine
from .sandbox.protocol import SandboxFactory
from .store.async_store import AsyncStore
from .store.postgres import open_postgres_store
from .store.protocol import (
    INBOX_KINDS,
    AgentExport,
    AgentRecord,
    AgentSummary,
    Approval,
    Delivery,
    StateStore,
    Usage,
)
from .store.sqlite import open_sqlite_store
from .telemetry import HostMetrics, HostStatistics, Telemetry, gc_pause_seconds
from .wall_clock import WallClock, utc_day


@dataclass(frozen=True)
class ApprovalInfo:
    """An approval an agent asked for (see the ``approval`` capability)."""

    id: str
    action: str
    details: Any
    requested_at: float
    expires_at: float | None
    decision: str | None = None
    """None while it waits; ``approved``, ``rejected`` or ``expired``."""
    decided_at: float | None = None
    decided_by: str | None = None
    note: str | None = None

    @classmethod
    def of(cls, approval: Approval) -> ApprovalInfo:
        try:
            asked = unpack(approval.request)
        except Exception:
            asked = {}
        if not isinstance(asked, dict):
            asked = {}
        return cls(
            id=approval.approval_id,
            action=str(asked.get("action", "")),
            details=asked.get("details"),
            requested_at=approval.requested_at,
            expires_at=approval.expires_at,
            decision=approval.decision,
            decided_at=approval.decided_at,
            decided_by=approval.decided_by,
            note=approval.note,
        )


@dataclass(frozen=True)
class AgentStatus:
    address: str
    resident: bool
    """True while an instance is in memory; False when hibernated (or never woken)."""
    turns: int
    state_bytes: int
    kv_bytes: int
    created_at: float | None
    last_active_at: float | None
    """Unix time of the last committed turn."""
    usage_today: Usage
    """Turns, CPU time, LLM tokens, HTTP calls and failed turns so far this UTC day."""
    held_resident_by: tuple[str, ...] = ()
    """Why the agent is still resident although no turn committed for longer than its idle
    timeout: ``pending_op`` (a handler awaits an op), ``turn_running``,
    ``mailbox_not_empty``. Empty when it is not held."""
    pending_ops: int = 0
    """Ops the event being handled awaits."""
    mailbox_depth: int = 0
    """Events queued for the agent."""
    open_sockets: int = 0
    """WebSockets open to the agent. They do not keep it resident: it hibernates under an
    open socket and the next frame wakes it."""
    pending_timers: int = 0
    """Durable timers set and not fired yet."""
    inbox: int = 0
    """Messages accepted whose handler has not finished (resumed after a crash)."""
    dead_letters: int = 0
    """Deliveries that kept failing and were given up (see the agent's export)."""
    approvals: tuple[ApprovalInfo, ...] = ()
    """Approvals the agent asked for that nobody decided yet, oldest first."""


@dataclass(frozen=True)
class Residency:
    """Whether an agent is in memory and what holds it there: the part of
    :class:`AgentStatus` the host knows without reading the store."""

    resident: bool
    held_resident_by: tuple[str, ...] = ()
    """See :attr:`AgentStatus.held_resident_by`."""
    pending_ops: int = 0
    mailbox_depth: int = 0


@asynccontextmanager
async def open_host(
    config: HostConfig | None = None,
    *,
    store: StateStore | None = None,
    telemetry: Telemetry | None = None,
    http_transport: httpx.AsyncBaseTransport | None = None,
    peers: Peers | None = None,
) -> AsyncIterator[Host]:
    """Open a host. Without ``store``, uses the PostgreSQL database of ``config.store_url``
    when set, else the embedded SQLite store in ``config.data_dir``. On a store several
    hosts share, ``peers`` forwards events for agents another host serves (``roost serve``
    passes one that speaks HTTP); without it such events fail with OwnedElsewhere.
    Without ``telemetry``, OpenTelemetry is set up from the ``OTEL_*`` environment (off
    unless it names an exporter or an endpoint) and shut down with the host; a given
    ``telemetry`` stays the caller's. ``http_transport`` carries the host's outbound
    requests (the llm and http capabilities) instead of the network, e.g. to a fake model
    provider in tests (``roost.testing``).

    Leaving the block stops accepting events, lets in-flight events finish, hibernates every
    agent and closes the store.
    """
    config = config or load_config()
    async with AsyncExitStack() as stack:
        if telemetry is None:
            telemetry = Telemetry.from_config(load_telemetry_config())
            stack.callback(telemetry.shutdown)
        if store is None and config.store_url is not None:
            store = await stack.enter_async_context(open_postgres_store(config.store_url))
        elif store is None:
            store = await stack.enter_async_context(
                open_sqlite_store(config.database_path, synchronous=config.sqlite_synchronous)
            )
        engine = stack.enter_context(
            open_engine(cache_dir=config.cache_dir, epoch_tick_ms=config.epoch_tick_ms)
        )
        http_client = await stack.enter_async_context(
            httpx.AsyncClient(
                timeout=httpx.Timeout(60.0, connect=10.0),
                follow_redirects=False,
                transport=http_transport or ShardedTransport(),
            )
        )
        async with open_service_nursery() as nursery:
            host = Host(config, store, engine, nursery, http_client, telemetry, peers)
            stack.callback(host._workers.close)  # once every turn has ended
            await nursery.start(host._leases.run)
            await nursery.start(host._deliveries.run)
            nursery.start_soon(host._continuations.resume)
            nursery.start_soon(host._prune_responses)
            nursery.start_soon(host._prune_approvals)
            if telemetry.meter is not None:
                telemetry.observe_host(lambda: host.last_statistics)
                nursery.start_soon(host._refresh_statistics, telemetry.refresh_interval_s)
            try:
                yield host
            finally:
                await host.aclose()
                with trio.CancelScope(shield=True):
                    await host._leases.aclose()
                nursery.cancel_scope.cancel()


class Host:
    """A running host. Create it with :func:`open_host`."""

    def __init__(
        self,
        config: HostConfig,
        store: StateStore,
        engine: WasmEngine,
        nursery: trio.Nursery,
        http_client: httpx.AsyncClient,
        telemetry: Telemetry | None = None,
        peers: Peers | None = None,
    ) -> None:
        self.config = config
        self.telemetry = telemetry or Telemetry.off()
        self.store = store
        # Store calls from the loop share a few threads: many concurrent requests queue here
        # instead of piling threads (and read connections) onto the store. Commits have
        # threads of their own.
        self._stores = AsyncStore(
            store,
            limiter=trio.CapacityLimiter(_STORE_THREADS),
            commit_limiter=trio.CapacityLimiter(_STORE_THREADS),
        )
        self._leases = LeaseKeeper(
            self._stores, owner=incarnation(config.host_id), ttl_s=config.lease_ttl_s
        )
        self._engine = engine
        self._workers = WorkerPool(
            config.worker_threads, background=BackgroundThreads(config.worker_threads)
        )
        self._services = CoreServices(
            store=store,
            stores=self._stores,
            clock=WallClock(),
            telemetry=self.telemetry,
            metrics=self.telemetry.host_metrics(),
            workers=self._workers,
            counters=CoreCounters(),
            queue_delay=QueueDelays(
                target_s=config.queue_target_ms / 1000, interval_s=config.queue_interval_ms / 1000
            ),
            deliveries_due=Doorbell(),
            epoch_tick_ms=config.epoch_tick_ms,
            inline_slice_ms=config.inline_slice_ms,
            leases=self._leases,
            peers=peers,
            recheck_s=_SHARED_RECHECK_S if self._leases.shared else _RECHECK_S,
        )
        self._kinds = KindTable()
        self._continuations = Continuations(self._services, self._kinds, nursery)
        self._registry = Registry(
            self._services,
            nursery,
            self._continuations,
            max_resident=config.max_resident_agents,
            max_in_flight=config.max_in_flight,
            cool_down_s=config.deadline_cool_down_s,
            activations_per_s=config.max_activations_per_s,
            memory_cap_bytes=config.max_host_memory_bytes
            or machine_memory_bytes() * 3 // 4
            or None,
        )
        self._dispatcher = Dispatcher(
            self._services,
            self._kinds,
            self._registry,
            max_asks_in_flight=config.max_asks_in_flight,
        )
        self._pushes = Pushes()
        self._deliveries = DeliveryLoop(
            self._services,
            self._kinds,
            self._dispatcher,
            self._pushes,
            max_attempts=config.max_delivery_attempts,
        )
        self._approvals = ApprovalDesk(
            self._stores, self._services.clock, poll_s=config.approval_poll_s
        )
        self._capability_services = HostServices(
            settings=config,
            http_client=http_client,
            metrics=self._services.metrics,
            ask=self._dispatcher.ask,
            approvals=self._approvals,
        )
        gc_pause_seconds()  # start timing the collector's pauses
        self.last_statistics: HostStatistics | None = None
        """The statistics of the last :meth:`statistics` call (observable metrics read it)."""
        self._closed = False

    async def deploy(
        self,
        manifest: Manifest | Path | str,
        *,
        component: Path | str | None = None,
        wasm: bytes | None = None,
    ) -> KindInfo:
        """Deploy (or redeploy) a kind from a manifest; ``component`` overrides its
        component's path, ``wasm`` gives the component itself. Agents of a redeployed kind
        that are resident finish what they are doing and continue on the new version.

        Fails with DeployError naming every import the manifest does not grant; a kind that
        fails to deploy leaves the one deployed before in service."""
        manifest = await trio.to_thread.run_sync(_resolve_manifest, manifest, component)
        if wasm is None and manifest.component is None:
            raise ManifestError(
                f"kind {manifest.name!r}: no component; set `component` in the manifest or pass one"
            )
        _check_host_maxima(manifest, self.config)
        capabilities = bind_capabilities(manifest.capabilities, self._capability_services)
        component_path = manifest.component
        name = manifest.name

        def load() -> tuple[bytes, SandboxFactory]:
            code = wasm
            if code is None:
                assert component_path is not None
                try:
                    code = component_path.read_bytes()
                except OSError as exc:
                    raise DeployError(
                        f"kind {name!r}: cannot read component {component_path}: "
                        f"{exc.strerror}; build it with `roost build`"
                    ) from None
            return code, self._engine.load_kind(name, code, link_table(capabilities))

        code, factory = await trio.to_thread.run_sync(load)
        kind = Kind(manifest, capabilities, factory, hashlib.sha256(code).hexdigest())
        self._kinds.put(kind)
        self._deliveries.kind_deployed(manifest.name)
        self._continuations.kind_deployed(manifest.name)
        return kind.info()

    def kinds(self) -> list[KindInfo]:
        return [kind.info() for kind in self._kinds]

    def manifest(self, kind: str) -> Manifest:
        """The manifest ``kind`` is deployed with (grants, limits, budgets, config); raises
        UnknownKind when no such kind is deployed."""
        return self._kinds.of(AgentAddress(kind, "-")).manifest

    async def send(
        self,
        address: AgentAddress | str,
        message: Any,
        *,
        idempotency_key: str | None = None,
        on_reply: Callable[[Any], None] | None = None,
        on_token: Callable[[str], None] | None = None,
        timing: EventTiming | None = None,
        admitted: bool = False,
    ) -> list[Any]:
        """Deliver a user message to ``kind/id`` and return the agent's replies once the
        handler finished and every turn it took has committed. A new message may be refused
        (Overloaded) while the kind's events queue (:meth:`check_admission`; ``admitted``:
        the caller has checked already).

        ``on_reply`` sees each reply as soon as the turn that produced it committed (for
        streaming). With ``idempotency_key``, a retry of a handled message returns the first
        result without running the handler again, across restarts. ``timing`` is filled in
        with where the time went (the time spent waiting on async ops)."""
        return await self.deliver(
            address,
            "message",
            message,
            idempotency_key=idempotency_key,
            on_reply=on_reply,
            on_token=on_token,
            timing=timing,
            admitted=admitted,
        )

    async def deliver(
        self,
        address: AgentAddress | str,
        event_kind: str,
        payload: Any,
        *,
        idempotency_key: str | None = None,
        on_reply: Callable[[Any], None] | None = None,
        on_token: Callable[[str], None] | None = None,
        timing: EventTiming | None = None,
        admitted: bool = False,
        after_commit: Callable[[], None] | None = None,
    ) -> list[Any]:
        """Deliver any event kind (``message``, ``timer``, ``agent``, ``continuation``) from
        outside the host: refused (Overloaded) while the kind's events queue, unless
        ``admitted`` (the caller ran :meth:`check_admission`). ``after_commit`` runs on the
        thread of the handler's final commit, right after it. Events the host's agents
        cause (asks, messages between agents, timers) are work already accepted: they are
        not shed this way.

        A guest error's traceback names the agent's files by their real paths when the kind
        was deployed from a manifest with a ``source``."""
        address = _address(address)
        if not admitted:
            self._registry.check_admission(address.kind)
        try:
            return await self._dispatcher.deliver(
                address,
                event_kind,
                payload,
                idempotency_key=idempotency_key,
                on_reply=on_reply,
                on_token=on_token,
                timing=timing,
                after_commit=after_commit,
            )
        except GuestError as exc:
            self._point_home(address, exc)
            raise

    async def deliver_forwarded(
        self,
        address: AgentAddress,
        event_kind: str,
        payload: bytes,
        *,
        idempotency_key: str | None,
        chain: tuple[str, ...],
        on_reply: Callable[[Any], None] | None = None,
        on_token: Callable[[str], None] | None = None,
    ) -> list[Any]:
        """An event another host sharing the store forwarded here (``payload`` is msgpack):
        handled here or refused (OwnedElsewhere), never forwarded again."""
        return await self._dispatcher.deliver(
            address,
            event_kind,
            unpack(payload),
            idempotency_key=idempotency_key,
            chain=chain,
            on_reply=on_reply,
            on_token=on_token,
            forward=False,
        )

    def _point_home(self, address: AgentAddress, exc: GuestError) -> None:
        kind = next((k for k in self._kinds if k.name == address.kind), None)
        source = None if kind is None else kind.manifest.source
        if source is not None and exc.guest_traceback:
            exc.guest_traceback = with_source_paths(exc.guest_traceback, source.parent)

    async def send_with_status(
        self,
        address: AgentAddress | str,
        message: Any,
        *,
        idempotency_key: str | None = None,
        timing: EventTiming | None = None,
        admitted: bool = False,
    ) -> tuple[list[Any], AgentStatus]:
        """:meth:`send` (``admitted`` as there), then :meth:`agent_status` as the handler
        left it. The status is read on the thread of the handler's final commit, right after
        it, when that is where it committed (one worker-thread trip fewer per message)."""
        address = _address(address)
        day = utc_day(self._services.clock.now())  # on the loop: the clock may be trio's
        read: list[_StoredStatus] = []

        def after_commit() -> None:
            try:
                read.append(self._read_status(address, day))
            except Exception:  # the commit stands: read it again below
                logger.debug("status read after the commit failed", exc_info=True)

        replies = await self.deliver(
            address,
            "message",
            message,
            idempotency_key=idempotency_key,
            timing=timing,
            admitted=admitted,
            after_commit=after_commit,
        )
        if not read:
            return replies, await self.agent_status(address)
        return replies, self._status(address, read[-1])

    async def agent_status(self, address: AgentAddress | str) -> AgentStatus:
        """What the host keeps about one agent. Agents are virtual: one that never handled
        an event has zero turns."""
        address = _address(address)
        day = utc_day(self._services.clock.now())
        return self._status(address, await self._stores.run(self._read_status, address, day))

    def _status(self, address: AgentAddress, stored: _StoredStatus) -> AgentStatus:
        record, usage, deliveries, dead, approvals = stored
        actor = self._registry.actor(address)
        return AgentStatus(
            address=str(address),
            resident=actor is not None,
            turns=record.turns if record else 0,
            state_bytes=len(record.state or b"") if record else 0,
            kv_bytes=record.kv_bytes if record else 0,
            created_at=record.created_at if record else None,
            last_active_at=record.updated_at if record else None,
            usage_today=usage,
            held_resident_by=() if actor is None else actor.held_by(trio.current_time()),
            pending_ops=0 if actor is None else actor.pending_ops,
            mailbox_depth=0 if actor is None else actor.queued,
            open_sockets=self._pushes.count(address),
            pending_timers=sum(1 for d in deliveries if d.event_kind == "timer"),
            inbox=sum(1 for d in deliveries if d.event_kind in INBOX_KINDS),
            dead_letters=dead,
            approvals=tuple(ApprovalInfo.of(a) for a in approvals if a.decision is None),
        )

    def _read_status(self, address: AgentAddress, day: str) -> _StoredStatus:
        """The agent's record, its usage on ``day``, its deliveries, how many dead letters
        it has and its approvals, in one worker-thread trip."""
        store = self.store
        return (
            store.read_agent(address),
            store.read_usage(address, day),
            store.read_deliveries(address),
            len(store.read_dead_letters(address)),
            store.read_approvals(address),
        )

    async def approvals(self, address: AgentAddress | str) -> list[ApprovalInfo]:
        """The approvals the agent asked for, waiting and decided (decided ones until they
        are pruned, ``approval_retention_s`` after their decision), oldest first."""
        approvals = await self._stores.run(self.store.read_approvals, _address(address))
        return [ApprovalInfo.of(a) for a in approvals]

    async def decide_approval(
        self,
        address: AgentAddress | str,
        approval_id: str,
        *,
        approve: bool,
        by: str,
        note: str | None = None,
    ) -> dict[str, Any]:
        """Approve or reject an approval the agent asked for; the op waiting for it
        completes with the decision (returned here as the agent gets it). Deciding it again
        the same way returns the decision; the other way (or after it expired) raises
        ApprovalDecided; an approval the agent never asked for, UnknownApproval."""
        decided = await self._approvals.decide(
            _address(address), approval_id, "approved" if approve else "rejected", by=by, note=note
        )
        return decision_of(decided)

    async def erase(self, address: AgentAddress | str) -> bool:
        """Drop the agent's instance and erase everything held for it. Returns whether
        there was anything to erase."""
        address = _address(address)
        async with self._registry.fenced(address):
            return await self._stores.run(self.store.delete_agent, address)

    async def fork(self, address: AgentAddress | str, new_id: str) -> AgentAddress:
        """Copy the agent's committed state and kv into a new agent of the same kind."""
        source = _address(address)
        target = AgentAddress(source.kind, new_id)
        async with self._registry.fenced(target):
            outcome = await self._stores.run(self.store.fork_agent, source, target)
        if outcome == "source_missing":
            raise UnknownAgent(
                f"agent {source} has no committed state to fork", address=str(source)
            )
        if outcome == "target_exists":
            raise AgentExists(
                f"agent {target} already exists; fork to a new id", address=str(target)
            )
        return target

    async def export(self, address: AgentAddress | str) -> AgentExport | None:
        """Everything the host keeps for one agent (state, kv, counters)."""
        return await self._stores.run(self.store.export_agent, _address(address))

    async def list_agents(
        self, kind: str, *, after: str | None = None, limit: int = 100
    ) -> list[AgentSummary]:
        """One page of the agents of ``kind`` that have committed state, ordered by id."""
        validate_kind_name(kind)
        return await self._stores.run(self.store.list_agents, kind, after=after, limit=limit)

    async def find_agents(
        self, kind: str, prefix: str, *, after: str | None = None, limit: int = 100
    ) -> list[AgentSummary]:
        """One page of the agents of ``kind`` whose id starts with ``prefix``, ordered by id
        (after ``after``, when given). Ids sharing a prefix sort together, right after the
        prefix itself, so a page costs one point read and one range read."""
        validate_kind_name(kind)
        if not prefix:
            return await self.list_agents(kind, after=after, limit=limit)
        validate_agent_id(prefix)
        return await self._stores.run(self._find_agents, kind, prefix, after, limit)

    def _find_agents(
        self, kind: str, prefix: str, after: str | None, limit: int
    ) -> list[AgentSummary]:
        found: list[AgentSummary] = []
        if after is None or after < prefix:
            record = self.store.read_agent(AgentAddress(kind, prefix))
            if record is not None:
                found.append(
                    AgentSummary(
                        prefix,
                        len(record.state or b""),
                        record.kv_bytes,
                        record.turns,
                        record.created_at,
                        record.updated_at,
                    )
                )
            after = prefix
        for summary in self.store.list_agents(kind, after=after, limit=limit - len(found)):
            if not summary.id.startswith(prefix):
                break
            found.append(summary)
        return found

    async def count_agents(self, kind: str | None = None) -> int:
        """Agents (of ``kind``, or all) that have committed state."""
        if kind is not None:
            validate_kind_name(kind)
        return await self._stores.run(self.store.count_agents, kind)

    def residency(self, address: AgentAddress | str) -> Residency:
        """Whether the agent is resident and what holds it, without reading the store."""
        actor = self._registry.actor(_address(address))
        if actor is None:
            return Residency(resident=False)
        return Residency(
            resident=True,
            held_resident_by=actor.held_by(trio.current_time()),
            pending_ops=actor.pending_ops,
            mailbox_depth=actor.queued,
        )

    @asynccontextmanager
    async def subscribe(
        self, address: AgentAddress | str
    ) -> AsyncIterator[trio.MemoryReceiveChannel[Any]]:
        """Replies the agent produces for events nobody is waiting on (timers, messages
        from other agents, continuations), while the block is open. Used by WebSockets.

        The host holds the agent's lease while the block is open, so that those events are
        handled here; on a shared store, OwnedElsewhere if another host serves the agent
        (subscribe there)."""
        address = _address(address)
        await self._leases.acquire(address)
        self._leases.hold(address)
        try:
            async with self._pushes.subscribe(address) as channel:
                yield channel
        finally:
            self._leases.unhold(address)

    @property
    def host_id(self) -> str:
        """This host's lease holder name: ``"<host id>/<nonce>"``."""
        return self._leases.owner

    @property
    def shared_store(self) -> bool:
        """Whether the store is shared with other hosts (PostgreSQL)."""
        return self._leases.shared

    async def advertise(self, url: str) -> None:
        """Announce the URL other hosts sharing the store reach this one at (forwarded
        events). ``roost serve`` calls it once it listens."""
        await self._leases.advertise(url)

    def leases_held(self) -> int:
        """Agents' leases this host holds now."""
        return self._leases.held

    def check_admission(self, kind: str | None = None) -> None:
        """Raise Overloaded (with ``retry_after_s``) if the host takes no new event now
        (for ``kind``, when given): shutting down, at its in-flight cap, or the kind's
        events queueing past ``queue_target_ms``. Cheap: a request's first step, before its
        body is read."""
        self._registry.check_admission(kind)

    def metrics(self) -> HostMetrics:
        """The host's counters and histograms (also what the API records into)."""
        return self._services.metrics

    def now(self) -> float:
        """Unix time as the host sees it: what ``ctx.now()`` returns and timers are due
        against. It follows trio's clock, so a test's ``MockClock`` moves it."""
        return self._services.clock.now()

    @property
    def turns_running(self) -> int:
        """Guest calls running on (or waiting for) a worker thread now. With
        :attr:`store_calls_running`, it tells a test driving a virtual clock whether the
        host is waiting on real work or only on time."""
        return self._workers.running

    @property
    def waiting_on_ops(self) -> int:
        """Handlers waiting on their async ops now (LLM and HTTP calls, asks, sleeps):
        events in flight that take no CPU until an op completes."""
        return self._services.counters.waiting_on_ops

    @property
    def events_handled(self) -> int:
        """Events delivered to agents and answered since the host opened."""
        return self._services.counters.events_handled

    @property
    def store_calls_running(self) -> int:
        """Store calls running on (or waiting for) a thread now."""
        return self._stores.calls_running

    def is_resident(self, address: AgentAddress | str) -> bool:
        return self._registry.is_resident(_address(address))

    def hibernate_idle(self) -> None:
        """Hibernate every agent that is idle right now."""
        self._registry.hibernate_all()

    async def statistics(self) -> HostStatistics:
        registry = self._registry
        counters = self._services.counters
        metrics = self._services.metrics
        stored = await self._stores.run(self.store.count_agents)
        dead_letters = await self._stores.run(self.store.count_dead_letters)
        resident = registry.resident
        self.last_statistics = statistics = HostStatistics(
            resident=resident,
            hibernated=max(stored - resident, 0),
            activations=counters.activations,
            hibernations=counters.hibernations,
            turns=counters.turns,
            in_flight=registry.in_flight,
            kinds=len(self._kinds),
            denied={
                f"{kind.name}/{name}": capability.denied
                for kind in self._kinds
                for name, capability in sorted(kind.capabilities.items())
            },
            traps=metrics.traps(),
            llm_tokens=metrics.tokens(),
            mailbox_depth=registry.mailbox_depth(),
            held_resident=registry.held_resident(),
            rejected=metrics.rejections(),
            websockets_open=metrics.websockets_open,
            wake_seconds=metrics.wake_seconds(),
            turn_seconds=metrics.turn_seconds(),
            gc_pause_seconds=gc_pause_seconds(),
            dead_letters=dead_letters,
            llm_calls=metrics.llm_calls(),
            llm_call_seconds=metrics.llm_call_seconds(),
            cooling_down=registry.cooling_down,
            cool_downs=metrics.cool_downs(),
        )
        return statistics

    async def _prune_responses(self) -> None:
        """Delete the idempotency records older than ``idempotency_retention_s``, every
        tenth of that (at most hourly)."""
        retention = self.config.idempotency_retention_s
        while True:
            await trio.sleep(min(retention / 10, _PRUNE_EVERY_MAX_S))
            older_than = self._services.clock.now() - retention
            try:
                pruned = await self._stores.run(self.store.prune_responses, older_than)
            except RoostError as exc:
                logger.warning("pruning idempotency records failed: %s", exc)
            else:
                if pruned:
                    logger.info("pruned %d idempotency records", pruned)

    async def _prune_approvals(self) -> None:
        """Delete the approvals decided more than ``approval_retention_s`` ago, every tenth
        of that (at most hourly)."""
        retention = self.config.approval_retention_s
        while True:
            await trio.sleep(min(retention / 10, _PRUNE_EVERY_MAX_S))
            decided_before = self._services.clock.now() - retention
            try:
                pruned = await self._stores.run(self.store.prune_approvals, decided_before)
            except RoostError as exc:
                logger.warning("pruning approvals failed: %s", exc)
            else:
                if pruned:
                    logger.info("pruned %d decided approvals", pruned)

    async def _refresh_statistics(self, interval_s: float) -> None:
        """Keep :attr:`last_statistics` fresh for the metric exporter's thread."""
        while True:
            try:
                await self.statistics()
            except Exception as exc:  # a failed refresh leaves the previous snapshot
                logger.warning("refreshing host statistics failed: %s", exc)
            await trio.sleep(interval_s)

    async def aclose(self) -> None:
        """Stop accepting, let in-flight events finish, hibernate everyone."""
        if self._closed:
            return
        self._closed = True
        await self._registry.drain()


logger = logging.getLogger("roost.host")
_PRUNE_EVERY_MAX_S = 3600.0
_STORE_THREADS = 4
"""Threads the event loop's store calls share (a turn's reads run on its worker thread)."""
_RECHECK_S = 60.0
_SHARED_RECHECK_S = 1.0
"""On a shared store, other hosts add due work no doorbell here announces: look every
second (one indexed query per host)."""

T = TypeVar("T")
_StoredStatus = tuple[AgentRecord | None, Usage, list[Delivery], int, list[Approval]]
"""What the store holds about an agent for its status: record, usage today, deliveries,
dead letters, approvals."""


def _check_host_maxima(manifest: Manifest, config: HostConfig) -> None:
    """Refuse a kind that asks for more than the host allows any kind."""
    limits = manifest.limits
    problems = []
    if limits.cpu_deadline_ms > config.max_cpu_deadline_ms:
        problems.append(
            f"limits.cpu_deadline_ms = {limits.cpu_deadline_ms} is over the host's "
            f"max_cpu_deadline_ms = {config.max_cpu_deadline_ms}"
        )
    if limits.max_memory_bytes > config.max_instance_memory_bytes:
        problems.append(
            f"limits.max_memory_bytes = {limits.max_memory_bytes} is over the host's "
            f"max_instance_memory_bytes = {config.max_instance_memory_bytes}"
        )
    if problems:
        raise DeployError(f"cannot deploy kind {manifest.name!r}: " + "; ".join(problems))


def _address(address: AgentAddress | str) -> AgentAddress:
    return address if isinstance(address, AgentAddress) else AgentAddress.parse(address)


def _resolve_manifest(manifest: Manifest | Path | str, component: Path | str | None) -> Manifest:
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(Path(manifest))
    if component is not None:
        manifest = manifest.with_component(Path(component).absolute())
    return manifest
