"""The delivery loop: fires due timers and hands messages between agents.

Deliveries are rows in the store (see ``roost.store.protocol.Delivery``). The loop reads the
ones that are due, delivers each as an event (waking a hibernated agent), and leaves the
row for the handling turn to delete or re-arm in its own commit, so a delivery is handled
at least once, even across a crash. Recurring timers that fell behind (the host was down)
follow their catch-up policy.
"""

from __future__ import annotations

import logging
import math

import trio

from ..address import AgentAddress
from ..errors import AgentError, GuestError, Overloaded, RoostError, UnknownKind
from ..payload import unpack
from ..store.protocol import Commit, Delivery
from .dispatch import Dispatcher, Pushes
from .services import CoreServices

logger = logging.getLogger("roost.deliveries")

BATCH = 256
"""Due deliveries read at once."""
LATE_GRACE_S = 1.0
"""A one-shot timer later than this when found is 'missed' (matters for catch_up=skip)."""
_RETRY_BASE_S = 1.0
_RETRY_MAX_S = 60.0
_IDLE_RECHECK_S = 60.0


class DeliveryLoop:
    """Fires due deliveries as events (see the module docstring)."""

    def __init__(self, services: CoreServices, dispatcher: Dispatcher, pushes: Pushes) -> None:
        self._services = services
        self._dispatcher = dispatcher
        self._pushes = pushes
        self._in_flight: set[tuple[AgentAddress, str]] = set()
        self._retry_at: dict[tuple[AgentAddress, str], tuple[float, int]] = {}
        self._kind_missing: set[tuple[AgentAddress, str]] = set()
        """Deliveries for kinds not deployed (yet): retried when a kind is deployed."""

    def kind_deployed(self, kind: str) -> None:
        for key in [k for k in self._kind_missing if k[0].kind == kind]:
            self._kind_missing.discard(key)
            self._retry_at.pop(key, None)
        self._services.deliveries_due.ring()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        services = self._services
        stores = services.stores
        clock = services.clock
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                services.deliveries_due.rearm()
                now = clock.now()
                for delivery in await stores.run(stores.store.due_deliveries, now, BATCH):
                    key = (delivery.address, delivery.delivery_id)
                    retry = self._retry_at.get(key)
                    if key in self._in_flight or (retry is not None and retry[0] > now):
                        continue
                    self._in_flight.add(key)
                    nursery.start_soon(self._deliver, delivery, now)
                wake_at = await self._next_wake(now)
                with trio.move_on_at(clock.trio_time(wake_at)):
                    await services.deliveries_due.wait()

    async def _next_wake(self, now: float) -> float:
        stores = self._services.stores
        next_due = await stores.run(stores.store.next_due_at)
        candidates = [now + _IDLE_RECHECK_S]
        if next_due is not None and next_due > now:
            candidates.append(next_due)
        candidates += [at for at, _ in self._retry_at.values() if at > now]
        return min(candidates)

    async def _deliver(self, delivery: Delivery, now: float) -> None:
        key = (delivery.address, delivery.delivery_id)
        try:
            await self._deliver_one(delivery, now)
        except UnknownKind:
            # Waits for the kind's deployment (see kind_deployed) rather than retrying.
            self._kind_missing.add(key)
            self._retry_at[key] = (math.inf, 0)
        except (Overloaded, GuestError, AgentError, RoostError) as exc:
            self._back_off(key, delivery, exc)
        else:
            self._retry_at.pop(key, None)
        finally:
            self._in_flight.discard(key)
            self._services.deliveries_due.ring()

    async def _deliver_one(self, delivery: Delivery, now: float) -> None:
        next_due: float | None = None
        if delivery.every_s is not None:
            every = delivery.every_s
            missed = max(0, math.floor((now - delivery.due_at) / every))
            first_future = delivery.due_at + (missed + 1) * every
            if delivery.catch_up == "skip" and missed >= 1:
                await self._reschedule(delivery, first_future)
                return
            next_due = delivery.due_at + every if delivery.catch_up == "all" else first_future
        elif delivery.catch_up == "skip" and now - delivery.due_at > LATE_GRACE_S:
            await self._reschedule(delivery, None)
            return
        address = delivery.address
        await self._dispatcher.deliver(
            address,
            delivery.event_kind,
            unpack(delivery.payload),
            handled=(delivery.delivery_id, next_due),
            on_reply=lambda reply: self._pushes.publish(address, reply),
        )

    async def _reschedule(self, delivery: Delivery, due_at: float | None) -> None:
        """Move a delivery to ``due_at``, or drop it (None), without handling it."""
        await self._services.stores.commit(
            Commit(
                delivery.address,
                at=self._services.clock.now(),
                turn=False,
                handled=(delivery.delivery_id, due_at),
            )
        )

    def _back_off(self, key: tuple[AgentAddress, str], delivery: Delivery, exc: Exception) -> None:
        _, attempts = self._retry_at.get(key, (0.0, 0))
        delay = min(_RETRY_BASE_S * 2**attempts, _RETRY_MAX_S)
        self._retry_at[key] = (self._services.clock.now() + delay, attempts + 1)
        logger.warning(
            "delivery %s of %s to %s failed (attempt %d, retrying in %.0fs): %s",
            delivery.delivery_id,
            delivery.event_kind,
            delivery.address,
            attempts + 1,
            delay,
            exc,
        )
