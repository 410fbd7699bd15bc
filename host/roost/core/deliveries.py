"""The delivery loop: fires due timers, hands messages between agents, delivers the results
of continuation-form ops, and resumes the messages a crash cut short.

Deliveries are rows in the store (see ``roost.store.protocol.Delivery``). The loop reads the
ones that are due and delivers each as an event (waking a hibernated agent); the handler's
final commit removes (or re-arms) the row, on the condition that it is still there as it
was read (``Handled.due_at``), so each occurrence is handled once even if it is read twice.
Rows being handled by this host right now (a message whose handler spans turns sits in
the inbox meanwhile) are left alone.

While a kind's events queue past its target (``core/admission.py``), its due deliveries
are put off in memory like any transient refusal, not shed: a timer storm slows itself
down. A pass that finds dozens of due deliveries it must leave (in flight, or put off) is
followed by a short pause, so that a crowd is not read again after each delivery ends.

A delivery whose handler fails is retried with exponential back-off (1 s, 2 s, ... capped
at a minute); the attempts are counted in the row, and after ``max_attempts`` the delivery
moves to the agent's dead letters. Deliveries for kinds not deployed (yet) wait for the
deployment, without counting attempts. Recurring timers that fell behind (the host was
down) follow their catch-up policy.

When several hosts share the store, each loop reads only the deliveries of agents whose
lease its host holds or could take (free, or expired: its holder died), and takes the
lease before delivering (``core/leases.py``); a delivery whose agent another host took
first is left to that host. Other hosts add work that no doorbell here announces, so the
loop also looks every ``CoreServices.recheck_s``.
"""

from __future__ import annotations

import contextlib
import logging
import math

import trio

from ..address import AgentAddress
from ..errors import (
    AgentBusy,
    AgentUnavailable,
    AlreadyHandled,
    Overloaded,
    OwnedElsewhere,
    RoostError,
    UnknownKind,
)
from ..payload import unpack
from ..store.protocol import INBOX_KINDS, Commit, Delivery, FailedDelivery, Handled
from .dispatch import Dispatcher, Pushes
from .kind import KindTable
from .services import CoreServices

logger = logging.getLogger("roost.deliveries")

BATCH = 256
"""Due deliveries read at once."""
LATE_GRACE_S = 1.0
"""A one-shot timer later than this when found is 'missed' (matters for catch_up=skip)."""
DEFAULT_MAX_CATCH_UP = 10
"""Missed occurrences a ``catch_up="all"`` timer fires when its kind does not say."""
_CROWDED = 32
"""A pass that finds this many due deliveries it must leave (in flight, or put off) is a
crowded one: see :data:`_CROWDED_PAUSE_S`."""
_CROWDED_PAUSE_S = 0.02
"""After a crowded pass the loop pauses this long before reading again: every delivery that
ends rings the doorbell, and reading (and parsing) the same hundreds of rows after each
of them held the GIL a third of the time in a timer storm, doubling the latency of the
agents beside it."""
_RETRY_BASE_S = 1.0
_RETRY_MAX_S = 60.0
_TRANSIENT = (Overloaded, AgentBusy, AgentUnavailable)
"""Failures of the host, not of the delivery: retried without counting an attempt."""


class DeliveryLoop:
    """Fires due deliveries as events (see the module docstring)."""

    def __init__(
        self,
        services: CoreServices,
        kinds: KindTable,
        dispatcher: Dispatcher,
        pushes: Pushes,
        *,
        max_attempts: int,
    ) -> None:
        self._services = services
        self._kinds = kinds
        self._dispatcher = dispatcher
        self._pushes = pushes
        self._max_attempts = max_attempts
        self._in_flight: set[tuple[AgentAddress, str]] = set()
        self._retry_at: dict[tuple[AgentAddress, str], tuple[float, int]] = {}
        """In-memory back-off for transient failures (not counted as attempts)."""
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
                read = self._dispatcher.begin_read()
                due = await stores.run(
                    stores.store.due_deliveries, now, BATCH, owner=services.leases.owner
                )
                left = 0
                for delivery in due:
                    key = (delivery.address, delivery.delivery_id)
                    if self._dispatcher.stale(*key, read) or self._skip(key, now):
                        left += 1
                        continue
                    self._in_flight.add(key)
                    nursery.start_soon(self._deliver, delivery, now)
                wake_at = await self._next_wake(now)
                with trio.move_on_at(clock.trio_time(wake_at)):
                    await services.deliveries_due.wait()
                if left >= _CROWDED:
                    await trio.sleep(_CROWDED_PAUSE_S)

    def _skip(self, key: tuple[AgentAddress, str], now: float) -> bool:
        if key in self._in_flight:
            return True
        retry = self._retry_at.get(key)
        return retry is not None and retry[0] > now

    async def _next_wake(self, now: float) -> float:
        stores = self._services.stores
        next_due = await stores.run(stores.store.next_due_at)
        candidates = [now + self._services.recheck_s]
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
        except (AlreadyHandled, OwnedElsewhere):  # handled, or another host's to deliver
            self._retry_at.pop(key, None)
        except _TRANSIENT as exc:
            self._back_off_in_memory(key, delivery, exc)
        except RoostError as exc:
            self._retry_at.pop(key, None)
            await self._failed(delivery, exc)
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
            if delivery.catch_up == "all":
                limit = self._max_catch_up(delivery.address)
                if missed > limit:  # fire only the latest `limit` missed ones, and this
                    await self._reschedule(delivery, delivery.due_at + (missed - limit) * every)
                    return
                next_due = delivery.due_at + every
            else:
                next_due = first_future
        elif delivery.catch_up == "skip" and now - delivery.due_at > LATE_GRACE_S:
            await self._reschedule(delivery, None)
            return
        address = delivery.address
        if not self._services.queue_delay.admit(address.kind):
            # The kind's events queue: put this one off (retried, never dropped), as a new
            # event from outside would be refused. A timer storm slows itself down.
            raise Overloaded(
                f"kind {address.kind!r} is at capacity (queue_target_ms)", retry_after_s=1.0
            )
        await self._dispatcher.deliver(
            address,
            delivery.event_kind,
            unpack(delivery.payload),
            idempotency_key=delivery.idempotency_key
            if delivery.event_kind in INBOX_KINDS
            else None,
            handled=Handled(delivery.delivery_id, next_due, delivery.due_at),
            on_reply=lambda reply: self._pushes.publish(address, reply),
        )

    def _max_catch_up(self, address: AgentAddress) -> int:
        try:
            timers = self._kinds.of(address).capabilities.get("timers")
        except UnknownKind:
            return DEFAULT_MAX_CATCH_UP
        return int(getattr(getattr(timers, "grant", None), "max_catch_up", DEFAULT_MAX_CATCH_UP))

    async def _reschedule(self, delivery: Delivery, due_at: float | None) -> None:
        """Move a delivery to ``due_at``, or drop it (None), without handling it."""
        with contextlib.suppress(AlreadyHandled):  # another pass moved it already
            await self._services.stores.commit(
                Commit(
                    delivery.address,
                    at=self._services.clock.now(),
                    turn=False,
                    handled=Handled(delivery.delivery_id, due_at, delivery.due_at),
                )
            )

    async def _failed(self, delivery: Delivery, exc: RoostError) -> None:
        """Count a failed attempt in the row: retry after a back-off, or give up."""
        attempts = delivery.attempts + 1
        now = self._services.clock.now()
        error = f"{type(exc).__name__}: {exc}"
        if attempts >= self._max_attempts:
            retry_at = None
            logger.error(
                "delivery %s of %s to %s failed %d times; moved to its dead letters: %s",
                delivery.delivery_id,
                delivery.event_kind,
                delivery.address,
                attempts,
                exc,
            )
            self._services.metrics.dead_letter(delivery.address.kind)
        else:
            retry_at = now + min(_RETRY_BASE_S * 2 ** (attempts - 1), _RETRY_MAX_S)
            logger.warning(
                "delivery %s of %s to %s failed (attempt %d of %d, retrying in %.0fs): %s",
                delivery.delivery_id,
                delivery.event_kind,
                delivery.address,
                attempts,
                self._max_attempts,
                retry_at - now,
                exc,
            )
        try:
            await self._services.stores.commit(
                Commit(
                    delivery.address,
                    at=now,
                    turn=False,
                    failed_delivery=FailedDelivery(delivery.delivery_id, error, retry_at),
                    fence=self._services.leases.token(delivery.address),
                )
            )
        except RoostError as commit_error:
            logger.warning("recording the failed delivery failed: %s", commit_error)

    def _back_off_in_memory(
        self, key: tuple[AgentAddress, str], delivery: Delivery, exc: Exception
    ) -> None:
        _, attempts = self._retry_at.get(key, (0.0, 0))
        delay = min(_RETRY_BASE_S * 2**attempts, _RETRY_MAX_S)
        self._retry_at[key] = (self._services.clock.now() + delay, attempts + 1)
        logger.info(
            "delivery %s to %s put off %.0fs: %s",
            delivery.delivery_id,
            delivery.address,
            delay,
            exc,
        )
