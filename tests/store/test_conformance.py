"""The :class:`~roost.store.StateStore` conformance suite: what a new store backend must pass.

Every test here is written against the protocol only (plus :class:`~roost.store.AsyncStore`)
and runs once per backend of ``tests/store/conftest.py``; so do the approvals' tests in
``test_conformance_approvals.py``. Backend internals (SQL, files,
batching, statistics) are tested in the backend's own module, e.g. ``test_sqlite.py``.

Conventions every backend must follow, beyond the protocol text:

- kv keys are any ``str`` without surrogates (including ``%``, ``_``, ``\\``, NUL and
  non-ASCII); ``read_kv_keys`` sorts them, and matches prefixes, by code point (Python's
  ``str`` order);
- a commit's ``handled`` and ``cancelled`` are applied before its ``deliveries``, so a turn
  that handles (or cancels) a timer and sets one with the same id keeps the new one;
- invalid values in a commit (a non-bytes state, kv value, payload or response) fail the
  commit with StorageError and write nothing.
"""

from __future__ import annotations

import dataclasses
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roost.address import AgentAddress
from roost.errors import AlreadyHandled, LeaseLost, StorageError
from roost.store import (
    AgentExport,
    AgentRecord,
    AgentSummary,
    AsyncStore,
    Commit,
    DeadLetter,
    Delivery,
    FailedDelivery,
    Handled,
    IdempotencyRecord,
    JournalEntry,
    PendingOp,
    StateStore,
    Usage,
)

from .conftest import StoreFactory

ALICE = AgentAddress("chat", "alice")
BOB = AgentAddress("chat", "bob")
OTHER_ALICE = AgentAddress("notes", "alice")

WEIRD_KEYS = [
    "x",
    "a/b",
    "../bob/x",
    "chat/bob/x",
    "%",
    "%%",
    "_",
    "a%",
    "a_",
    "a%b",
    "a_b",
    "\\",
    "a\\%",
    "'; DROP TABLE kv; --",
    "a\x00b",
    "é",
    "日本語",
    "\U0001f600",
    "\U0010ffff",
    "\ud7ff",
    "\ue000",
    " ",
    "*",
    "?",
]


def _turn(
    address: AgentAddress,
    state: bytes | None = None,
    kv: dict[str, bytes | None] | None = None,
    *,
    kv_bytes: int | None = None,
    at: float = 0.0,
    key: str | None = None,
    response: bytes | None = None,
) -> Commit:
    """A turn's commit (``turn=True``)."""
    return Commit(
        address,
        at=at,
        state=state,
        kv_writes=dict(kv or {}),
        kv_bytes=kv_bytes,
        idempotency_key=key,
        response=response,
    )


def _delivery(
    address: AgentAddress,
    delivery_id: str,
    due_at: float,
    payload: bytes = b"p",
    *,
    event_kind: str = "timer",
    every_s: float | None = None,
) -> Delivery:
    return Delivery(address, delivery_id, due_at, event_kind, payload, every_s=every_s)


def _ids(deliveries: Sequence[Delivery]) -> list[str]:
    return [d.delivery_id for d in deliveries]


def _in_threads(count: int, work: Callable[[int], None]) -> None:
    """Run ``work(0)``..``work(count - 1)`` on as many threads started together; re-raise the
    first error any of them raised."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            work(index)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive()
    if errors:
        raise errors[0]


def _snapshot(store: StateStore, address: AgentAddress, day: str = "d") -> tuple[Any, ...]:
    """Everything a test can see of one agent (and the global delivery view)."""
    return (
        store.read_agent(address),
        store.export_agent(address),
        store.read_kv_keys(address, "", 1000),
        store.read_deliveries(address),
        store.read_usage(address, day),
        store.due_deliveries(1e18, 1000),
        store.next_due_at(),
        store.count_agents(),
        store.stored_bytes(),
    )


# -- records, state and kv ----------------------------------------------------------------------


async def test_round_trip_state_and_kv(store: StateStore) -> None:
    assert store.read_agent(ALICE) is None
    assert store.read_kv(ALICE, "k") is None
    assert store.commit(_turn(ALICE, b"state-1", {"k": b"v", "empty": b""}, kv_bytes=7, at=100.0))
    assert store.read_agent(ALICE) == AgentRecord(
        state=b"state-1", kv_bytes=7, turns=1, created_at=100.0, updated_at=100.0
    )
    assert store.read_kv(ALICE, "k") == b"v"
    assert store.read_kv(ALICE, "empty") == b""
    assert store.read_kv(ALICE, "missing") is None
    assert store.read_kv_keys(ALICE, "", 10) == ["empty", "k"]


async def test_empty_state_is_not_no_state(store: StateStore) -> None:
    store.commit(_turn(ALICE, b"", at=1.0))
    record = store.read_agent(ALICE)
    assert record is not None
    assert record.state == b""
    store.commit(_turn(ALICE, None, at=2.0))
    record = store.read_agent(ALICE)
    assert record is not None
    assert (record.state, record.turns) == (b"", 2)


async def test_state_none_and_kv_bytes_none_keep_prior_values(store: StateStore) -> None:
    store.commit(_turn(ALICE, b"first", {"k": b"vvv"}, kv_bytes=4, at=1.0))
    # Neither state nor kv changed: both are kept, the turn still counts.
    store.commit(_turn(ALICE, None, at=2.0))
    assert store.read_agent(ALICE) == AgentRecord(
        state=b"first", kv_bytes=4, turns=2, created_at=1.0, updated_at=2.0
    )
    # kv changed, state did not.
    store.commit(_turn(ALICE, None, {"j": b"w"}, kv_bytes=6, at=3.0))
    assert store.read_agent(ALICE) == AgentRecord(
        state=b"first", kv_bytes=6, turns=3, created_at=1.0, updated_at=3.0
    )
    # state changed, kv did not.
    store.commit(_turn(ALICE, b"second", at=4.0))
    assert store.read_agent(ALICE) == AgentRecord(
        state=b"second", kv_bytes=6, turns=4, created_at=1.0, updated_at=4.0
    )
    # kv_bytes 0 is a value, not "unchanged".
    store.commit(_turn(ALICE, None, {"k": None, "j": None}, kv_bytes=0, at=5.0))
    assert store.read_agent(ALICE) == AgentRecord(
        state=b"second", kv_bytes=0, turns=5, created_at=1.0, updated_at=5.0
    )


async def test_first_commit_without_state_creates_the_record(store: StateStore) -> None:
    store.commit(_turn(ALICE, None, {"k": b"v"}, kv_bytes=2, at=5.0))
    assert store.read_agent(ALICE) == AgentRecord(
        state=None, kv_bytes=2, turns=1, created_at=5.0, updated_at=5.0
    )
    # A first commit that changes nothing at all still creates it, with kv_bytes 0.
    store.commit(_turn(BOB, at=6.0))
    assert store.read_agent(BOB) == AgentRecord(
        state=None, kv_bytes=0, turns=1, created_at=6.0, updated_at=6.0
    )
    assert store.count_agents() == 2


async def test_kv_overwrite_and_delete(store: StateStore) -> None:
    store.commit(_turn(ALICE, None, {"a": b"1", "b": b"2"}))
    store.commit(_turn(ALICE, None, {"a": None, "b": b"3", "gone": None}))
    assert store.read_kv(ALICE, "a") is None
    assert store.read_kv(ALICE, "b") == b"3"
    assert store.read_kv_keys(ALICE, "", 10) == ["b"]
    # A key deleted and set again in later commits comes back.
    store.commit(_turn(ALICE, None, {"a": b"again"}))
    assert store.read_kv(ALICE, "a") == b"again"
    assert store.read_kv_keys(ALICE, "", 10) == ["a", "b"]


async def test_kv_values_round_trip_exactly(store: StateStore) -> None:
    values = {"zeros": b"\x00" * 5, "all": bytes(range(256)), "big": b"x" * 300_000}
    store.commit(_turn(ALICE, bytes(range(256)), dict(values)))
    for key, value in values.items():
        assert store.read_kv(ALICE, key) == value
    record = store.read_agent(ALICE)
    assert record is not None
    assert record.state == bytes(range(256))


async def test_weird_keys_round_trip(store: StateStore) -> None:
    kv: dict[str, bytes | None] = {key: key.encode("utf-8") for key in WEIRD_KEYS}
    store.commit(_turn(ALICE, None, kv))
    for key in WEIRD_KEYS:
        assert store.read_kv(ALICE, key) == key.encode("utf-8"), key
        assert store.read_kv_keys(ALICE, key, 100)[0] == key, key
    assert store.read_kv_keys(ALICE, "", 100) == sorted(WEIRD_KEYS)


async def test_kv_is_isolated_between_agents_and_kinds(store: StateStore) -> None:
    store.commit(_turn(BOB, None, {key: b"bob:" + key.encode() for key in WEIRD_KEYS}))
    store.commit(_turn(OTHER_ALICE, None, dict.fromkeys(WEIRD_KEYS, b"notes")))
    for key in WEIRD_KEYS:
        assert store.read_kv(ALICE, key) is None, key
    for prefix in [*WEIRD_KEYS, "", "a", "b", "c", "chat", "bob"]:
        assert store.read_kv_keys(ALICE, prefix, 100) == [], prefix

    store.commit(_turn(ALICE, None, {"x": b"alice"}))
    assert store.read_kv(ALICE, "x") == b"alice"
    assert store.read_kv(BOB, "x") == b"bob:x"
    assert store.read_kv(OTHER_ALICE, "x") == b"notes"
    assert store.read_kv_keys(ALICE, "", 100) == ["x"]
    assert store.read_kv_keys(BOB, "", 100) == sorted(WEIRD_KEYS)

    # Deleting in one namespace leaves the others alone.
    store.commit(_turn(ALICE, None, dict.fromkeys(WEIRD_KEYS)))
    assert store.read_kv(ALICE, "x") is None
    assert store.read_kv(BOB, "x") == b"bob:x"
    assert store.read_kv(OTHER_ALICE, "x") == b"notes"
    assert store.read_kv_keys(OTHER_ALICE, "", 100) == sorted(WEIRD_KEYS)


async def test_prefix_listing_matches_literally(store: StateStore) -> None:
    keys = [
        "a",
        "a%",
        "a%b",
        "a_b",
        "ab",
        "abc",
        "a\\b",
        "b",
        "%",
        "_x",
        "é",
        "éa",
        "f",
        "日本",
        "日本語",
        "日曜",
        "\U0001f600x",
        "\ud7ff",
        "\ud7ffz",
        "\ue000",
        "\U0010ffff",
        "\U0010ffff\U0010ffff",
    ]
    store.commit(_turn(ALICE, None, dict.fromkeys(keys, b"v")))
    assert store.read_kv_keys(ALICE, "a%", 10) == ["a%", "a%b"]
    assert store.read_kv_keys(ALICE, "a_", 10) == ["a_b"]
    assert store.read_kv_keys(ALICE, "_", 10) == ["_x"]
    assert store.read_kv_keys(ALICE, "%", 10) == ["%"]
    assert store.read_kv_keys(ALICE, "a\\", 10) == ["a\\b"]
    assert store.read_kv_keys(ALICE, "ab", 10) == ["ab", "abc"]
    assert store.read_kv_keys(ALICE, "é", 10) == ["é", "éa"]
    assert store.read_kv_keys(ALICE, "日本", 10) == ["日本", "日本語"]
    assert store.read_kv_keys(ALICE, "日", 10) == ["日曜", "日本", "日本語"]  # U+66DC < U+672C
    assert store.read_kv_keys(ALICE, "\U0001f600", 10) == ["\U0001f600x"]
    # The next code point after U+D7FF is U+E000 (surrogates are skipped).
    assert store.read_kv_keys(ALICE, "\ud7ff", 10) == ["\ud7ff", "\ud7ffz"]
    assert store.read_kv_keys(ALICE, "\U0010ffff", 10) == ["\U0010ffff", "\U0010ffff\U0010ffff"]
    assert store.read_kv_keys(ALICE, "", 100) == sorted(keys)
    assert store.read_kv_keys(ALICE, "a", 3) == ["a", "a%", "a%b"]
    assert store.read_kv_keys(ALICE, "a", 1) == ["a"]
    assert store.read_kv_keys(ALICE, "a", 0) == []
    assert store.read_kv_keys(ALICE, "zzz", 10) == []
    assert store.read_kv_keys(ALICE, "abcd", 10) == []


async def test_count_agents_and_stored_bytes_per_kind(store: StateStore) -> None:
    assert store.count_agents() == 0
    assert store.stored_bytes() == 0
    store.commit(_turn(ALICE, b"12345", kv_bytes=10))
    store.commit(_turn(BOB, b"123", kv_bytes=0))
    store.commit(_turn(OTHER_ALICE, None, kv_bytes=4))
    store.commit(_turn(ALICE, b"1", kv_bytes=2))
    assert store.count_agents() == 3
    assert store.count_agents("chat") == 2
    assert store.count_agents("notes") == 1
    assert store.count_agents("nope") == 0
    assert store.stored_bytes("chat") == (1 + 2) + 3
    assert store.stored_bytes("notes") == 4
    assert store.stored_bytes() == 10
    assert store.stored_bytes("nope") == 0


# -- idempotency records ------------------------------------------------------------------------


async def test_idempotency_record_commits_with_the_turn(store: StateStore) -> None:
    store.commit(_turn(ALICE, b"s1", {"k": b"v"}, kv_bytes=2, at=1.0))
    assert _response(store, ALICE, "req-1") is None
    # A turn that changes neither state nor kv, committed only for its response.
    store.commit(_turn(ALICE, at=2.0, key="req-1", response=b"r1"))
    assert _response(store, ALICE, "req-1") == b"r1"
    assert store.read_agent(ALICE) == AgentRecord(
        state=b"s1", kv_bytes=2, turns=2, created_at=1.0, updated_at=2.0
    )
    assert store.read_kv(ALICE, "k") == b"v"
    # With effects, the record lands with them.
    store.commit(_turn(ALICE, b"s3", {"j": b"w"}, kv_bytes=4, at=3.0, key="req-2", response=b""))
    assert _response(store, ALICE, "req-2") == b""
    assert store.read_kv(ALICE, "j") == b"w"
    # Keys belong to one agent; a response without a key records nothing.
    store.commit(_turn(BOB, b"b", at=4.0, response=b"ignored"))
    assert _response(store, BOB, "req-1") is None
    assert _response(store, OTHER_ALICE, "req-1") is None
    assert _response(store, ALICE, "req-3") is None
    # An agent's first turn may be a response-only one.
    store.commit(_turn(OTHER_ALICE, at=5.0, key="req-1", response=b"o"))
    assert store.read_agent(OTHER_ALICE) == AgentRecord(
        state=None, kv_bytes=0, turns=1, created_at=5.0, updated_at=5.0
    )
    assert _response(store, OTHER_ALICE, "req-1") == b"o"
    # The same key for another agent is another record.
    store.commit(_turn(BOB, at=6.0, key="req-1", response=b"bob"))
    assert _response(store, BOB, "req-1") == b"bob"
    assert _response(store, ALICE, "req-1") == b"r1"


async def test_duplicate_idempotency_key_fails_the_whole_commit(store: StateStore) -> None:
    store.commit(_turn(ALICE, b"s", {"k": b"v"}, kv_bytes=2, at=1.0, key="a", response=b"1"))
    store.commit(
        Commit(
            ALICE,
            at=1.5,
            turn=False,
            deliveries=[_delivery(ALICE, "t1", 10.0)],
            usage=Usage(turns=1),
            usage_day="d",
        )
    )
    before = _snapshot(store, ALICE)
    duplicate = Commit(
        ALICE,
        at=2.0,
        state=b"t",
        kv_writes={"k": b"w", "new": b"n"},
        kv_bytes=9,
        idempotency_key="a",
        response=b"other",
        deliveries=[_delivery(ALICE, "t2", 5.0), _delivery(BOB, "msg", 0.0)],
        cancelled=["t1"],
        handled=Handled("t1", None),
        usage=Usage(llm_input_tokens=7, turns=1),
        usage_day="d",
    )
    with pytest.raises(StorageError, match="already recorded"):
        store.commit(duplicate)
    assert _response(store, ALICE, "a") == b"1"
    assert _snapshot(store, ALICE) == before
    assert store.read_deliveries(BOB) == []
    assert store.read_agent(BOB) is None


async def test_commit_with_key_but_no_response_fails(store: StateStore) -> None:
    store.commit(_turn(ALICE, b"s", {"k": b"v"}, kv_bytes=2, at=1.0))
    before = _snapshot(store, ALICE)
    with pytest.raises(StorageError):
        store.commit(_turn(ALICE, b"t", {"k": b"w"}, kv_bytes=2, at=2.0, key="c"))
    assert _response(store, ALICE, "c") is None
    assert _snapshot(store, ALICE) == before


async def test_prune_responses_by_age(store: StateStore) -> None:
    for i, address in enumerate([ALICE, BOB, OTHER_ALICE, ALICE], start=1):
        store.commit(_turn(address, b"s", at=float(i), key=f"r{i}", response=f"{i}".encode()))
    assert store.prune_responses(1.0) == 0  # strictly older only
    assert _response(store, ALICE, "r1") == b"1"
    assert store.prune_responses(2.5) == 2
    assert _response(store, ALICE, "r1") is None
    assert _response(store, BOB, "r2") is None
    assert _response(store, OTHER_ALICE, "r3") == b"3"
    assert _response(store, ALICE, "r4") == b"4"
    assert store.prune_responses(2.5) == 0
    # Pruning touches only idempotency records.
    record = store.read_agent(ALICE)
    assert record is not None
    assert (record.state, record.turns) == (b"s", 2)
    assert store.read_agent(BOB) is not None
    assert store.count_agents() == 3
    # A pruned key may be recorded again.
    store.commit(_turn(ALICE, None, at=5.0, key="r1", response=b"again"))
    assert _response(store, ALICE, "r1") == b"again"
    export = store.export_agent(ALICE)
    assert export is not None
    assert export.responses == 2
    assert store.prune_responses(100.0) == 3
    assert _response(store, ALICE, "r4") is None
    assert _response(store, ALICE, "r1") is None


# -- deliveries ---------------------------------------------------------------------------------


async def test_deliveries_are_stored_for_their_receiver(store: StateStore) -> None:
    timer = Delivery(ALICE, "tick", 30.0, "timer", b"", every_s=15.0, catch_up="all")
    later = Delivery(ALICE, "later", 50.0, "timer", b"\x00\x01", catch_up="skip")
    message = _delivery(BOB, "alice:1", 20.0, b"hello", event_kind="agent")
    assert store.read_deliveries(ALICE) == []
    store.commit(Commit(ALICE, at=10.0, state=b"s", kv_bytes=0, deliveries=[later, timer, message]))
    assert store.read_deliveries(ALICE) == [timer, later]  # earliest first, fields kept
    assert store.read_deliveries(BOB) == [message]
    assert store.read_deliveries(OTHER_ALICE) == []
    # A message to an agent does not create its record.
    assert store.read_agent(BOB) is None
    # A bookkeeping commit may add a delivery (e.g. an op's result handed back).
    result = _delivery(ALICE, "op:1", 25.0, b"result", event_kind="continuation")
    store.commit(Commit(ALICE, at=11.0, turn=False, deliveries=[result]))
    assert store.read_deliveries(ALICE) == [result, timer, later]


async def test_delivery_with_an_existing_id_replaces_it(store: StateStore) -> None:
    store.commit(Commit(ALICE, deliveries=[_delivery(ALICE, "t", 10.0, b"old")]))
    store.commit(Commit(BOB, deliveries=[_delivery(BOB, "t", 11.0, b"bob")]))
    new = Delivery(ALICE, "t", 5.0, "agent", b"new", every_s=2.5, catch_up="skip")
    store.commit(Commit(ALICE, deliveries=[new]))
    assert store.read_deliveries(ALICE) == [new]
    # The same id of another agent is another delivery.
    assert store.read_deliveries(BOB) == [_delivery(BOB, "t", 11.0, b"bob")]
    # Replacing a recurring timer by a one-shot one clears its period.
    one_shot = _delivery(ALICE, "t", 7.0, b"one")
    store.commit(Commit(ALICE, turn=False, deliveries=[one_shot]))
    assert store.read_deliveries(ALICE) == [one_shot]


async def test_cancelled_deletes_only_the_agents_own_deliveries(store: StateStore) -> None:
    store.commit(
        Commit(
            ALICE,
            deliveries=[
                _delivery(ALICE, "a", 1.0),
                _delivery(ALICE, "b", 2.0),
                _delivery(ALICE, "c", 3.0),
            ],
        )
    )
    store.commit(Commit(BOB, deliveries=[_delivery(BOB, "a", 1.0)]))
    store.commit(Commit(OTHER_ALICE, deliveries=[_delivery(OTHER_ALICE, "a", 1.0)]))
    store.commit(Commit(ALICE, cancelled=["a", "c", "unknown"]))
    assert _ids(store.read_deliveries(ALICE)) == ["b"]
    assert _ids(store.read_deliveries(BOB)) == ["a"]
    assert _ids(store.read_deliveries(OTHER_ALICE)) == ["a"]


async def test_handled_deletes_or_rearms_the_delivery(store: StateStore) -> None:
    recurring = Delivery(ALICE, "tick", 10.0, "timer", b"tick", every_s=10.0, catch_up="all")
    store.commit(Commit(ALICE, deliveries=[recurring, _delivery(ALICE, "once", 12.0)]))
    store.commit(Commit(BOB, deliveries=[_delivery(BOB, "once", 12.0)]))
    # Handling a recurring timer moves it to its next due time and keeps everything else.
    store.commit(Commit(ALICE, at=10.0, state=b"s", handled=Handled("tick", 20.0)))
    assert store.read_deliveries(ALICE) == [
        _delivery(ALICE, "once", 12.0),
        Delivery(ALICE, "tick", 20.0, "timer", b"tick", every_s=10.0, catch_up="all"),
    ]
    # Handling a one-shot delivery deletes it; only the committing agent's.
    store.commit(Commit(ALICE, at=12.0, handled=Handled("once", None)))
    assert _ids(store.read_deliveries(ALICE)) == ["tick"]
    assert _ids(store.read_deliveries(BOB)) == ["once"]
    # Handling an id that is not there (already handled, or cancelled) is no error.
    store.commit(Commit(ALICE, at=13.0, handled=Handled("once", None)))
    store.commit(Commit(ALICE, at=13.0, handled=Handled("gone", 99.0)))
    assert store.read_deliveries(ALICE) == [
        Delivery(ALICE, "tick", 20.0, "timer", b"tick", every_s=10.0, catch_up="all")
    ]
    # The host's own moves (turn=False) do the same without touching the record.
    store.commit(Commit(ALICE, at=14.0, turn=False, handled=Handled("tick", 40.0)))
    assert [d.due_at for d in store.read_deliveries(ALICE)] == [40.0]
    store.commit(Commit(ALICE, at=15.0, turn=False, handled=Handled("tick", None)))
    assert store.read_deliveries(ALICE) == []
    record = store.read_agent(ALICE)
    assert record is not None
    assert (record.turns, record.updated_at) == (5, 13.0)


async def test_handled_and_cancelled_apply_before_new_deliveries(store: StateStore) -> None:
    store.commit(
        Commit(ALICE, deliveries=[_delivery(ALICE, "t", 1.0, b"old"), _delivery(ALICE, "u", 2.0)])
    )
    # The turn handling timer "t" sets "t" again, and re-sets the "u" it cancels.
    store.commit(
        Commit(
            ALICE,
            handled=Handled("t", None),
            cancelled=["u"],
            deliveries=[_delivery(ALICE, "t", 60.0, b"new"), _delivery(ALICE, "u", 70.0)],
        )
    )
    assert store.read_deliveries(ALICE) == [
        _delivery(ALICE, "t", 60.0, b"new"),
        _delivery(ALICE, "u", 70.0),
    ]
    # Re-arming a recurring timer the same turn replaces keeps the replacement.
    store.commit(
        Commit(
            ALICE, handled=Handled("t", 120.0), deliveries=[_delivery(ALICE, "t", 90.0, b"newer")]
        )
    )
    assert store.read_deliveries(ALICE)[-1] == _delivery(ALICE, "t", 90.0, b"newer")


async def test_due_deliveries_order_limit_and_next_due_at(store: StateStore) -> None:
    assert store.due_deliveries(1e18, 10) == []
    assert store.next_due_at() is None
    store.commit(
        Commit(ALICE, deliveries=[_delivery(ALICE, "a3", 30.0), _delivery(BOB, "to-bob", 10.0)])
    )
    store.commit(Commit(OTHER_ALICE, deliveries=[_delivery(OTHER_ALICE, "n2", 20.0)]))
    store.commit(Commit(BOB, turn=False, deliveries=[_delivery(BOB, "b4", 40.0)]))
    assert store.next_due_at() == 10.0
    assert _ids(store.due_deliveries(9.9, 10)) == []
    assert _ids(store.due_deliveries(10.0, 10)) == ["to-bob"]  # due at `now` counts
    assert _ids(store.due_deliveries(30.0, 10)) == ["to-bob", "n2", "a3"]
    assert _ids(store.due_deliveries(1e18, 10)) == ["to-bob", "n2", "a3", "b4"]
    assert _ids(store.due_deliveries(1e18, 2)) == ["to-bob", "n2"]
    assert store.due_deliveries(1e18, 0) == []
    # Reading them does not consume them.
    assert _ids(store.due_deliveries(30.0, 10)) == ["to-bob", "n2", "a3"]
    due = store.due_deliveries(10.0, 1)[0]
    assert due == _delivery(BOB, "to-bob", 10.0)
    # Handling the earliest moves next_due_at on.
    store.commit(Commit(BOB, at=10.0, handled=Handled("to-bob", None)))
    assert store.next_due_at() == 20.0
    store.commit(Commit(OTHER_ALICE, at=20.0, turn=False, handled=Handled("n2", 35.0)))
    assert store.next_due_at() == 30.0
    assert _ids(store.due_deliveries(1e18, 10)) == ["a3", "n2", "b4"]
    store.commit(Commit(ALICE, cancelled=["a3"]))
    store.commit(Commit(OTHER_ALICE, cancelled=["n2"]))
    store.commit(Commit(BOB, cancelled=["b4"]))
    assert store.next_due_at() is None
    assert store.due_deliveries(1e18, 10) == []


# -- usage --------------------------------------------------------------------------------------


async def test_usage_accumulates_per_agent_and_day(store: StateStore) -> None:
    assert store.read_usage(ALICE, "2024-01-01") == Usage()
    first = Usage(llm_input_tokens=10, llm_output_tokens=5, http_calls=1, cpu_ms=1.5, turns=1)
    store.commit(Commit(ALICE, at=1.0, state=b"s", usage=first, usage_day="2024-01-01"))
    assert store.read_usage(ALICE, "2024-01-01") == first
    # A failed turn's usage, recorded by the host (turn=False).
    failed = Usage(cpu_ms=0.25, errors=1)
    store.commit(Commit(ALICE, at=2.0, turn=False, usage=failed, usage_day="2024-01-01"))
    second = Usage(llm_input_tokens=1, llm_output_tokens=2, http_calls=3, cpu_ms=4.0, turns=1)
    store.commit(Commit(ALICE, at=3.0, usage=second, usage_day="2024-01-01"))
    assert store.read_usage(ALICE, "2024-01-01") == Usage(
        llm_input_tokens=11, llm_output_tokens=7, http_calls=4, cpu_ms=5.75, turns=2, errors=1
    )
    # Days and agents are separate.
    store.commit(Commit(ALICE, at=4.0, usage=Usage(turns=1), usage_day="2024-01-02"))
    store.commit(Commit(OTHER_ALICE, turn=False, usage=Usage(errors=2), usage_day="2024-01-01"))
    assert store.read_usage(ALICE, "2024-01-02") == Usage(turns=1)
    assert store.read_usage(OTHER_ALICE, "2024-01-01") == Usage(errors=2)
    assert store.read_usage(BOB, "2024-01-01") == Usage()
    assert store.read_usage(ALICE, "2024-01-01").turns == 2
    # A commit without usage adds none.
    store.commit(Commit(ALICE, at=5.0, usage_day="2024-01-01"))
    assert store.read_usage(ALICE, "2024-01-01").turns == 2
    # Usage is not part of the record's turns.
    record = store.read_agent(ALICE)
    assert record is not None
    assert record.turns == 4


async def test_bookkeeping_commit_creates_no_record(store: StateStore) -> None:
    store.commit(
        Commit(
            ALICE,
            at=5.0,
            turn=False,
            deliveries=[_delivery(ALICE, "op:1", 1.0)],
            usage=Usage(errors=1),
            usage_day="d",
        )
    )
    store.commit(Commit(ALICE, at=6.0, turn=False, handled=Handled("op:1", 2.0)))
    assert store.read_agent(ALICE) is None
    assert store.export_agent(ALICE) is None
    assert store.count_agents() == 0
    assert store.count_agents("chat") == 0
    assert store.stored_bytes() == 0
    assert store.list_agents("chat", after=None, limit=10) == []
    # What it carried is there.
    assert store.read_usage(ALICE, "d") == Usage(errors=1)
    assert [d.due_at for d in store.read_deliveries(ALICE)] == [2.0]
    # On an existing record it leaves turns, updated_at and state alone.
    store.commit(_turn(BOB, b"s", {"k": b"v"}, kv_bytes=2, at=1.0))
    store.commit(Commit(BOB, at=9.0, turn=False, usage=Usage(errors=1), usage_day="d"))
    store.commit(Commit(BOB, at=9.0, turn=False, deliveries=[_delivery(BOB, "x", 3.0)]))
    assert store.read_agent(BOB) == AgentRecord(
        state=b"s", kv_bytes=2, turns=1, created_at=1.0, updated_at=1.0
    )
    # A turn of an agent that so far had only bookkeeping rows creates its record.
    store.commit(_turn(ALICE, b"now", at=7.0))
    assert store.read_agent(ALICE) == AgentRecord(
        state=b"now", kv_bytes=0, turns=1, created_at=7.0, updated_at=7.0
    )


# -- failures -----------------------------------------------------------------------------------

_BAD = cast(bytes, "not bytes")

_BAD_COMMITS: dict[str, Commit] = {
    "state": Commit(ALICE, at=9.0, state=_BAD, kv_writes={"k": b"new"}, kv_bytes=4),
    "kv value": Commit(ALICE, at=9.0, state=b"new", kv_writes={"n": b"1", "k": _BAD}),
    "delivery payload": Commit(
        ALICE,
        at=9.0,
        state=b"new",
        deliveries=[_delivery(ALICE, "ok", 1.0), _delivery(BOB, "bad", 1.0, _BAD)],
    ),
    "response": Commit(
        ALICE, at=9.0, state=b"new", kv_writes={"n": b"1"}, idempotency_key="r", response=_BAD
    ),
    "bookkeeping payload": Commit(
        ALICE,
        at=9.0,
        turn=False,
        deliveries=[_delivery(ALICE, "bad", 1.0, _BAD)],
        usage=Usage(errors=1),
        usage_day="d",
    ),
}


@pytest.mark.parametrize("wait", [True, False], ids=["wait", "no-wait"])
@pytest.mark.parametrize("bad", sorted(_BAD_COMMITS))
async def test_failed_commit_writes_nothing(store: StateStore, bad: str, wait: bool) -> None:
    store.commit(_turn(ALICE, b"old", {"k": b"old"}, kv_bytes=4, at=1.0, key="a", response=b"1"))
    store.commit(
        Commit(
            ALICE,
            turn=False,
            deliveries=[_delivery(ALICE, "t", 5.0)],
            usage=Usage(turns=1),
            usage_day="d",
        )
    )
    before = _snapshot(store, ALICE)
    # The bad value, alongside one of everything else a commit can write.
    bad_commit = _BAD_COMMITS[bad]
    commit = dataclasses.replace(
        bad_commit,
        deliveries=[*bad_commit.deliveries, _delivery(BOB, "also", 2.0)],
        cancelled=["t"],
        handled=Handled("t", None),
        usage=Usage(llm_input_tokens=3),
        usage_day="d",
    )
    try:
        written = store.commit(commit, wait=wait)
    except StorageError:
        pass
    else:  # without waiting, a store may decline before even looking at the commit
        assert not wait
        assert written is False
    assert _snapshot(store, ALICE) == before
    assert _response(store, ALICE, "r") is None
    assert store.read_deliveries(BOB) == []
    # The store still works.
    store.commit(_turn(ALICE, b"next", at=10.0))
    record = store.read_agent(ALICE)
    assert record is not None
    assert (record.state, record.turns) == (b"next", 2)


async def test_storage_error_names_the_agent(store: StateStore) -> None:
    with pytest.raises(StorageError, match="chat/alice"):
        store.commit(_BAD_COMMITS["state"])


# -- delete, fork, list, export -----------------------------------------------------------------


async def test_delete_agent_removes_everything(store: StateStore) -> None:
    for address in (ALICE, BOB, OTHER_ALICE):
        store.commit(
            Commit(
                address,
                at=1.0,
                state=b"s",
                kv_writes={"a": b"1", "b": b"2"},
                kv_bytes=4,
                idempotency_key="r",
                response=b"x",
                deliveries=[_delivery(address, "own", 10.0)],
                usage=Usage(turns=1),
                usage_day="d",
            )
        )
    # A message from Bob waiting for Alice, and one from Alice waiting for Bob.
    store.commit(Commit(BOB, turn=False, deliveries=[_delivery(ALICE, "from-bob", 5.0)]))
    store.commit(Commit(ALICE, turn=False, deliveries=[_delivery(BOB, "from-alice", 6.0)]))

    assert store.delete_agent(ALICE) is True
    assert store.read_agent(ALICE) is None
    assert store.read_kv_keys(ALICE, "", 10) == []
    assert store.read_kv(ALICE, "a") is None
    assert _response(store, ALICE, "r") is None
    assert store.read_deliveries(ALICE) == []
    assert store.read_usage(ALICE, "d") == Usage()
    assert store.export_agent(ALICE) is None
    assert store.count_agents() == 2
    assert store.stored_bytes() == 2 * (1 + 4)
    assert all(d.address != ALICE for d in store.due_deliveries(1e18, 100))
    # Neighbours (same id in another kind, another id in the same kind) are untouched,
    # including what Alice sent to Bob.
    for address in (BOB, OTHER_ALICE):
        assert store.read_kv_keys(address, "", 10) == ["a", "b"]
        assert _response(store, address, "r") == b"x"
        assert store.read_usage(address, "d") == Usage(turns=1)
    assert _ids(store.read_deliveries(BOB)) == ["from-alice", "own"]
    assert _ids(store.read_deliveries(OTHER_ALICE)) == ["own"]

    assert store.delete_agent(ALICE) is False
    assert store.delete_agent(AgentAddress("chat", "nobody")) is False
    # The id can be used afresh.
    store.commit(_turn(ALICE, b"new", at=9.0))
    assert store.read_agent(ALICE) == AgentRecord(
        state=b"new", kv_bytes=0, turns=1, created_at=9.0, updated_at=9.0
    )
    assert _response(store, ALICE, "r") is None
    assert store.read_usage(ALICE, "d") == Usage()


@pytest.mark.parametrize("row", ["usage", "delivery"])
async def test_delete_agent_removes_bookkeeping_without_a_record(
    store: StateStore, row: str
) -> None:
    if row == "usage":
        store.commit(Commit(ALICE, turn=False, usage=Usage(errors=1), usage_day="d"))
    else:
        store.commit(Commit(BOB, turn=False, deliveries=[_delivery(ALICE, "m", 1.0)]))
    assert store.delete_agent(ALICE) is True
    assert store.read_usage(ALICE, "d") == Usage()
    assert store.read_deliveries(ALICE) == []
    assert store.next_due_at() is None
    assert store.delete_agent(ALICE) is False


async def test_fork_copies_state_and_kv(store: StateStore) -> None:
    target = AgentAddress("chat", "alice-copy")
    other_kind = AgentAddress("notes", "copy")
    store.commit(_turn(ALICE, b"s1", {"a": b"1", "b": b"2"}, kv_bytes=4, at=1.0))
    store.commit(
        Commit(
            ALICE,
            at=2.0,
            state=b"s2",
            idempotency_key="r",
            response=b"x",
            deliveries=[_delivery(ALICE, "t", 10.0)],
            usage=Usage(turns=1),
            usage_day="d",
        )
    )
    before = time.time()
    assert store.fork_agent(ALICE, target) == "forked"
    assert store.fork_agent(ALICE, other_kind) == "forked"
    after = time.time()
    for address in (target, other_kind):
        record = store.read_agent(address)
        assert record is not None
        assert (record.state, record.kv_bytes, record.turns) == (b"s2", 4, 0)
        assert before - 1 <= record.created_at == record.updated_at <= after + 1
        assert store.read_kv_keys(address, "", 10) == ["a", "b"]
        assert store.read_kv(address, "a") == b"1"
        # Responses, deliveries and usage belong to the source's turns; the copy has none.
        assert _response(store, address, "r") is None
        assert store.read_deliveries(address) == []
        assert store.read_usage(address, "d") == Usage()
        export = store.export_agent(address)
        assert export is not None
        assert (export.responses, export.deliveries) == (0, [])
    assert store.stored_bytes() == 3 * (2 + 4)
    assert store.count_agents() == 3
    # The source is unchanged.
    assert store.read_agent(ALICE) == AgentRecord(
        state=b"s2", kv_bytes=4, turns=2, created_at=1.0, updated_at=2.0
    )
    assert _ids(store.read_deliveries(ALICE)) == ["t"]

    # Later writes on either side do not reach the other.
    store.commit(_turn(ALICE, b"s3", {"a": None, "c": b"3"}, kv_bytes=4, at=3.0))
    store.commit(_turn(target, b"t1", {"b": b"22"}, kv_bytes=5, at=4.0))
    assert store.read_kv_keys(ALICE, "", 10) == ["b", "c"]
    assert store.read_kv(ALICE, "b") == b"2"
    assert store.read_kv_keys(target, "", 10) == ["a", "b"]
    assert store.read_kv(target, "b") == b"22"
    assert store.read_kv_keys(other_kind, "", 10) == ["a", "b"]
    target_record = store.read_agent(target)
    assert target_record is not None
    assert (target_record.state, target_record.turns) == (b"t1", 1)
    alice = store.read_agent(ALICE)
    assert alice is not None
    assert (alice.state, alice.turns) == (b"s3", 3)
    other = store.read_agent(other_kind)
    assert other is not None
    assert other.state == b"s2"
    # Deleting the source leaves the copies alone.
    assert store.delete_agent(ALICE) is True
    assert store.read_kv(other_kind, "b") == b"2"


async def test_fork_of_an_agent_without_state_or_kv(store: StateStore) -> None:
    store.commit(_turn(ALICE, at=1.0))
    assert store.fork_agent(ALICE, BOB) == "forked"
    record = store.read_agent(BOB)
    assert record is not None
    assert (record.state, record.kv_bytes, record.turns) == (None, 0, 0)
    assert store.read_kv_keys(BOB, "", 10) == []
    assert store.count_agents() == 2


async def test_fork_writes_nothing_unless_forked(store: StateStore) -> None:
    store.commit(_turn(ALICE, b"alice", {"a": b"1"}, kv_bytes=2, at=1.0))
    store.commit(_turn(BOB, b"bob", {"b": b"2"}, kv_bytes=2, at=2.0))
    bob_before = _snapshot(store, BOB)

    assert store.fork_agent(ALICE, BOB) == "target_exists"
    assert store.fork_agent(ALICE, ALICE) == "target_exists"
    assert _snapshot(store, BOB) == bob_before
    missing = AgentAddress("chat", "missing")
    fresh = AgentAddress("chat", "fresh")
    assert store.fork_agent(missing, fresh) == "source_missing"
    assert store.fork_agent(missing, BOB) == "source_missing"
    assert store.export_agent(fresh) is None
    assert store.read_kv_keys(fresh, "", 10) == []
    assert _snapshot(store, BOB) == bob_before
    assert store.count_agents() == 2


@pytest.mark.parametrize("row", ["usage", "delivery"])
async def test_fork_refuses_a_target_holding_any_rows(store: StateStore, row: str) -> None:
    store.commit(_turn(ALICE, b"alice", {"a": b"1"}, kv_bytes=2, at=1.0))
    if row == "usage":
        store.commit(Commit(BOB, turn=False, usage=Usage(errors=1), usage_day="d"))
    else:  # a message waiting for an agent that never ran a turn
        store.commit(Commit(ALICE, turn=False, deliveries=[_delivery(BOB, "m", 1.0)]))
    bob_before = _snapshot(store, BOB)
    assert store.fork_agent(ALICE, BOB) == "target_exists"
    assert _snapshot(store, BOB) == bob_before
    assert store.read_kv(BOB, "a") is None


async def test_fork_needs_a_record_not_just_bookkeeping(store: StateStore) -> None:
    store.commit(
        Commit(
            ALICE,
            turn=False,
            deliveries=[_delivery(ALICE, "t", 1.0)],
            usage=Usage(errors=1),
            usage_day="d",
        )
    )
    assert store.fork_agent(ALICE, BOB) == "source_missing"
    assert store.read_agent(BOB) is None
    assert store.delete_agent(BOB) is False


async def test_list_agents_pages_by_id(store: StateStore) -> None:
    ids = ["a0", "a1", "a2", "b0", "b1", "b2", "c0", "c1"]
    for i, agent_id in enumerate(reversed(ids)):
        address = AgentAddress("chat", agent_id)
        store.commit(_turn(address, b"x" * i, {"k": b"v"}, kv_bytes=2, at=float(i)))
    store.commit(_turn(AgentAddress("notes", "a5"), b"n"))
    store.commit(_turn(AgentAddress("chats", "a5"), b"n"))
    store.commit(_turn(AgentAddress("chat", "a0"), None, at=20.0))
    # Bookkeeping rows alone do not list an agent.
    store.commit(Commit(AgentAddress("chat", "b5"), turn=False, usage=Usage(), usage_day="d"))

    pages: list[list[AgentSummary]] = []
    after: str | None = None
    while True:
        page = store.list_agents("chat", after=after, limit=3)
        if not page:
            break
        pages.append(page)
        after = page[-1].id
    assert [[s.id for s in page] for page in pages] == [ids[0:3], ids[3:6], ids[6:8]]
    assert pages[0][0] == AgentSummary(
        id="a0", state_bytes=7, kv_bytes=2, turns=2, created_at=7.0, updated_at=20.0
    )
    assert pages[2][-1] == AgentSummary(
        id="c1", state_bytes=0, kv_bytes=2, turns=1, created_at=0.0, updated_at=0.0
    )
    # ``after`` need not be an existing id; the bound is strict.
    summaries = store.list_agents("chat", after="b", limit=10)
    assert [s.id for s in summaries] == ids[3:]
    summaries = store.list_agents("chat", after="b1", limit=2)
    assert [s.id for s in summaries] == ["b2", "c0"]
    assert store.list_agents("chat", after="c1", limit=10) == []
    assert store.list_agents("chat", after=None, limit=0) == []
    assert [s.id for s in store.list_agents("notes", after=None, limit=10)] == ["a5"]
    assert [s.id for s in store.list_agents("chats", after=None, limit=10)] == ["a5"]
    assert store.list_agents("nothing", after=None, limit=10) == []


async def test_list_agents_orders_ids_by_code_point(store: StateStore) -> None:
    ids = ["B", "a", "a.b", "a-b", "a_b", "a:b", "a@b", "Z9", "0", "_"]
    for agent_id in ids:
        store.commit(_turn(AgentAddress("chat", agent_id)))
    assert [s.id for s in store.list_agents("chat", after=None, limit=100)] == sorted(ids)
    assert [s.id for s in store.list_agents("chat", after="Z", limit=100)] == sorted(
        i for i in ids if i > "Z"
    )


async def test_export_agent_contents(store: StateStore) -> None:
    assert store.export_agent(ALICE) is None
    store.commit(_turn(ALICE, b"s1", {"z": b"26", "a": b"1", "m": b""}, kv_bytes=6, at=1.0))
    store.commit(
        Commit(
            ALICE,
            at=2.0,
            state=b"s2",
            kv_writes={"m": None, "é": b"e"},
            kv_bytes=8,
            idempotency_key="r1",
            response=b"",
            deliveries=[_delivery(ALICE, "late", 50.0), _delivery(BOB, "to-bob", 1.0)],
        )
    )
    store.commit(_turn(ALICE, None, at=3.0, key="r2", response=b"x"))
    store.commit(
        Commit(
            BOB,
            at=4.0,
            state=b"bob",
            kv_writes={"b": b"b"},
            idempotency_key="r9",
            response=b"y",
            deliveries=[_delivery(ALICE, "from-bob", 20.0, event_kind="agent")],
        )
    )
    export = store.export_agent(ALICE)
    assert export == AgentExport(
        record=AgentRecord(state=b"s2", kv_bytes=8, turns=3, created_at=1.0, updated_at=3.0),
        kv={"a": b"1", "z": b"26", "é": b"e"},
        responses=2,
        deliveries=[
            _delivery(ALICE, "from-bob", 20.0, event_kind="agent"),
            _delivery(ALICE, "late", 50.0),
        ],
    )
    assert export is not None
    assert list(export.kv) == ["a", "z", "é"]
    store.commit(_turn(OTHER_ALICE, None, at=4.0))
    assert store.export_agent(OTHER_ALICE) == AgentExport(
        record=AgentRecord(state=None, kv_bytes=0, turns=1, created_at=4.0, updated_at=4.0),
        kv={},
        responses=0,
    )


async def test_export_is_a_consistent_snapshot(store: StateStore) -> None:
    """Each export matches one committed turn, never a mix of two, while turns commit."""
    rounds = 80
    store.commit(_turn(ALICE, b"0", {"k0": b"0"}, kv_bytes=3))
    bad: list[AgentExport | None] = []
    stop = threading.Event()

    def exporter() -> None:
        while not stop.is_set():
            export = store.export_agent(ALICE)
            if export is None or export.record.state is None:
                bad.append(export)
                continue
            n = int(export.record.state)
            if export.kv != {f"k{n}": str(n).encode()} or export.record.turns != n + 1:
                bad.append(export)

    threads = [threading.Thread(target=exporter) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for i in range(1, rounds):
            store.commit(
                _turn(ALICE, str(i).encode(), {f"k{i - 1}": None, f"k{i}": str(i).encode()})
            )
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert bad == []


# -- order and concurrency ----------------------------------------------------------------------


async def test_writes_apply_in_call_order(store: StateStore) -> None:
    # A delete called after a commit returned sees that commit...
    store.commit(_turn(ALICE, b"s1", {"late": b"l"}, kv_bytes=5, at=1.0))
    assert store.delete_agent(ALICE) is True
    assert store.export_agent(ALICE) is None
    # ... and a commit after the delete starts afresh.
    store.commit(_turn(ALICE, b"s2", {"new": b"n"}, kv_bytes=4, at=2.0))
    record = store.read_agent(ALICE)
    assert record is not None
    assert (record.state, record.turns, record.created_at) == (b"s2", 1, 2.0)
    assert store.read_kv_keys(ALICE, "", 10) == ["new"]
    # A fork sees the commit before it, not the one after.
    store.commit(_turn(BOB, b"b1", {"k": b"1"}))
    assert store.fork_agent(BOB, OTHER_ALICE) == "forked"
    store.commit(_turn(BOB, b"b2", {"k": b"2"}))
    fork = store.export_agent(OTHER_ALICE)
    assert fork is not None
    assert (fork.record.state, fork.kv) == (b"b1", {"k": b"1"})
    # A prune sees the record committed before it.
    store.commit(_turn(ALICE, at=5.0, key="r", response=b"x"))
    assert store.prune_responses(6.0) == 1
    # A commit that did not wait, but returned True, is seen by what follows.
    if store.commit(_turn(ALICE, b"s3", at=7.0), wait=False):
        assert store.delete_agent(ALICE) is True
        assert store.read_agent(ALICE) is None


async def test_writes_apply_in_call_order_across_threads(store: StateStore) -> None:
    """Each step runs on its own thread, after the previous one returned."""
    results: list[object] = []
    steps: list[Callable[[], object]] = [
        lambda: store.commit(_turn(ALICE, b"a", {"k": b"1"}, kv_bytes=2)),
        lambda: store.fork_agent(ALICE, BOB),
        lambda: store.commit(_turn(ALICE, b"b", {"k": b"2"})),
        lambda: store.delete_agent(ALICE),
        lambda: store.commit(_turn(BOB, b"c", {"j": b"3"})),
        lambda: store.read_agent(ALICE),
        lambda: store.read_kv_keys(BOB, "", 10),
    ]
    for step in steps:
        thread = threading.Thread(target=lambda step=step: results.append(step()))
        thread.start()
        thread.join(timeout=60)
    assert results == [True, "forked", True, True, True, None, ["j", "k"]]


async def test_commits_from_many_threads_all_land(store: StateStore) -> None:
    threads, per_thread = 16, 25
    shared = AgentAddress("chat", "shared")

    def work(t: int) -> None:
        own = AgentAddress("chat", f"t{t}")
        for i in range(per_thread):
            assert store.commit(_turn(own, f"{t}:{i}".encode(), {f"k{i}": b"v"}, at=float(i)))
            store.commit(
                Commit(shared, state=b"s", kv_writes={f"t{t}:{i}": b"x"}, usage=Usage(turns=1))
            )
            store.commit(
                Commit(
                    shared,
                    turn=False,
                    deliveries=[_delivery(shared, f"t{t}:{i}", float(i))],
                    usage=Usage(errors=1),
                )
            )

    _in_threads(threads, work)
    for t in range(threads):
        own = AgentAddress("chat", f"t{t}")
        record = store.read_agent(own)
        assert record is not None
        assert (record.state, record.turns) == (f"{t}:{per_thread - 1}".encode(), per_thread)
        assert len(store.read_kv_keys(own, "", 100)) == per_thread
    record = store.read_agent(shared)
    assert record is not None
    assert record.turns == threads * per_thread
    assert len(store.read_kv_keys(shared, "", 1000)) == threads * per_thread
    assert len(store.read_deliveries(shared)) == threads * per_thread
    assert store.read_usage(shared, "") == Usage(
        turns=threads * per_thread, errors=threads * per_thread
    )
    assert store.count_agents() == threads + 1


async def test_reads_see_whole_commits_from_many_threads(store: StateStore) -> None:
    rounds = 60
    store.commit(_turn(ALICE, None, {"x000a": b"0", "x000b": b"0"}))
    seen: list[list[str]] = []

    def reader(_index: int) -> None:
        for _ in range(rounds):
            seen.append(store.read_kv_keys(ALICE, "x", 10))

    def writer() -> None:
        for i in range(1, rounds):
            store.commit(
                _turn(
                    ALICE,
                    None,
                    {
                        f"x{i - 1:03}a": None,
                        f"x{i - 1:03}b": None,
                        f"x{i:03}a": b"1",
                        f"x{i:03}b": b"1",
                    },
                )
            )

    def work(index: int) -> None:
        if index == 0:
            writer()
        else:
            reader(index)

    _in_threads(9, work)
    assert len(seen) == 8 * rounds
    for keys in seen:
        assert len(keys) == 2, keys
        assert keys[0][:4] == keys[1][:4], keys
    assert store.read_kv_keys(ALICE, "x", 10) == [f"x{rounds - 1:03}a", f"x{rounds - 1:03}b"]


async def test_deletes_and_commits_from_many_threads(store: StateStore) -> None:
    """Deletes racing commits of the same agent leave either nothing or whole commits."""
    agents = [AgentAddress("chat", f"r{i}") for i in range(8)]

    def work(t: int) -> None:
        for i in range(30):
            address = agents[(t + i) % len(agents)]
            if t % 2:
                store.delete_agent(address)
            else:
                store.commit(_turn(address, f"{i}".encode(), {"a": b"1", "b": b"2"}, kv_bytes=4))

    _in_threads(8, work)
    for address in agents:
        export = store.export_agent(address)
        if export is not None:
            assert export.kv == {"a": b"1", "b": b"2"}
            assert export.record.kv_bytes == 4
            assert export.record.state is not None
    assert store.count_agents() == sum(store.read_agent(a) is not None for a in agents)


async def test_commit_without_waiting_is_all_or_nothing(store: StateStore) -> None:
    """``wait=False`` returns True having written the commit, or False having written none of
    it; whichever it is, a later ``wait=True`` commit of the same writes lands."""

    def commit_for(address: AgentAddress) -> Commit:
        return Commit(
            address,
            at=1.0,
            state=b"s",
            kv_writes={"k": b"v"},
            kv_bytes=2,
            idempotency_key="r",
            response=b"x",
            deliveries=[_delivery(address, "t", 1.0)],
            usage=Usage(turns=1),
            usage_day="d",
        )

    def check(address: AgentAddress, written: bool) -> None:
        assert (store.read_agent(address) is not None) is written, address
        assert (store.read_kv(address, "k") == b"v") is written, address
        assert (_response(store, address, "r") == b"x") is written, address
        assert len(store.read_deliveries(address)) == int(written), address
        assert store.read_usage(address, "d") == (Usage(turns=1) if written else Usage())

    idle = store.commit(commit_for(ALICE), wait=False)
    assert isinstance(idle, bool)
    check(ALICE, idle)

    # Now while other threads keep writing.
    stop = threading.Event()
    busy = AgentAddress("chat", "busy")

    def background(_index: int) -> None:
        i = 0
        while not stop.is_set():
            store.commit(_turn(busy, kv={f"k{i}": b"v"}))
            i += 1

    outcomes: dict[AgentAddress, bool] = {}
    writers = threading.Thread(target=lambda: _in_threads(4, background))
    writers.start()
    try:
        for i in range(200):
            address = AgentAddress("chat", f"nw{i}")
            outcomes[address] = store.commit(commit_for(address), wait=False)
    finally:
        stop.set()
        writers.join(timeout=60)
    for address, written in outcomes.items():
        assert isinstance(written, bool)
        check(address, written)
    for address, written in [(ALICE, idle), *outcomes.items()]:
        if not written:
            assert store.commit(commit_for(address)) is True
        check(address, True)


# -- the async adapter --------------------------------------------------------------------------


async def test_async_store_runs_methods_and_commits(store: StateStore) -> None:
    stores = AsyncStore(store)
    assert stores.store is store
    assert await stores.run(store.read_agent, ALICE) is None
    await stores.commit(_turn(ALICE, b"s", {"k": b"v"}, kv_bytes=2, at=1.0))
    assert await stores.run(store.read_agent, ALICE) == AgentRecord(
        state=b"s", kv_bytes=2, turns=1, created_at=1.0, updated_at=1.0
    )
    assert await stores.run(store.read_kv_keys, ALICE, "", 10) == ["k"]
    summaries = await stores.run(store.list_agents, "chat", after=None, limit=10)
    assert [s.id for s in summaries] == ["alice"]
    assert await stores.run(store.fork_agent, ALICE, BOB) == "forked"
    assert await stores.run(store.count_agents, "chat") == 2
    assert await stores.run(store.delete_agent, ALICE) is True
    assert await stores.run(store.read_agent, ALICE) is None
    # Many tasks committing at once.
    async with trio.open_nursery() as nursery:
        for i in range(50):
            address = AgentAddress("notes", f"n{i}")
            nursery.start_soon(stores.commit, _turn(address, f"{i}".encode(), at=float(i)))
            nursery.start_soon(
                stores.commit,
                Commit(OTHER_ALICE, turn=False, usage=Usage(turns=1), usage_day="d"),
            )
    assert store.count_agents("notes") == 50
    for i in range(50):
        record = store.read_agent(AgentAddress("notes", f"n{i}"))
        assert record is not None
        assert record.state == f"{i}".encode()
    assert store.read_usage(OTHER_ALICE, "d") == Usage(turns=50)


async def test_async_store_raises_the_stores_errors(store: StateStore) -> None:
    stores = AsyncStore(store)
    with pytest.raises(StorageError):
        await stores.commit(_BAD_COMMITS["state"])
    with pytest.raises(StorageError):
        await stores.run(store.commit, _BAD_COMMITS["kv value"])
    assert store.read_agent(ALICE) is None
    assert store.read_kv(ALICE, "n") is None


class _Recording:
    """A store whose ``commit(wait=False)`` answers ``immediate`` (or, when None, asks the
    real store), recording the thread of every call."""

    def __init__(self, store: StateStore, immediate: bool | None) -> None:
        self.store = store
        self.immediate = immediate
        self.calls: list[tuple[bool, int]] = []

    def commit(self, commit: Commit, *, wait: bool = True) -> bool:
        self.calls.append((wait, threading.get_ident()))
        if not wait and self.immediate is not None:
            return self.immediate and self.store.commit(commit)
        return self.store.commit(commit, wait=wait)


@pytest.mark.parametrize("immediate", [True, False])
async def test_async_store_commit_falls_back_to_a_worker_thread(
    store: StateStore, immediate: bool
) -> None:
    recording = _Recording(store, immediate)
    stores = AsyncStore(cast(StateStore, recording))
    await stores.commit(_turn(ALICE, b"s", at=1.0))
    loop_thread = threading.get_ident()
    if immediate:
        assert recording.calls == [(False, loop_thread)]
    else:
        assert len(recording.calls) == 2
        assert recording.calls[0] == (False, loop_thread)
        wait, thread = recording.calls[1]
        assert wait is True
        assert thread != loop_thread
    record = store.read_agent(ALICE)
    assert record is not None
    assert record.turns == 1  # written exactly once


async def test_async_store_uses_its_limiter(store: StateStore) -> None:
    limiter = trio.CapacityLimiter(1)
    stores = AsyncStore(store, limiter=limiter)
    declining = AsyncStore(cast(StateStore, _Recording(store, False)), limiter=limiter)
    results: list[object] = []

    async def read() -> None:
        results.append(await stores.run(store.read_agent, ALICE))

    async def commit() -> None:
        await declining.commit(_turn(ALICE, b"s"))
        results.append("committed")

    async with trio.open_nursery() as nursery, limiter:
        nursery.start_soon(read)
        nursery.start_soon(commit)
        await trio.testing.wait_all_tasks_blocked()
        # Both wait for the token this task holds.
        assert limiter.statistics().tasks_waiting == 2
        assert results == []
    assert len(results) == 2
    assert "committed" in results
    assert store.read_agent(ALICE) is not None


# -- persistence --------------------------------------------------------------------------------


async def test_contents_persist_across_reopen(open_store: StoreFactory, store_dir: Path) -> None:
    async with open_store(store_dir) as store:
        store.commit(_turn(ALICE, b"s", {"k": b"v", "j": b"w"}, kv_bytes=4, at=1.0))
        store.commit(
            Commit(
                ALICE,
                at=2.0,
                kv_writes={"j": None},
                kv_bytes=2,
                idempotency_key="r",
                response=b"resp",
                deliveries=[_delivery(ALICE, "t", 9.0, every_s=3.0), _delivery(BOB, "m", 8.0)],
                usage=Usage(llm_input_tokens=4, cpu_ms=0.5, turns=1),
                usage_day="2024-05-01",
            )
        )
        store.commit(_turn(OTHER_ALICE, b"other", at=3.0))
        before = {a: _snapshot(store, a, "2024-05-01") for a in (ALICE, BOB, OTHER_ALICE)}
    async with open_store(store_dir) as store:
        assert store.read_agent(ALICE) == AgentRecord(
            state=b"s", kv_bytes=2, turns=2, created_at=1.0, updated_at=2.0
        )
        assert store.read_kv(ALICE, "k") == b"v"
        assert store.read_kv(ALICE, "j") is None
        assert _response(store, ALICE, "r") == b"resp"
        assert store.count_agents() == 2
        assert store.next_due_at() == 8.0
        assert {a: _snapshot(store, a, "2024-05-01") for a in before} == before
        store.commit(_turn(ALICE, b"t", at=4.0, key="r2", response=b"resp2"))
        assert store.fork_agent(OTHER_ALICE, AgentAddress("notes", "copy")) == "forked"
        assert store.delete_agent(OTHER_ALICE) is True
        assert store.prune_responses(3.0) == 1
        store.commit(Commit(ALICE, turn=False, handled=Handled("t", None)))
    async with open_store(store_dir) as store:
        record = store.read_agent(ALICE)
        assert record is not None
        assert (record.state, record.turns) == (b"t", 3)
        assert store.read_agent(OTHER_ALICE) is None
        copy = store.read_agent(AgentAddress("notes", "copy"))
        assert copy is not None
        assert (copy.state, copy.turns) == (b"other", 0)
        assert _response(store, ALICE, "r") is None
        assert _response(store, ALICE, "r2") == b"resp2"
        assert _ids(store.read_deliveries(ALICE)) == []
        assert _ids(store.due_deliveries(1e18, 10)) == ["m"]


# -- property test against a dict model ---------------------------------------------------------

_ADDRESSES = [ALICE, BOB, OTHER_ALICE]
_KEYS = st.text(alphabet="ab%_/\\é日\U0010ffff", max_size=3)
_COMMITS = st.fixed_dictionaries(
    {
        "state": st.none() | st.binary(max_size=12),
        "kv": st.dictionaries(_KEYS, st.none() | st.binary(max_size=6), max_size=4),
    }
)
_ROUNDS = st.dictionaries(st.sampled_from(range(len(_ADDRESSES))), _COMMITS, min_size=1)
_STEPS = st.lists(st.just("reopen") | _ROUNDS, max_size=10)


class _Model:
    def __init__(self) -> None:
        self.records: dict[AgentAddress, AgentRecord] = {}
        self.kv: dict[AgentAddress, dict[str, bytes]] = {a: {} for a in _ADDRESSES}

    def kv_bytes(self, address: AgentAddress) -> int:
        return sum(len(k.encode()) + len(v) for k, v in self.kv[address].items())

    def apply(
        self, address: AgentAddress, state: bytes | None, kv: dict[str, bytes | None], at: float
    ) -> None:
        for key, value in kv.items():
            if value is None:
                self.kv[address].pop(key, None)
            else:
                self.kv[address][key] = value
        prior = self.records.get(address)
        self.records[address] = AgentRecord(
            state=state if state is not None else (prior.state if prior else None),
            kv_bytes=self.kv_bytes(address),
            turns=(prior.turns if prior else 0) + 1,
            created_at=prior.created_at if prior else at,
            updated_at=at,
        )


def _check_against_model(store: StateStore, model: _Model) -> None:
    all_keys = {key for kv in model.kv.values() for key in kv} | {"", "a", "%", "_", "zz"}
    prefixes = {key[:n] for key in all_keys for n in range(len(key) + 1)}
    for address in _ADDRESSES:
        assert store.read_agent(address) == model.records.get(address)
        kv = model.kv[address]
        for key in all_keys:
            assert store.read_kv(address, key) == kv.get(key)
        for prefix in prefixes:
            expected = sorted(k for k in kv if k.startswith(prefix))
            assert store.read_kv_keys(address, prefix, 100) == expected
            assert store.read_kv_keys(address, prefix, 2) == expected[:2]
        export = store.export_agent(address)
        if address in model.records:
            assert export is not None
            assert (export.record, export.kv) == (model.records[address], dict(sorted(kv.items())))
        else:
            assert export is None
    for kind in (None, "chat", "notes"):
        records = [r for a, r in model.records.items() if kind is None or a.kind == kind]
        assert store.count_agents(kind) == len(records)
        assert store.stored_bytes(kind) == sum(len(r.state or b"") + r.kv_bytes for r in records)


async def _run_model(open_store: StoreFactory, directory: Path, steps: list[Any]) -> None:
    model = _Model()
    segments: list[list[dict[int, Any]]] = [[]]
    for step in steps:
        if step == "reopen":
            segments.append([])
        else:
            segments[-1].append(step)
    at = 0.0
    for segment in segments:
        async with open_store(directory) as store:
            stores = AsyncStore(store)
            _check_against_model(store, model)
            for commits in segment:
                at += 1.0
                async with trio.open_nursery() as nursery:
                    for index, spec in commits.items():
                        address = _ADDRESSES[index]
                        model.apply(address, spec["state"], spec["kv"], at)
                        commit = Commit(
                            address,
                            at=at,
                            state=spec["state"],
                            kv_writes=spec["kv"],
                            # None when the kv did not change: the size is kept.
                            kv_bytes=model.kv_bytes(address) if spec["kv"] else None,
                        )
                        nursery.start_soon(stores.commit, commit)
                _check_against_model(store, model)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(steps=_STEPS)
def test_store_matches_dict_model(open_store: StoreFactory, steps: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        trio.run(_run_model, open_store, Path(directory), steps)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    state=st.binary(max_size=2000),
    kv=st.dictionaries(
        st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=20),
        st.binary(max_size=200),
        max_size=8,
    ),
)
def test_state_and_kv_round_trip(
    open_store: StoreFactory, state: bytes, kv: dict[str, bytes]
) -> None:
    """Whatever state and kv a turn saves, the agent restores byte for byte, also after the
    store is reopened."""

    size = sum(len(k.encode()) + len(v) for k, v in kv.items())

    async def main(directory: Path) -> None:
        async with open_store(directory) as store:
            store.commit(_turn(ALICE, state, dict(kv), kv_bytes=size, at=1.0))
            check(store)
        async with open_store(directory) as store:
            check(store)

    def check(store: StateStore) -> None:
        record = store.read_agent(ALICE)
        assert record is not None
        assert (record.state, record.kv_bytes) == (state, size)
        for key, value in kv.items():
            assert store.read_kv(ALICE, key) == value
        assert store.read_kv_keys(ALICE, "", 100) == sorted(kv)
        export = store.export_agent(ALICE)
        assert export is not None
        assert export.kv == kv
        assert list(export.kv) == sorted(kv)

    with tempfile.TemporaryDirectory() as directory:
        trio.run(main, Path(directory))


def _response(store: StateStore, address: AgentAddress, key: str) -> bytes | None:
    """The response recorded under ``key``, or None."""
    record = store.read_response(address, key)
    return None if record is None else record.response


# -- exactly once: conditional handling, failed deliveries, journal, pending ops ----------------


def _journal(message_id: str, seq: int, value: bytes = b"v", *, ok: bool = True) -> JournalEntry:
    return JournalEntry(message_id, seq, "timers", "sleep", f"sha-{message_id}-{seq}", ok, value)


def _op(address: AgentAddress, op_key: str, *, tag: bytes = b"\xc0") -> PendingOp:
    return PendingOp(address, op_key, "agents", "ask", b"ask " + op_key.encode(), "on_done", tag)


@pytest.mark.parametrize("wait", [True, False], ids=["wait", "no-wait"])
async def test_handled_with_due_at_refuses_a_delivery_moved_or_gone(
    store: StateStore, wait: bool
) -> None:
    assert issubclass(AlreadyHandled, StorageError)
    store.commit(
        Commit(
            ALICE,
            turn=False,
            deliveries=[_delivery(ALICE, "t", 10.0), _delivery(ALICE, "u", 11.0)],
        )
    )
    store.commit(_turn(ALICE, b"s0", {"k": b"0"}, kv_bytes=2, at=1.0))
    before = _snapshot(store, ALICE)
    # Read as due at 9, but it is due at 10 now: another commit moved it. One of everything
    # else a commit can write rides along; none of it is written.
    stale = Commit(
        ALICE,
        at=2.0,
        state=b"s1",
        kv_writes={"k": b"1"},
        kv_bytes=2,
        idempotency_key="r",
        response=b"x",
        request_sha="h",
        deliveries=[_delivery(BOB, "m", 3.0)],
        cancelled=["u"],
        handled=Handled("t", None, 9.0),
        journal=[_journal("m1", 1)],
        clear_journal="m0",
        ops_started=[_op(ALICE, "m1/1")],
        usage=Usage(turns=1),
        usage_day="d",
    )
    try:
        written = store.commit(stale, wait=wait)
    except AlreadyHandled:
        pass
    else:  # without waiting, a store may decline before even looking at the commit
        assert not wait
        assert written is False
    assert _snapshot(store, ALICE) == before
    assert store.read_response(ALICE, "r") is None
    assert store.read_deliveries(BOB) == []
    assert store.read_journal(ALICE, "m1") == []
    assert store.pending_ops(10) == []
    # As it was read: handled (re-armed at 20).
    store.commit(Commit(ALICE, at=3.0, state=b"s1", handled=Handled("t", 20.0, 10.0)))
    assert [(d.delivery_id, d.due_at) for d in store.read_deliveries(ALICE)] == [
        ("u", 11.0),
        ("t", 20.0),
    ]
    # That occurrence again (read at 10 by a second reader): refused, turn or bookkeeping.
    with pytest.raises(AlreadyHandled):
        store.commit(Commit(ALICE, at=4.0, state=b"s2", handled=Handled("t", 30.0, 10.0)))
    with pytest.raises(AlreadyHandled):
        store.commit(
            Commit(
                ALICE,
                at=4.0,
                turn=False,
                handled=Handled("t", None, 10.0),
                usage=Usage(errors=1),
                usage_day="d",
            )
        )
    # Another agent's delivery of the same id is not this one.
    with pytest.raises(AlreadyHandled):
        store.commit(Commit(BOB, at=4.0, state=b"b", handled=Handled("t", None, 20.0)))
    assert store.read_agent(BOB) is None
    assert store.read_usage(ALICE, "d") == Usage()
    # The next occurrence, as read: deleted. Then it is gone: refused.
    store.commit(Commit(ALICE, at=5.0, handled=Handled("t", None, 20.0)))
    assert _ids(store.read_deliveries(ALICE)) == ["u"]
    with pytest.raises(AlreadyHandled):
        store.commit(Commit(ALICE, at=6.0, state=b"s3", handled=Handled("t", None, 20.0)))
    # Without due_at there is no check: a missing delivery is no error, a present one is
    # handled wherever it is.
    store.commit(Commit(ALICE, at=7.0, handled=Handled("t", None)))
    store.commit(Commit(ALICE, at=7.0, handled=Handled("u", 50.0)))
    assert [(d.delivery_id, d.due_at) for d in store.read_deliveries(ALICE)] == [("u", 50.0)]
    assert store.read_agent(ALICE) == AgentRecord(
        state=b"s1", kv_bytes=2, turns=5, created_at=1.0, updated_at=7.0
    )
    assert store.read_kv(ALICE, "k") == b"0"


async def test_failed_delivery_counts_attempts_then_moves_it_to_the_dead_letters(
    store: StateStore,
) -> None:
    store.commit(
        Commit(
            ALICE,
            turn=False,
            deliveries=[_delivery(ALICE, "t", 10.0, b"payload"), _delivery(ALICE, "u", 10.0)],
        )
    )
    store.commit(
        Commit(ALICE, at=11.0, turn=False, failed_delivery=FailedDelivery("t", "boom 1", 12.0))
    )
    assert store.read_deliveries(ALICE) == [
        _delivery(ALICE, "u", 10.0),
        dataclasses.replace(
            _delivery(ALICE, "t", 12.0, b"payload"), attempts=1, last_error="boom 1"
        ),
    ]
    store.commit(
        Commit(ALICE, at=13.0, turn=False, failed_delivery=FailedDelivery("t", "boom 2", 14.0))
    )
    assert _ids(store.due_deliveries(13.0, 10)) == ["u"]
    (retried,) = [d for d in store.due_deliveries(14.0, 10) if d.delivery_id == "t"]
    assert (retried.due_at, retried.attempts, retried.last_error) == (14.0, 2, "boom 2")
    assert store.read_dead_letters(ALICE) == []
    assert store.count_dead_letters() == {}
    # Given up: the delivery leaves the deliveries for the dead letters, with this attempt.
    store.commit(
        Commit(ALICE, at=15.0, turn=False, failed_delivery=FailedDelivery("t", "boom 3", None))
    )
    assert _ids(store.read_deliveries(ALICE)) == ["u"]
    assert store.read_dead_letters(ALICE) == [
        DeadLetter(ALICE, "t", "timer", b"payload", 3, "boom 3", 15.0)
    ]
    assert store.read_agent(ALICE) is None
    assert store.count_dead_letters() == {"chat": 1}
    assert store.count_dead_letters("chat") == {"chat": 1}
    assert store.count_dead_letters("notes") == {}
    # Per agent, oldest first, counted by kind.
    store.commit(
        Commit(
            OTHER_ALICE,
            turn=False,
            deliveries=[_delivery(OTHER_ALICE, "x", 1.0, event_kind="agent")],
        )
    )
    store.commit(
        Commit(OTHER_ALICE, at=16.0, turn=False, failed_delivery=FailedDelivery("x", "no", None))
    )
    store.commit(Commit(ALICE, at=17.0, turn=False, failed_delivery=FailedDelivery("u", "u", None)))
    assert store.read_dead_letters(ALICE) == [
        DeadLetter(ALICE, "t", "timer", b"payload", 3, "boom 3", 15.0),
        DeadLetter(ALICE, "u", "timer", b"p", 1, "u", 17.0),
    ]
    assert store.read_dead_letters(OTHER_ALICE) == [
        DeadLetter(OTHER_ALICE, "x", "agent", b"p", 1, "no", 16.0)
    ]
    assert store.read_dead_letters(BOB) == []
    assert store.count_dead_letters() == {"chat": 2, "notes": 1}
    assert store.count_dead_letters("notes") == {"notes": 1}
    assert store.next_due_at() is None
    assert store.due_deliveries(1e18, 10) == []


async def test_a_failed_delivery_in_a_failing_commit_is_not_moved(store: StateStore) -> None:
    store.commit(Commit(ALICE, turn=False, deliveries=[_delivery(ALICE, "t", 10.0)]))
    before = _snapshot(store, ALICE)
    for retry_at in (None, 20.0):
        with pytest.raises(StorageError):
            store.commit(
                Commit(
                    ALICE,
                    at=11.0,
                    turn=False,
                    failed_delivery=FailedDelivery("t", "x", retry_at),
                    deliveries=[_delivery(BOB, "bad", 1.0, _BAD)],
                )
            )
        assert _snapshot(store, ALICE) == before
        assert store.read_dead_letters(ALICE) == []
        assert store.count_dead_letters() == {}


async def test_journal_entries_by_message_and_seq(store: StateStore) -> None:
    assert store.read_journal(ALICE, "m1") == []
    store.commit(Commit(ALICE, at=1.0, turn=False, journal=[_journal("m1", 2), _journal("m2", 1)]))
    store.commit(Commit(ALICE, at=2.0, turn=False, journal=[_journal("m1", 1, b"first")]))
    store.commit(Commit(BOB, at=2.0, turn=False, journal=[_journal("m1", 1, b"bob")]))
    store.commit(Commit(OTHER_ALICE, at=2.0, turn=False, journal=[_journal("m1", 1, b"other")]))
    assert store.read_journal(ALICE, "m1") == [_journal("m1", 1, b"first"), _journal("m1", 2)]
    assert store.read_agent(ALICE) is None
    # The same seq again replaces the entry; failures and any bytes round trip.
    failed = JournalEntry("m1", 2, "agents", "ask", "sha-2", False, "timed out é".encode())
    store.commit(Commit(ALICE, at=3.0, turn=False, journal=[failed]))
    binary = _journal("m1", 3, bytes(range(256)))
    store.commit(Commit(ALICE, at=3.0, turn=False, journal=[binary]))
    assert store.read_journal(ALICE, "m1") == [_journal("m1", 1, b"first"), failed, binary]
    # Clearing deletes that message's entries of that agent only.
    store.commit(Commit(ALICE, at=4.0, state=b"s", clear_journal="m1"))
    assert store.read_journal(ALICE, "m1") == []
    assert store.read_journal(ALICE, "m2") == [_journal("m2", 1)]
    assert store.read_journal(BOB, "m1") == [_journal("m1", 1, b"bob")]
    assert store.read_journal(OTHER_ALICE, "m1") == [_journal("m1", 1, b"other")]
    store.commit(Commit(ALICE, at=5.0, turn=False, clear_journal="nothing"))
    assert store.read_journal(ALICE, "m2") == [_journal("m2", 1)]


async def test_pending_ops_oldest_first_until_finished(store: StateStore) -> None:
    assert store.pending_ops(10) == []
    first = _op(ALICE, "m1/1", tag=b"\x81\xa1t\x01")
    bobs = _op(BOB, "m1/1")
    second = _op(ALICE, "m2/1")
    third = _op(ALICE, "m2/2")
    store.commit(Commit(ALICE, at=1.0, state=b"s", ops_started=[first]))
    store.commit(Commit(BOB, at=2.0, turn=False, ops_started=[bobs]))
    store.commit(Commit(ALICE, at=3.0, turn=False, ops_started=[second]))
    store.commit(Commit(ALICE, at=4.0, turn=False, ops_started=[third]))
    assert store.pending_ops(10) == [first, bobs, second, third]
    assert store.pending_ops(2) == [first, bobs]
    assert store.pending_ops(0) == []
    assert store.op_pending(ALICE, "m1/1") and store.op_pending(BOB, "m1/1")
    # The commit that delivers an op's result removes it: the agent's own only.
    result = _delivery(ALICE, "c-m1/1", 5.0, event_kind="continuation")
    store.commit(Commit(ALICE, at=5.0, turn=False, op_finished="m1/1", deliveries=[result]))
    assert store.pending_ops(10) == [bobs, second, third]
    assert not store.op_pending(ALICE, "m1/1") and store.op_pending(BOB, "m1/1")
    assert not store.op_pending(OTHER_ALICE, "m2/1")
    assert store.read_deliveries(ALICE) == [result]
    # The result handled (its delivery gone), the op run again (a stale read of the
    # pending ops): its second result is refused whole, delivery included.
    store.commit(Commit(ALICE, at=6.0, turn=False, cancelled=["c-m1/1"]))
    again = _delivery(ALICE, "c-m1/1", 7.0, event_kind="continuation")
    with pytest.raises(AlreadyHandled):
        store.commit(Commit(ALICE, at=7.0, turn=False, op_finished="m1/1", deliveries=[again]))
    assert store.read_deliveries(ALICE) == []
    with pytest.raises(AlreadyHandled):
        store.commit(Commit(ALICE, at=8.0, turn=False, op_finished="unknown"))
    assert store.pending_ops(10) == [bobs, second, third]
    record = store.read_agent(ALICE)
    assert record is not None and record.turns == 1


async def test_read_response_returns_the_request_digest(store: StateStore) -> None:
    store.commit(
        Commit(ALICE, at=1.0, idempotency_key="r1", response=b"resp", request_sha="abc123")
    )
    store.commit(_turn(ALICE, at=2.0, key="r2", response=b"old"))
    assert store.read_response(ALICE, "r1") == IdempotencyRecord(b"resp", "abc123")
    assert store.read_response(ALICE, "r2") == IdempotencyRecord(b"old", None)
    assert store.read_response(BOB, "r1") is None
    assert store.read_response(OTHER_ALICE, "r1") is None


async def test_a_turn_commit_adds_its_turns_to_the_record(store: StateStore) -> None:
    store.commit(Commit(ALICE, at=1.0, turns=3, state=b"s"))
    assert store.read_agent(ALICE) == AgentRecord(
        state=b"s", kv_bytes=0, turns=3, created_at=1.0, updated_at=1.0
    )
    store.commit(Commit(ALICE, at=2.0, turns=2))
    store.commit(Commit(ALICE, at=3.0))
    store.commit(Commit(ALICE, at=4.0, turn=False, turns=7, usage=Usage(errors=1), usage_day="d"))
    assert store.read_agent(ALICE) == AgentRecord(
        state=b"s", kv_bytes=0, turns=6, created_at=1.0, updated_at=3.0
    )
    (summary,) = store.list_agents("chat", after=None, limit=10)
    assert summary.turns == 6


async def test_delete_agent_removes_journal_pending_ops_and_dead_letters(
    store: StateStore,
) -> None:
    for address in (ALICE, BOB):
        store.commit(
            Commit(
                address,
                at=1.0,
                state=b"s",
                deliveries=[_delivery(address, "dead", 1.0)],
                journal=[_journal("m", 1)],
                ops_started=[_op(address, "m/1")],
            )
        )
        store.commit(
            Commit(address, at=2.0, turn=False, failed_delivery=FailedDelivery("dead", "x", None))
        )
    assert store.delete_agent(ALICE) is True
    assert store.read_journal(ALICE, "m") == []
    assert store.read_dead_letters(ALICE) == []
    assert store.pending_ops(10) == [_op(BOB, "m/1")]
    assert store.count_dead_letters() == {"chat": 1}
    assert store.read_journal(BOB, "m") == [_journal("m", 1)]
    assert [d.delivery_id for d in store.read_dead_letters(BOB)] == ["dead"]
    assert store.delete_agent(ALICE) is False


_EXACTLY_ONCE_ROWS: dict[str, Callable[[AgentAddress], list[Commit]]] = {
    "journal": lambda a: [Commit(a, turn=False, journal=[_journal("m", 1)])],
    "pending op": lambda a: [Commit(a, turn=False, ops_started=[_op(a, "m/1")])],
    "dead letter": lambda a: [
        Commit(a, turn=False, deliveries=[_delivery(a, "d", 1.0)]),
        Commit(a, turn=False, failed_delivery=FailedDelivery("d", "x", None)),
    ],
}


@pytest.mark.parametrize("row", sorted(_EXACTLY_ONCE_ROWS))
async def test_delete_agent_removes_exactly_once_rows_without_a_record(
    store: StateStore, row: str
) -> None:
    for commit in _EXACTLY_ONCE_ROWS[row](ALICE):
        store.commit(commit)
    assert store.delete_agent(ALICE) is True
    assert store.read_journal(ALICE, "m") == []
    assert store.pending_ops(10) == []
    assert store.read_dead_letters(ALICE) == []
    assert store.count_dead_letters() == {}
    assert store.delete_agent(ALICE) is False


@pytest.mark.parametrize("row", sorted(_EXACTLY_ONCE_ROWS))
async def test_fork_refuses_a_target_holding_exactly_once_rows(store: StateStore, row: str) -> None:
    store.commit(_turn(BOB, b"s", {"k": b"v"}, kv_bytes=2, at=1.0))
    for commit in _EXACTLY_ONCE_ROWS[row](ALICE):
        store.commit(commit)
    assert store.fork_agent(BOB, ALICE) == "target_exists"
    assert store.read_agent(ALICE) is None
    assert store.read_kv(ALICE, "k") is None


async def test_export_includes_dead_letters_and_pending_ops(store: StateStore) -> None:
    store.commit(
        Commit(
            ALICE,
            at=1.0,
            state=b"s",
            deliveries=[
                _delivery(ALICE, "d1", 1.0),
                _delivery(ALICE, "d2", 2.0),
                _delivery(ALICE, "live", 50.0),
            ],
            ops_started=[_op(ALICE, "m/1")],
        )
    )
    store.commit(Commit(ALICE, at=2.0, turn=False, failed_delivery=FailedDelivery("d2", "2", None)))
    store.commit(
        Commit(
            ALICE,
            at=3.0,
            turn=False,
            failed_delivery=FailedDelivery("d1", "1", None),
            ops_started=[_op(ALICE, "m/2")],
        )
    )
    store.commit(
        Commit(
            BOB,
            at=4.0,
            turn=False,
            deliveries=[_delivery(BOB, "d", 1.0)],
            ops_started=[_op(BOB, "b/1")],
        )
    )
    store.commit(Commit(BOB, at=5.0, turn=False, failed_delivery=FailedDelivery("d", "b", None)))
    assert store.export_agent(ALICE) == AgentExport(
        record=AgentRecord(state=b"s", kv_bytes=0, turns=1, created_at=1.0, updated_at=1.0),
        kv={},
        responses=0,
        deliveries=[_delivery(ALICE, "live", 50.0)],
        dead_letters=[
            DeadLetter(ALICE, "d2", "timer", b"p", 1, "2", 2.0),
            DeadLetter(ALICE, "d1", "timer", b"p", 1, "1", 3.0),
        ],
        pending_ops=[_op(ALICE, "m/1"), _op(ALICE, "m/2")],
    )
    # Rows of an agent that never committed a turn (nor kv) export nothing.
    assert store.export_agent(BOB) is None


async def test_a_bookkeeping_commit_carries_journal_ops_and_a_failed_delivery(
    store: StateStore,
) -> None:
    # A handler's progress: its message in the inbox, an op result, a continuation op.
    inbox = Delivery(ALICE, "in-1", 1.0, "message", b"hello", idempotency_key="key")
    op = _op(ALICE, "in-1/2")
    store.commit(
        Commit(
            ALICE,
            at=1.0,
            turn=False,
            deliveries=[inbox],
            journal=[_journal("in-1", 1)],
            ops_started=[op],
            usage=Usage(llm_input_tokens=5),
            usage_day="d",
        )
    )
    assert store.read_agent(ALICE) is None
    assert store.count_agents() == 0
    assert store.read_deliveries(ALICE) == [inbox]
    assert store.read_journal(ALICE, "in-1") == [_journal("in-1", 1)]
    assert store.pending_ops(10) == [op]
    assert store.read_usage(ALICE, "d") == Usage(llm_input_tokens=5)
    # A failed attempt, an op's result and another journal entry, still without a turn.
    store.commit(
        Commit(
            ALICE,
            at=2.0,
            turn=False,
            failed_delivery=FailedDelivery("in-1", "e", 3.0),
            op_finished=op.op_key,
            journal=[_journal("in-1", 2)],
        )
    )
    assert store.read_agent(ALICE) is None
    assert store.read_deliveries(ALICE) == [
        dataclasses.replace(inbox, due_at=3.0, attempts=1, last_error="e")
    ]
    assert store.pending_ops(10) == []
    assert store.read_journal(ALICE, "in-1") == [_journal("in-1", 1), _journal("in-1", 2)]
    # The handler's final commit: its turns, its response, the entry (as read) and journal.
    store.commit(
        Commit(
            ALICE,
            at=4.0,
            turns=3,
            state=b"done",
            idempotency_key="key",
            response=b"r",
            request_sha="h",
            handled=Handled("in-1", None, 3.0),
            clear_journal="in-1",
        )
    )
    assert store.read_agent(ALICE) == AgentRecord(
        state=b"done", kv_bytes=0, turns=3, created_at=4.0, updated_at=4.0
    )
    assert store.read_deliveries(ALICE) == []
    assert store.read_journal(ALICE, "in-1") == []
    assert store.read_response(ALICE, "key") == IdempotencyRecord(b"r", "h")


# -- leases -------------------------------------------------------------------------------------

H1 = "h1/aaaa"
H1_RESTARTED = "h1/bbbb"
H2 = "h2/cccc"


async def test_a_free_lease_is_taken_and_kept_by_its_holder(store: StateStore) -> None:
    first = store.acquire_lease(ALICE, H1, 30.0)
    assert (first.address, first.owner) == (ALICE, H1)
    again = store.acquire_lease(ALICE, H1, 30.0)
    assert (again.owner, again.token) == (H1, first.token)
    # Another host finds the holder's lease, unchanged.
    other = store.acquire_lease(ALICE, H2, 30.0)
    assert (other.owner, other.token) == (H1, first.token)
    # Leases are per agent.
    assert store.acquire_lease(BOB, H2, 30.0).owner == H2


async def test_a_commit_needs_the_lease_it_names(store: StateStore) -> None:
    lease = store.acquire_lease(ALICE, H1, 30.0)
    assert store.commit(Commit(ALICE, at=1.0, state=b"one", fence=lease.token))
    with pytest.raises(LeaseLost):
        store.commit(Commit(ALICE, at=2.0, state=b"stale", fence=lease.token + 1))
    with pytest.raises(LeaseLost):  # an agent nobody holds
        store.commit(Commit(BOB, at=2.0, state=b"b", fence=1))
    record = store.read_agent(ALICE)
    assert record is not None and (record.state, record.turns) == (b"one", 1)
    assert store.read_agent(BOB) is None


async def test_an_expired_lease_is_taken_over_and_the_old_holder_fenced(
    store: StateStore,
) -> None:
    old = store.acquire_lease(ALICE, H1, 0.2)
    store.commit(Commit(ALICE, at=1.0, state=b"by-h1", fence=old.token))
    await trio.sleep(0.3)
    new = store.acquire_lease(ALICE, H2, 30.0)
    assert new.owner == H2 and new.token > old.token
    # The paused host wakes up and commits late: refused, nothing written.
    with pytest.raises(LeaseLost):
        store.commit(
            Commit(
                ALICE,
                at=2.0,
                state=b"late",
                kv_writes={"k": b"v"},
                deliveries=[_delivery(ALICE, "t", 5.0)],
                fence=old.token,
            )
        )
    record = store.read_agent(ALICE)
    assert record is not None and record.state == b"by-h1"
    assert store.read_kv(ALICE, "k") is None and store.read_deliveries(ALICE) == []
    assert store.renew_leases(H1, None, {ALICE: old.token}, 30.0) == {ALICE}
    assert store.commit(Commit(ALICE, at=3.0, state=b"by-h2", fence=new.token))


async def test_an_expired_lease_fences_its_holder_until_renewed(store: StateStore) -> None:
    lease = store.acquire_lease(ALICE, H1, 0.2)
    await trio.sleep(0.3)
    with pytest.raises(LeaseLost):
        store.commit(Commit(ALICE, at=1.0, state=b"x", fence=lease.token))
    # Taking it again after it lapsed gives a new token: the old one stays fenced.
    again = store.acquire_lease(ALICE, H1, 30.0)
    assert again.token > lease.token
    with pytest.raises(LeaseLost):
        store.commit(Commit(ALICE, at=1.0, state=b"x", fence=lease.token))
    assert store.commit(Commit(ALICE, at=1.0, state=b"x", fence=again.token))


async def test_a_restarted_host_takes_its_leases_back_at_once(store: StateStore) -> None:
    old = store.acquire_lease(ALICE, H1, 30.0)
    new = store.acquire_lease(ALICE, H1_RESTARTED, 30.0)
    assert new.owner == H1_RESTARTED and new.token > old.token
    with pytest.raises(LeaseLost):
        store.commit(Commit(ALICE, at=1.0, state=b"x", fence=old.token))


async def test_renewal_extends_held_leases_and_reports_lost_ones(store: StateStore) -> None:
    alice = store.acquire_lease(ALICE, H1, 0.5)
    bob = store.acquire_lease(BOB, H1, 0.5)
    for _ in range(3):
        await trio.sleep(0.25)
        assert store.renew_leases(H1, "http://h1", {ALICE: alice.token}, 0.5) == set()
    # Alice's lease was renewed past its first expiry; Bob's lapsed, and H2 takes it.
    assert store.acquire_lease(ALICE, H2, 30.0).owner == H1
    taken = store.acquire_lease(BOB, H2, 30.0)
    assert taken.owner == H2
    assert store.renew_leases(H1, "http://h1", {ALICE: alice.token, BOB: bob.token}, 0.5) == {BOB}
    # What a host announced is where the others find it.
    holder = store.acquire_lease(ALICE, H2, 30.0)
    assert (holder.owner, holder.owner_url) == (H1, "http://h1")


async def test_a_released_lease_is_free_at_once_with_a_larger_token(store: StateStore) -> None:
    lease = store.acquire_lease(ALICE, H1, 30.0)
    store.release_leases(H2, {ALICE: lease.token})  # not H2's: left alone
    assert store.acquire_lease(ALICE, H2, 30.0).owner == H1
    store.release_leases(H1, {ALICE: lease.token})
    with pytest.raises(LeaseLost):
        store.commit(Commit(ALICE, at=1.0, state=b"x", fence=lease.token))
    taken = store.acquire_lease(ALICE, H2, 30.0)
    assert taken.owner == H2 and taken.token > lease.token
    # Erasing the agent keeps its lease's token: a later holder's is larger still.
    store.delete_agent(ALICE)
    store.release_leases(H2, {ALICE: taken.token})
    assert store.acquire_lease(ALICE, H1, 30.0).token > taken.token


async def test_due_work_of_an_owner_is_what_it_holds_or_could_take(store: StateStore) -> None:
    free = AgentAddress("chat", "free")
    for address in (ALICE, BOB, free):
        store.commit(
            Commit(
                address,
                turn=False,
                deliveries=[_delivery(address, "t", 1.0)],
                ops_started=[_op(address, "op")],
            )
        )
    store.acquire_lease(ALICE, H1, 30.0)
    store.acquire_lease(BOB, H2, 30.0)
    assert {d.address for d in store.due_deliveries(10.0, 10)} == {ALICE, BOB, free}
    assert {d.address for d in store.due_deliveries(10.0, 10, owner=H1)} == {ALICE, free}
    assert {d.address for d in store.due_deliveries(10.0, 10, owner=H2)} == {BOB, free}
    assert {d.address for d in store.due_deliveries(10.0, 10, owner=H1_RESTARTED)} == {
        ALICE,
        free,
    }
    assert {op.address for op in store.pending_ops(10, owner=H1)} == {ALICE, free}
    assert {op.address for op in store.pending_ops(10, owner=H2)} == {BOB, free}
    assert len(store.due_deliveries(10.0, 1, owner=H2)) == 1
