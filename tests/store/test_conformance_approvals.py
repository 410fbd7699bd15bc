"""Conformance: approvals (``request_approval``, ``decide_approval``, ``read_approvals``,
``prune_approvals``), run once per backend of ``tests/store/conftest.py`` like
``test_conformance.py``."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import trio

from roost.address import AgentAddress
from roost.store import Approval, Commit, StateStore

from .conftest import StoreFactory

ALICE = AgentAddress("chat", "alice")
BOB = AgentAddress("chat", "bob")
OTHER_ALICE = AgentAddress("notes", "alice")


def _approval(address: AgentAddress, approval_id: str, at: float = 1.0) -> Approval:
    return Approval(
        address=address,
        approval_id=approval_id,
        request=b"\x81\xa6action\xa4send",
        requested_at=at,
        expires_at=at + 60.0,
    )


async def test_request_records_an_undecided_approval_once(store: StateStore) -> None:
    first = store.request_approval(_approval(ALICE, "ap-1"))
    assert first == _approval(ALICE, "ap-1")
    again = store.request_approval(dataclasses.replace(_approval(ALICE, "ap-1"), request=b"x"))
    assert again == first  # the earlier row, not the new request
    decided_in_request = dataclasses.replace(
        _approval(ALICE, "ap-2"), decision="approved", decided_at=2.0, decided_by="x"
    )
    assert store.request_approval(decided_in_request) == _approval(ALICE, "ap-2")
    assert store.read_approvals(ALICE) == [_approval(ALICE, "ap-1"), _approval(ALICE, "ap-2")]
    assert store.read_approvals(BOB) == []
    assert store.read_approvals(OTHER_ALICE) == []


async def test_approvals_are_read_oldest_first(store: StateStore) -> None:
    store.request_approval(_approval(ALICE, "b", at=3.0))
    store.request_approval(_approval(ALICE, "a", at=5.0))
    store.request_approval(_approval(ALICE, "c", at=1.0))
    assert [a.approval_id for a in store.read_approvals(ALICE)] == ["c", "b", "a"]


async def test_the_first_decision_stands(store: StateStore) -> None:
    store.request_approval(_approval(ALICE, "ap"))
    store.request_approval(_approval(BOB, "ap"))
    decided = store.decide_approval(ALICE, "ap", "approved", at=5.0, by="alice", note="ok")
    assert decided == dataclasses.replace(
        _approval(ALICE, "ap"), decision="approved", decided_at=5.0, decided_by="alice", note="ok"
    )
    again = store.decide_approval(ALICE, "ap", "rejected", at=6.0, by="mallory")
    assert again == decided
    assert store.read_approvals(ALICE) == [decided]
    assert store.read_approvals(BOB) == [_approval(BOB, "ap")]  # another agent's is untouched
    assert store.request_approval(_approval(ALICE, "ap")) == decided  # a retried request


async def test_deciding_an_unknown_approval_writes_nothing(store: StateStore) -> None:
    assert store.decide_approval(ALICE, "nope", "rejected", at=1.0, by="x") is None
    assert store.read_approvals(ALICE) == []
    assert store.delete_agent(ALICE) is False


async def test_expiry_is_a_decision(store: StateStore) -> None:
    store.request_approval(_approval(ALICE, "ap"))
    expired = store.decide_approval(ALICE, "ap", "expired", at=61.0, by="roost")
    assert expired is not None and expired.decision == "expired" and expired.note is None
    late = store.decide_approval(ALICE, "ap", "approved", at=62.0, by="alice")
    assert late == expired


async def test_prune_deletes_only_approvals_decided_before(store: StateStore) -> None:
    for approval_id, at in (("old", 1.0), ("new", 10.0), ("waiting", 1.0)):
        store.request_approval(_approval(ALICE, approval_id, at=at))
    store.decide_approval(ALICE, "old", "approved", at=2.0, by="x")
    store.decide_approval(ALICE, "new", "rejected", at=20.0, by="x")
    assert store.prune_approvals(10.0) == 1
    assert [a.approval_id for a in store.read_approvals(ALICE)] == ["waiting", "new"]
    assert store.prune_approvals(10.0) == 0


async def test_delete_agent_removes_its_approvals(store: StateStore) -> None:
    store.request_approval(_approval(ALICE, "ap"))
    store.request_approval(_approval(BOB, "ap"))
    assert store.delete_agent(ALICE) is True  # approvals alone are rows of the agent
    assert store.read_approvals(ALICE) == []
    assert store.read_approvals(BOB) == [_approval(BOB, "ap")]
    assert store.delete_agent(ALICE) is False


async def test_fork_neither_copies_approvals_nor_forks_onto_them(store: StateStore) -> None:
    store.commit(Commit(BOB, at=1.0, state=b"s"))
    store.request_approval(_approval(BOB, "ap"))
    assert store.fork_agent(BOB, OTHER_ALICE) == "forked"
    assert store.read_approvals(OTHER_ALICE) == []
    store.request_approval(_approval(ALICE, "ap"))
    assert store.fork_agent(BOB, ALICE) == "target_exists"


async def test_concurrent_requests_of_one_id_get_one_row(store: StateStore) -> None:
    results: list[Approval] = []
    lock = threading.Lock()

    def request(at: float) -> None:
        stored = store.request_approval(_approval(ALICE, "ap", at=at))
        with lock:
            results.append(stored)

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(trio.to_thread.run_sync, request, float(i))
    assert len({r.requested_at for r in results}) == 1
    assert store.read_approvals(ALICE) == [results[0]]


async def test_approvals_persist_across_reopen(open_store: StoreFactory, store_dir: Path) -> None:
    async with open_store(store_dir) as store:
        store.request_approval(_approval(ALICE, "waiting", at=1.0))
        store.request_approval(_approval(ALICE, "done", at=2.0))
        decided = store.decide_approval(ALICE, "done", "rejected", at=3.0, by="bob", note="no")
    async with open_store(store_dir) as store:
        assert store.read_approvals(ALICE) == [_approval(ALICE, "waiting", at=1.0), decided]
