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
from typing import TYPE_CHECKING

import msgpack
import trio

from ..address import AgentAddress
from ..errors import AgentError, GuestError, Overloaded, RoostError, UnknownKind
from ..store.protocol import Delivery

if TYPE_CHECKING:
    from ..host import Host

logger = logging.getLogger("roost.deliveries")

BATCH = 256
"""Due deliveries read at once."""
LATE_GRACE_S = 1.0
"""A one-shot timer later than this when found is 'missed' (matters for catch_up=skip)."""
_RETRY_BASE_S = 1.0
_RETRY_MAX_S = 60.0
_IDLE_RECHECK_S = 60.0


class DeliveryLoop:
    def __init__(self, host: Host) -> None:
        self._host = host
        self._in_flight: set[tuple[AgentAddress, str]] = set()
        self._retry_at: dict[tuple[AgentAddress, str], tuple[float, int]] = {}
        self._kind_missing: set[tuple[AgentAddress, str]] = set()
        """Deliveries for kinds not deployed (yet): retried when a kind is deployed."""

    def kind_deployed(self, kind: str) -> None:
        for key in [k for k in self._kind_missing if k[0].kind == kind]:
            self._kind_missing.discard(key)
            self._retry_at.pop(key, None)
        self._host._supervisor.deliveries_changed()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sup = self._host._supervisor
        clock = sup.clock
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                sup.deliveries_poked = trio.Event()
                now = clock.now()
                for delivery in await self._host.store.due_deliveries(now, BATCH):
                    key = (delivery.address, delivery.delivery_id)
                    retry = self._retry_at.get(key)
                    if key in self._in_flight or (retry is not None and retry[0] > now):
                        continue
                    self._in_flight.add(key)
                    nursery.start_soon(self._deliver, delivery, now)
                wake_at = await self._next_wake(now)
                with trio.move_on_at(clock.trio_time(wake_at)):
                    await sup.deliveries_poked.wait()

    async def _next_wake(self, now: float) -> float:
        next_due = await self._host.store.next_due_at()
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
            self._host._supervisor.deliveries_changed()

    async def _deliver_one(self, delivery: Delivery, now: float) -> None:
        store = self._host.store
        next_due: float | None = None
        if delivery.every_s is not None:
            every = delivery.every_s
            missed = max(0, math.floor((now - delivery.due_at) / every))
            first_future = delivery.due_at + (missed + 1) * every
            if delivery.catch_up == "skip" and missed >= 1:
                await store.reschedule_delivery(
                    delivery.address, delivery.delivery_id, first_future
                )
                return
            next_due = delivery.due_at + every if delivery.catch_up == "all" else first_future
        elif delivery.catch_up == "skip" and now - delivery.due_at > LATE_GRACE_S:
            await store.reschedule_delivery(delivery.address, delivery.delivery_id, None)
            return
        payload = msgpack.unpackb(delivery.payload, raw=False, strict_map_key=False)
        address = delivery.address
        await self._host.deliver(
            address,
            delivery.event_kind,
            payload,
            handled=(delivery.delivery_id, next_due),
            on_reply=lambda reply: self._host.publish(address, reply),
        )

    def _back_off(self, key: tuple[AgentAddress, str], delivery: Delivery, exc: Exception) -> None:
        _, attempts = self._retry_at.get(key, (0.0, 0))
        delay = min(_RETRY_BASE_S * 2**attempts, _RETRY_MAX_S)
        self._retry_at[key] = (self._host._supervisor.clock.now() + delay, attempts + 1)
        logger.warning(
            "delivery %s of %s to %s failed (attempt %d, retrying in %.0fs): %s",
            delivery.delivery_id,
            delivery.event_kind,
            delivery.address,
            attempts + 1,
            delay,
            exc,
        )
