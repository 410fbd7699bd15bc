"""Address -> resident actor: admission, activation, LRU hibernation past the resident cap,
and fencing (hold an agent's events off while its stored data changes underneath it).

Admission refuses early and cheaply what the host cannot take: events while shutting
down, events for an agent cooling down after running past its CPU deadline, new instances
of a kind past its activation rate, new instances of the kind that fills the host's memory
cap (after hibernating its idle agents, not its neighbours'), and everything once events
wait too long to start (queueing delay, see :class:`QueueDelay`).

Before an agent is activated, the host takes its lease (``core/leases.py``): the actor's
commits carry the lease's fencing token, and an agent another live host holds is not
activated here (OwnedElsewhere: the dispatcher forwards the event to that host). A lease
the store says was lost stops the agent's actor.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
from opentelemetry import context as otel_context

from ..address import AgentAddress
from ..errors import AgentCoolingDown, AgentUnavailable, Overloaded
from .actor import AgentActor
from .admission import ActivationRate, MemoryGauge
from .envelope import Envelope
from .kind import Kind
from .leases import LeaseKeeper
from .ops import Continuations
from .services import CoreServices

logger = logging.getLogger("roost.registry")

_MAX_COOL_DOWN_FACTOR = 32
"""A cool-down doubles up to this many times the first one."""
_COOLING_PRUNE_AT = 1024


class Registry:
    """The resident actors of one host, by address."""

    def __init__(
        self,
        services: CoreServices,
        nursery: trio.Nursery,
        continuations: Continuations,
        *,
        max_resident: int,
        max_in_flight: int,
        cool_down_s: float = 10.0,
        activations_per_s: float | None = None,
        memory_cap_bytes: int | None = None,
    ) -> None:
        self._services = services
        self._cool_down_s = cool_down_s
        self._activations = None if activations_per_s is None else ActivationRate(activations_per_s)
        self._memory_cap_bytes = memory_cap_bytes
        self._memory = MemoryGauge()
        self._nursery = nursery
        self._continuations = continuations
        self._leases: LeaseKeeper = services.leases
        self._leases.on_lost.append(self._lease_lost)
        self._max_resident = max_resident
        self._max_in_flight = max_in_flight
        self._actors: OrderedDict[AgentAddress, AgentActor] = OrderedDict()
        self._resident_by_kind: Counter[str] = Counter()
        self._fenced: set[AgentAddress] = set()
        self._cooling: dict[AgentAddress, tuple[float, int]] = {}
        """Agents that ran past their CPU deadline: (refused until, strikes)."""
        self._drained = trio.Event()
        self.accepting = True
        self.in_flight = 0
        """Events posted and not yet handled, host-wide."""

    # -- delivery -----------------------------------------------------------------------
    def check_admission(self, kind: str | None = None) -> None:
        """Raise Overloaded if the host takes no new event now, or none of ``kind`` (cheap:
        for a request's first step)."""
        if not self.accepting:
            raise Overloaded("the host is shutting down", retry_after_s=1.0)
        if self.in_flight >= self._max_in_flight:
            raise Overloaded(
                f"{self.in_flight} events in flight (max_in_flight); retry shortly",
                retry_after_s=1.0,
            )
        if kind is not None and not self._services.queue_delay.admit(kind):
            raise Overloaded(
                f"the host is at capacity for kind {kind!r}: its events wait longer than "
                f"{self._services.queue_delay.target_s * 1000:.0f} ms to start "
                "(queue_target_ms); retry shortly",
                retry_after_s=1.0,
            )

    async def deliver(self, address: AgentAddress, kind: Kind, envelope: Envelope) -> list[Any]:
        """Admit the event, post it to the agent's actor (activating it if needed) and
        wait for its outcome: the replies, or the error that failed it."""
        self.check_admission()  # host-wide only: the kind's queue is checked at the edge
        self._check_fence(address)
        cooling = self._cooling.get(address)
        if cooling is not None:
            remaining = cooling[0] - trio.current_time()
            if remaining > 0:
                raise AgentCoolingDown(
                    f"agent {address} ran past its CPU deadline (limits.cpu_deadline_ms) "
                    f"{cooling[1]} time(s) lately; its events are refused for "
                    f"{remaining:.0f} s more",
                    address=str(address),
                    retry_after_s=remaining,
                )
        actor = self._actors.get(address)
        if (actor is None or actor.closed) and not self._leases.holds(address):
            await self._leases.acquire(address)  # OwnedElsewhere: another host serves it
            if not self.accepting:
                raise Overloaded("the host is shutting down", retry_after_s=1.0)
            self._check_fence(address)
        actor = self._actor_for(address, kind)
        envelope.admitted_at = time.perf_counter()
        actor.post(envelope)
        self.in_flight += 1
        try:
            return await envelope.outcome()
        finally:
            self.in_flight -= 1
            self._services.counters.events_handled += 1
            if not self.accepting and self.in_flight == 0:
                self._drained.set()

    def _check_fence(self, address: AgentAddress) -> None:
        if address in self._fenced:
            raise AgentUnavailable(
                f"agent {address} is being erased or forked; retry shortly",
                address=str(address),
            )

    async def drain(self) -> None:
        """Stop accepting events, wait for in-flight ones, then hibernate every agent."""
        self.accepting = False
        if self.in_flight:
            await self._drained.wait()
        for actor in list(self._actors.values()):
            actor.stop()

    def _actor_for(self, address: AgentAddress, kind: Kind) -> AgentActor:
        actor = self._actors.get(address)
        if actor is not None and not actor.closed:
            if actor.kind is not kind:
                actor.redeploy(kind)
            self._actors.move_to_end(address)
            return actor
        if actor is not None:
            # Hibernating: it has no events left; the next one starts a new actor.
            self._forget(address)
        self._admit_activation(kind)
        if len(self._actors) >= self._max_resident and not self._evict_one():
            raise Overloaded(
                f"all {self._max_resident} resident agents are busy (max_resident_agents); "
                "retry shortly",
                retry_after_s=1.0,
            )
        fence = self._leases.hold(address)
        actor = AgentActor(
            address,
            kind,
            self._services,
            self._continuations,
            on_stopped=self._stopped,
            on_deadline=self._ran_past_deadline,
            on_handled=self._handled,
            fence=fence,
        )
        self._actors[address] = actor
        self._resident_by_kind[address.kind] += 1
        if self._services.telemetry.tracing:
            # Not the trace context of whoever happened to wake the agent: each turn gets
            # its parent from its own event.
            self._nursery.start_soon(_detached, actor.run)
        else:
            self._nursery.start_soon(actor.run)
        return actor

    def _admit_activation(self, kind: Kind) -> None:
        """Refuse a new instance past the kind's activation rate or the host's memory cap
        (hibernating an idle agent first to make room)."""
        if self._activations is not None:
            wait_s = self._activations.take(kind.name)
            if wait_s:
                raise Overloaded(
                    f"kind {kind.name!r} is starting more than "
                    f"{self._activations.per_s:g} agents per second (max_activations_per_s)",
                    retry_after_s=wait_s,
                )
        cap = self._memory_cap_bytes
        if cap is None or self._memory.resident_bytes() <= cap:
            return
        # Over the cap, room is made by the kind that fills it (the most agents resident):
        # an idle agent of its is hibernated, or its new instance refused. The agents of the
        # kinds beside it, idle between their events, are not hibernated for its growth.
        largest = self._largest_kind(kind.name)
        if self._evict_one(largest):
            return
        if kind.name == largest:
            raise Overloaded(
                f"the host uses {self._memory.resident_bytes() / 2**20:.0f} MiB, over its "
                f"max_host_memory_bytes ({cap / 2**20:.0f} MiB), and kind {kind.name!r}, "
                "with the most agents resident, has none idle",
                retry_after_s=1.0,
            )
        self._evict_one(kind.name)  # a smaller kind makes room from its own agents, if idle

    def _largest_kind(self, activating: str) -> str:
        """The kind with the most agents resident: ``activating`` if it has as many as
        any other."""
        counts = self._resident_by_kind
        most = max(counts.values(), default=0)
        if counts[activating] >= most:
            return activating
        return next(kind for kind, count in counts.items() if count == most)

    def _forget(self, address: AgentAddress) -> None:
        del self._actors[address]
        self._resident_by_kind[address.kind] -= 1
        if not self._resident_by_kind[address.kind]:
            del self._resident_by_kind[address.kind]

    def _evict_one(self, kind: str | None = None) -> bool:
        """Hibernate the least recently used idle agent (of ``kind``, when given); False
        if none is idle."""
        for address, actor in self._actors.items():
            if (kind is None or address.kind == kind) and actor.hibernate_now():
                self._forget(address)
                return True
        return False

    def _stopped(self, actor: AgentActor) -> None:
        if self._actors.get(actor.address) is actor:
            self._forget(actor.address)
        self._leases.unhold(actor.address)

    def _lease_lost(self, address: AgentAddress) -> None:
        """Another host serves the agent now: its actor finishes what it is doing (its
        commits are refused) and stops."""
        actor = self._actors.get(address)
        if actor is not None:
            actor.stop()

    def _ran_past_deadline(self, address: AgentAddress) -> None:
        """Refuse the agent's events for a cool-down, twice as long as the last one."""
        self._services.metrics.cool_down(address.kind)
        if not self._cool_down_s:
            return
        _, strikes = self._cooling.get(address, (0.0, 0))
        strikes += 1
        cool_down = min(
            self._cool_down_s * 2 ** (strikes - 1), self._cool_down_s * _MAX_COOL_DOWN_FACTOR
        )
        self._cooling[address] = (trio.current_time() + cool_down, strikes)
        logger.warning(
            "agent %s ran past its CPU deadline (strike %d): events refused for %.0f s",
            address,
            strikes,
            cool_down,
            extra={"agent_kind": address.kind, "agent_id": address.id},
        )
        if len(self._cooling) > _COOLING_PRUNE_AT:
            now = trio.current_time()
            for cooled, (until, _) in list(self._cooling.items()):
                if until + self._cool_down_s * _MAX_COOL_DOWN_FACTOR < now:
                    del self._cooling[cooled]

    def _handled(self, address: AgentAddress) -> None:
        """An event of the agent finished within its deadline: forget its strikes."""
        if self._cooling:
            self._cooling.pop(address, None)

    @property
    def cooling_down(self) -> int:
        """Agents whose events are refused now for running past their CPU deadline."""
        now = trio.current_time()
        return sum(1 for until, _ in self._cooling.values() if until > now)

    @asynccontextmanager
    async def fenced(self, address: AgentAddress) -> AsyncIterator[None]:
        """Hold off events for ``address`` and make sure it has no instance, so its stored
        data can be changed underneath it (erase, fork)."""
        if address in self._fenced:
            raise AgentUnavailable(
                f"agent {address} is already being erased or forked", address=str(address)
            )
        await self._leases.acquire(address)  # erase and fork run where the agent is served
        self._leases.hold(address)
        self._fenced.add(address)
        try:
            actor = self._actors.get(address)
            if actor is not None:
                actor.stop()
                await actor.finished.wait()
            yield
        finally:
            self._fenced.discard(address)
            self._leases.unhold(address)

    # -- inspection ---------------------------------------------------------------------
    @property
    def resident(self) -> int:
        return sum(1 for actor in self._actors.values() if actor.has_instance)

    def actor(self, address: AgentAddress) -> AgentActor | None:
        """The resident actor of ``address``, if any."""
        actor = self._actors.get(address)
        return actor if actor is not None and actor.has_instance and not actor.closed else None

    def is_resident(self, address: AgentAddress) -> bool:
        return self.actor(address) is not None

    def hibernate_all(self) -> None:
        """Hibernate every agent that is idle right now."""
        for actor in list(self._actors.values()):
            actor.hibernate_now()

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
