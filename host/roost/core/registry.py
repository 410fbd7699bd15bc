"""Address -> resident actor: activation, hibernation (idle timeout and LRU past the
resident cap), the worker-thread pool for guest code, and the counters behind statistics.
"""

from __future__ import annotations

import logging
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import msgpack
import trio
from opentelemetry import context as otel_context

from ..address import AgentAddress
from ..errors import AgentUnavailable, CapabilityError, Overloaded
from ..store.protocol import Delivery, StateStore
from ..telemetry import Telemetry
from ..wall_clock import HostClock
from .actor import AgentActor, Envelope, EventTiming, run_op
from .kind import Kind
from .turn import HostServices, StartedOp

T = TypeVar("T")
logger = logging.getLogger("roost.supervisor")


class Supervisor:
    def __init__(
        self,
        *,
        clock: HostClock,
        services: HostServices | None,
        store: StateStore,
        nursery: trio.Nursery,
        max_resident: int,
        worker_threads: int,
        max_in_flight: int,
        telemetry: Telemetry | None = None,
        epoch_tick_ms: int = 10,
        inline_slice_ms: int = 0,
    ) -> None:
        self.store = store
        self.telemetry = telemetry or Telemetry.off()
        self.metrics = self.telemetry.host_metrics()
        self.epoch_tick_ms = epoch_tick_ms
        self.inline_slice_ms = inline_slice_ms
        """How long a light kind's event turn may run on the event loop (0: never)."""
        self.clock = clock
        self.services = services
        self.deliveries_poked = trio.Event()
        """Set when a commit added deliveries; the delivery loop then looks again."""
        self._nursery = nursery
        self._max_resident = max_resident
        self._max_in_flight = max_in_flight
        self._limiter = trio.CapacityLimiter(worker_threads)
        self._actors: OrderedDict[AgentAddress, AgentActor] = OrderedDict()
        self.in_flight = 0
        self.activations = 0
        self.hibernations = 0
        self.turns = 0
        self.activation_seconds_total = 0.0
        self.accepting = True
        self._drained = trio.Event()
        self._fenced: set[AgentAddress] = set()

    # -- delivery -----------------------------------------------------------------------
    async def deliver(
        self,
        address: AgentAddress,
        kind: Kind,
        event_kind: str,
        payload: bytes,
        *,
        idempotency_key: str | None = None,
        on_reply: Callable[[Any], None] | None = None,
        on_token: Callable[[str], None] | None = None,
        chain: tuple[str, ...] = (),
        handled: tuple[str, float | None] | None = None,
        timing: EventTiming | None = None,
    ) -> list[Any]:
        if not self.accepting:
            raise Overloaded("the host is shutting down", retry_after_s=1.0)
        if self.in_flight >= self._max_in_flight:
            raise Overloaded(
                f"{self.in_flight} events in flight (max_in_flight); retry shortly",
                retry_after_s=1.0,
            )
        if address in self._fenced:
            raise AgentUnavailable(
                f"agent {address} is being erased or forked; retry shortly",
                address=str(address),
            )
        envelope = Envelope(
            event_kind,
            payload,
            idempotency_key,
            on_reply,
            on_token=on_token,
            chain=chain,
            handled=handled,
            trace_context=self.telemetry.current_context(),
            timing=timing,
        )
        actor = self._actor_for(address, kind)
        actor.post(envelope)
        self.in_flight += 1
        try:
            return await envelope.outcome()
        finally:
            self.in_flight -= 1
            if not self.accepting and self.in_flight == 0:
                self._drained.set()

    async def drain(self) -> None:
        """Stop accepting events, wait for in-flight ones, then hibernate every agent."""
        self.accepting = False
        if self.in_flight:
            await self._drained.wait()
        for actor in list(self._actors.values()):
            actor.stop()

    def _actor_for(self, address: AgentAddress, kind: Kind) -> AgentActor:
        actor = self._actors.get(address)
        if actor is not None and not actor.closed and actor.kind is kind:
            self._actors.move_to_end(address)
            return actor
        if actor is not None:
            # Hibernating, or its kind was redeployed: let it finish, start afresh.
            actor.hibernate_now()
            del self._actors[address]
        if len(self._actors) >= self._max_resident:
            self._evict_one()
        actor = AgentActor(address, kind, self)
        self._actors[address] = actor
        if self.telemetry.tracing:
            # Not the trace context of whoever happened to wake the agent: each turn gets
            # its parent from its own event.
            self._nursery.start_soon(_detached, actor.run)
        else:
            self._nursery.start_soon(actor.run)
        return actor

    def _evict_one(self) -> None:
        for address, actor in self._actors.items():
            if actor.hibernate_now():
                del self._actors[address]
                return
        raise Overloaded(
            f"all {self._max_resident} resident agents are busy (max_resident_agents); "
            "retry shortly",
            retry_after_s=1.0,
        )

    def actor_stopped(self, actor: AgentActor) -> None:
        if self._actors.get(actor.address) is actor:
            del self._actors[actor.address]
        if actor.activated:
            self.hibernations += 1

    @asynccontextmanager
    async def fenced(self, address: AgentAddress) -> AsyncIterator[None]:
        """Hold off events for ``address`` and make sure it has no instance, so its stored
        data can be changed underneath it (erase, fork)."""
        if address in self._fenced:
            raise AgentUnavailable(
                f"agent {address} is already being erased or forked", address=str(address)
            )
        self._fenced.add(address)
        try:
            actor = self._actors.get(address)
            if actor is not None:
                actor.stop()
                await actor.finished.wait()
            yield
        finally:
            self._fenced.discard(address)

    def deliveries_changed(self) -> None:
        self.deliveries_poked.set()

    def start_continuation(self, address: AgentAddress, op: StartedOp) -> None:
        """Run an op whose result comes back as a new event (continuation form), detached
        from the agent's instance so the agent may hibernate meanwhile."""
        self._nursery.start_soon(self._continue, address, op)

    async def _continue(self, address: AgentAddress, op: StartedOp) -> None:
        assert op.continuation is not None
        try:
            value = msgpack.unpackb(await run_op(op), raw=False, strict_map_key=False)
            ok = True
        except CapabilityError as exc:
            value, ok = str(exc), False
        except Exception as exc:
            logger.exception("agent %s: %s op failed", address, op.capability)
            value, ok = f"{op.capability} failed: {exc}", False
        payload = msgpack.packb(
            {
                "handler": op.continuation.handler,
                "tag": op.continuation.tag,
                "ok": ok,
                "value": value,
            },
            use_bin_type=True,
        )
        delivery = Delivery(
            address=address,
            delivery_id=f"c-{uuid.uuid4().hex}",
            due_at=self.clock.now(),
            event_kind="continuation",
            payload=payload,
        )
        await self.store.add_delivery(delivery)
        self.deliveries_changed()

    # -- guest execution ----------------------------------------------------------------
    async def run_guest(self, call: Callable[[], T]) -> T:
        """Run guest code on a worker thread; the trio loop stays responsive."""
        return await trio.to_thread.run_sync(call, limiter=self._limiter)

    def record_activation(self, seconds: float) -> None:
        self.activations += 1
        self.activation_seconds_total += seconds

    def record_turn(self) -> None:
        self.turns += 1

    # -- inspection ---------------------------------------------------------------------
    @property
    def resident(self) -> int:
        return sum(1 for actor in self._actors.values() if actor.has_instance)

    def is_resident(self, address: AgentAddress) -> bool:
        actor = self._actors.get(address)
        return actor is not None and actor.has_instance and not actor.closed

    def hibernate_all(self) -> None:
        for actor in list(self._actors.values()):
            actor.hibernate_now()

    def actor(self, address: AgentAddress) -> AgentActor | None:
        """The resident actor of ``address``, if any."""
        actor = self._actors.get(address)
        return actor if actor is not None and actor.has_instance and not actor.closed else None

    def mailbox_depth(self) -> dict[str, int]:
        """Events queued in resident agents' mailboxes, by kind."""
        depth: dict[str, int] = {}
        for address, actor in self._actors.items():
            depth[address.kind] = depth.get(address.kind, 0) + actor.queued
        return depth

    def held_resident(self) -> dict[str, int]:
        """Agents resident past their idle timeout, by what holds them (an agent held for
        two reasons counts under both)."""
        now = trio.current_time()
        held: dict[str, int] = {"pending_op": 0, "turn_running": 0, "mailbox_not_empty": 0}
        for actor in self._actors.values():
            for reason in actor.held_by(now):
                held[reason] += 1
        return held


async def _detached(run: Callable[[], Any]) -> None:
    otel_context.attach(otel_context.Context())
    await run()
