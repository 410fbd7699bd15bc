"""Tests of the SQLite state store."""

from __future__ import annotations

import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roost.address import AgentAddress
from roost.errors import ConfigError, StorageError
from roost.store import (
    AgentExport,
    AgentRecord,
    AgentSummary,
    SqliteStore,
    StateStore,
    TurnCommit,
    _schema,
    open_sqlite_store,
)
from roost.store import sqlite as sqlite_mod

ALICE = AgentAddress("chat", "alice")
BOB = AgentAddress("chat", "bob")
OTHER_ALICE = AgentAddress("notes", "alice")

WEIRD_KEYS = [
    "",
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
    "é",
    "\U0010ffff",
    "\ud7ff",
    " ",
    "*",
    "?",
]


def _commit(
    address: AgentAddress,
    state: bytes | None = None,
    kv: dict[str, bytes | None] | None = None,
    *,
    kv_bytes: int = 0,
    at: float = 0.0,
    key: str | None = None,
    response: bytes | None = None,
) -> TurnCommit:
    return TurnCommit(
        address,
        state,
        dict(kv or {}),
        kv_bytes=kv_bytes,
        at=at,
        idempotency_key=key,
        response=response,
    )


def _user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


class _Gate:
    """Makes the writer block inside the transaction that applies a commit for ``address``
    until released, so a test can queue more commits behind it deterministically."""

    def __init__(self, address: AgentAddress) -> None:
        self.address = address
        self.entered = threading.Event()
        self.release = threading.Event()

    def wrap(self, apply: Callable[[sqlite3.Connection, TurnCommit], None]) -> Any:
        def gated(conn: sqlite3.Connection, commit: TurnCommit) -> None:
            if commit.address == self.address:
                self.entered.set()
                assert self.release.wait(timeout=30)
            apply(conn, commit)

        return gated


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "roost.db"


# -- basic behaviour ---------------------------------------------------------------------------


async def test_store_satisfies_protocol(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        proto: StateStore = store
        assert proto is store
    assert await trio.Path(db_path).exists()


async def test_round_trip_state_and_kv(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        assert await store.load_agent(ALICE) is None
        assert store.read_kv(ALICE, "k") is None
        await store.commit_turn(
            _commit(ALICE, b"state-1", {"k": b"v", "empty": b""}, kv_bytes=7, at=100.0)
        )
        assert await store.load_agent(ALICE) == AgentRecord(
            state=b"state-1", kv_bytes=7, turns=1, created_at=100.0, updated_at=100.0
        )
        assert store.read_kv(ALICE, "k") == b"v"
        assert store.read_kv(ALICE, "empty") == b""
        assert store.read_kv(ALICE, "missing") is None
        assert store.read_kv_keys(ALICE, "", 10) == ["empty", "k"]


async def test_state_none_keeps_prior_state(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        await store.commit_turn(_commit(ALICE, b"first", at=1.0))
        await store.commit_turn(_commit(ALICE, None, {"k": b"v"}, kv_bytes=2, at=2.0))
        assert await store.load_agent(ALICE) == AgentRecord(
            state=b"first", kv_bytes=2, turns=2, created_at=1.0, updated_at=2.0
        )
        await store.commit_turn(_commit(ALICE, b"second", at=3.0))
        record = await store.load_agent(ALICE)
        assert record is not None
        assert (record.state, record.turns, record.kv_bytes) == (b"second", 3, 0)


async def test_first_commit_without_state_creates_agent(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        await store.commit_turn(_commit(ALICE, None, {"k": b"v"}, kv_bytes=2, at=5.0))
        assert await store.load_agent(ALICE) == AgentRecord(
            state=None, kv_bytes=2, turns=1, created_at=5.0, updated_at=5.0
        )
        assert await store.count_agents() == 1


async def test_kv_overwrite_and_delete(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        await store.commit_turn(_commit(ALICE, None, {"a": b"1", "b": b"2"}))
        await store.commit_turn(_commit(ALICE, None, {"a": None, "b": b"3", "gone": None}))
        assert store.read_kv(ALICE, "a") is None
        assert store.read_kv(ALICE, "b") == b"3"
        assert store.read_kv_keys(ALICE, "", 10) == ["b"]


async def test_kv_is_isolated_between_agents_and_kinds(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        await store.commit_turn(
            _commit(BOB, None, {key: b"bob:" + key.encode() for key in WEIRD_KEYS})
        )
        await store.commit_turn(_commit(OTHER_ALICE, None, {key: b"notes" for key in WEIRD_KEYS}))
        for key in WEIRD_KEYS:
            assert store.read_kv(ALICE, key) is None, key
        for prefix in [*WEIRD_KEYS, "a", "b", "c", "chat", "bob"]:
            assert store.read_kv_keys(ALICE, prefix, 100) == [], prefix

        await store.commit_turn(_commit(ALICE, None, {"x": b"alice"}))
        assert store.read_kv(ALICE, "x") == b"alice"
        assert store.read_kv(BOB, "x") == b"bob:x"
        assert store.read_kv(OTHER_ALICE, "x") == b"notes"
        assert store.read_kv_keys(ALICE, "", 100) == ["x"]
        assert store.read_kv_keys(BOB, "", 100) == sorted(WEIRD_KEYS)

        # Deleting in one namespace leaves the others alone.
        await store.commit_turn(_commit(ALICE, None, {key: None for key in WEIRD_KEYS}))
        assert store.read_kv(BOB, "x") == b"bob:x"
        assert store.read_kv(OTHER_ALICE, "x") == b"notes"


async def test_prefix_listing_matches_literally(db_path: Path) -> None:
    keys = ["a", "a%", "a%b", "a_b", "ab", "abc", "a\\b", "b", "%", "_x", "é", "éa", "\U0010ffff"]
    async with open_sqlite_store(db_path) as store:
        await store.commit_turn(_commit(ALICE, None, dict.fromkeys(keys, b"v")))
        assert store.read_kv_keys(ALICE, "a%", 10) == ["a%", "a%b"]
        assert store.read_kv_keys(ALICE, "a_", 10) == ["a_b"]
        assert store.read_kv_keys(ALICE, "_", 10) == ["_x"]
        assert store.read_kv_keys(ALICE, "%", 10) == ["%"]
        assert store.read_kv_keys(ALICE, "a\\", 10) == ["a\\b"]
        assert store.read_kv_keys(ALICE, "ab", 10) == ["ab", "abc"]
        assert store.read_kv_keys(ALICE, "é", 10) == ["é", "éa"]
        assert store.read_kv_keys(ALICE, "\U0010ffff", 10) == ["\U0010ffff"]
        assert store.read_kv_keys(ALICE, "", 100) == sorted(keys)
        assert store.read_kv_keys(ALICE, "a", 3) == ["a", "a%", "a%b"]
        assert store.read_kv_keys(ALICE, "a", 0) == []
        assert store.read_kv_keys(ALICE, "zzz", 10) == []


@pytest.mark.parametrize(
    ("prefix", "upper"),
    [
        ("", None),
        ("a", "b"),
        ("a%", "a&"),
        ("\ud7ff", "\ue000"),
        ("a\U0010ffff", "b"),
        ("\U0010ffff\U0010ffff", None),
    ],
)
def test_prefix_upper_bound(prefix: str, upper: str | None) -> None:
    assert sqlite_mod._prefix_upper_bound(prefix) == upper


async def test_count_agents_and_stored_bytes_per_kind(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        assert await store.count_agents() == 0
        assert await store.stored_bytes() == 0
        await store.commit_turn(_commit(ALICE, b"12345", kv_bytes=10))
        await store.commit_turn(_commit(BOB, b"123", kv_bytes=0))
        await store.commit_turn(_commit(OTHER_ALICE, None, kv_bytes=4))
        await store.commit_turn(_commit(ALICE, b"1", kv_bytes=2))
        assert await store.count_agents() == 3
        assert await store.count_agents("chat") == 2
        assert await store.count_agents("notes") == 1
        assert await store.count_agents("nope") == 0
        assert await store.stored_bytes("chat") == (1 + 2) + 3
        assert await store.stored_bytes("notes") == 4
        assert await store.stored_bytes() == 10
        assert await store.stored_bytes("nope") == 0


# -- durability and lifecycle ------------------------------------------------------------------


async def test_contents_persist_across_reopen(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        await store.commit_turn(_commit(ALICE, b"s", {"k": b"v", "j": b"w"}, kv_bytes=4, at=1.0))
        await store.commit_turn(_commit(ALICE, None, {"j": None}, kv_bytes=2, at=2.0))
        await store.commit_turn(_commit(OTHER_ALICE, b"other", at=3.0))
    async with open_sqlite_store(db_path, synchronous="FULL") as store:
        assert await store.load_agent(ALICE) == AgentRecord(
            state=b"s", kv_bytes=2, turns=2, created_at=1.0, updated_at=2.0
        )
        assert store.read_kv(ALICE, "k") == b"v"
        assert store.read_kv(ALICE, "j") is None
        assert await store.count_agents() == 2
        await store.commit_turn(_commit(ALICE, b"t", at=4.0))
    async with open_sqlite_store(db_path) as store:
        record = await store.load_agent(ALICE)
        assert record is not None
        assert (record.state, record.turns) == (b"t", 3)


async def test_uses_wal_mode(db_path: Path) -> None:
    async with open_sqlite_store(db_path):
        pass
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


async def test_invalid_synchronous_is_config_error(db_path: Path) -> None:
    with pytest.raises(ConfigError, match="OFF"):
        async with open_sqlite_store(db_path, synchronous=cast(Any, "OFF")):
            pass  # pragma: no cover


async def test_closed_store_raises(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        await store.commit_turn(_commit(ALICE, b"s"))
    stats = store.statistics()
    assert stats.commits == 1
    checks: list[Callable[[], Any]] = [
        lambda: store.read_kv(ALICE, "k"),
        lambda: store.read_kv_keys(ALICE, "", 10),
    ]
    for check in checks:
        with pytest.raises(StorageError, match="store is closed"):
            check()
    with pytest.raises(StorageError, match="store is closed"):
        await store.load_agent(ALICE)
    with pytest.raises(StorageError, match="store is closed"):
        await store.commit_turn(_commit(ALICE, b"t"))
    with pytest.raises(StorageError, match="store is closed"):
        await store.count_agents()
    with pytest.raises(StorageError, match="store is closed"):
        await store.stored_bytes("chat")
    with pytest.raises(StorageError, match="store is closed"):
        await store.load_response(ALICE, "k")
    with pytest.raises(StorageError, match="store is closed"):
        await store.prune_responses(1.0)
    with pytest.raises(StorageError, match="store is closed"):
        await store.delete_agent(ALICE)
    with pytest.raises(StorageError, match="store is closed"):
        await store.fork_agent(ALICE, BOB)
    with pytest.raises(StorageError, match="store is closed"):
        await store.list_agents("chat", after=None, limit=10)
    with pytest.raises(StorageError, match="store is closed"):
        await store.export_agent(ALICE)
    await store.aclose()  # idempotent


async def test_explicit_aclose_inside_block(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        await store.aclose()
        with pytest.raises(StorageError, match="store is closed"):
            await store.commit_turn(_commit(ALICE, b"s"))


async def test_aclose_lets_queued_commits_land(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = _Gate(AgentAddress("chat", "gate"))
    monkeypatch.setattr(sqlite_mod, "_apply_commit", gate.wrap(sqlite_mod._apply_commit))
    done: list[int] = []
    async with open_sqlite_store(db_path) as store:

        async def commit(i: int) -> None:
            await store.commit_turn(_commit(AgentAddress("chat", f"u{i}"), b"s"))
            done.append(i)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.commit_turn, _commit(gate.address, b"g"))
            await trio.to_thread.run_sync(gate.entered.wait)
            for i in range(5):
                nursery.start_soon(commit, i)
            await trio.testing.wait_all_tasks_blocked()
            # Five commits are queued behind the gated one; closing must not drop them.
            nursery.start_soon(store.aclose)
            await trio.testing.wait_all_tasks_blocked()
            gate.release.set()
    assert sorted(done) == [0, 1, 2, 3, 4]
    assert store.statistics().commits == 6
    async with open_sqlite_store(db_path) as store:
        assert await store.count_agents() == 6


async def test_open_errors_name_the_path(tmp_path: Path) -> None:
    not_a_db = tmp_path / "garbage.db"
    not_a_db.write_bytes(b"this is not a sqlite database, not at all" * 100)
    with pytest.raises(StorageError, match=r"garbage\.db"):
        async with open_sqlite_store(not_a_db):
            pass  # pragma: no cover
    a_directory = tmp_path / "dir.db"
    a_directory.mkdir()
    with pytest.raises(StorageError, match=r"dir\.db"):
        async with open_sqlite_store(a_directory):
            pass  # pragma: no cover


# -- migrations --------------------------------------------------------------------------------


async def test_fresh_database_gets_latest_schema(db_path: Path) -> None:
    async with open_sqlite_store(db_path):
        pass
    assert _user_version(db_path) == len(_schema.MIGRATIONS) == _schema.schema_version()


async def test_newer_database_is_refused(db_path: Path) -> None:
    async with open_sqlite_store(db_path):
        pass
    conn = sqlite3.connect(db_path)
    try:
        conn.execute("PRAGMA user_version = 99")
    finally:
        conn.close()
    latest = len(_schema.MIGRATIONS)
    with pytest.raises(StorageError) as info:
        async with open_sqlite_store(db_path):
            pass  # pragma: no cover
    message = str(info.value)
    assert "99" in message
    assert str(latest) in message
    assert "upgrade roost" in message
    assert _user_version(db_path) == 99


async def test_appended_migration_is_applied_once(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_sqlite_store(db_path) as store:
        await store.commit_turn(_commit(ALICE, b"kept"))
    base = len(_schema.MIGRATIONS)
    extra = """
        CREATE TABLE timers (kind TEXT, id TEXT, due REAL, note TEXT DEFAULT 'a;b');
        CREATE INDEX timers_due ON timers (due);
        CREATE TRIGGER timers_note AFTER INSERT ON timers BEGIN
            UPDATE timers SET note = note || ';x' WHERE rowid = new.rowid;
        END;
    """
    monkeypatch.setattr(_schema, "MIGRATIONS", [*_schema.MIGRATIONS, extra])
    async with open_sqlite_store(db_path) as store:
        assert await store.load_agent(ALICE) is not None
    assert _user_version(db_path) == base + 1
    conn = sqlite3.connect(db_path)
    try:
        conn.execute("INSERT INTO timers (kind, id, due) VALUES ('chat', 'a', 1.0)")
        assert conn.execute("SELECT note FROM timers").fetchone()[0] == "a;b;x"
        conn.commit()
    finally:
        conn.close()
    # Opening again does not re-run it (it would fail: the table exists).
    async with open_sqlite_store(db_path):
        pass
    assert _user_version(db_path) == base + 1


async def test_failed_migration_rolls_back(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with open_sqlite_store(db_path):
        pass
    base = len(_schema.MIGRATIONS)
    broken = "CREATE TABLE half_done (x); THIS IS NOT SQL;"
    monkeypatch.setattr(_schema, "MIGRATIONS", [*_schema.MIGRATIONS, broken])
    with pytest.raises(StorageError, match=f"schema version {base + 1}"):
        async with open_sqlite_store(db_path):
            pass  # pragma: no cover
    assert _user_version(db_path) == base
    conn = sqlite3.connect(db_path)
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()
    assert "half_done" not in tables
    assert {"agents", "kv"} <= tables


# -- group commit and failures -----------------------------------------------------------------


async def test_group_commit_of_concurrent_turns(db_path: Path) -> None:
    n = 200
    async with open_sqlite_store(db_path) as store:
        async with trio.open_nursery() as nursery:
            for i in range(n):
                address = AgentAddress("chat", f"u{i}")
                nursery.start_soon(
                    store.commit_turn, _commit(address, f"s{i}".encode(), {"k": str(i).encode()})
                )
        stats = store.statistics()
        assert stats.commits == n
        assert stats.batches < stats.commits
        assert stats.path == str(db_path)
        assert await store.count_agents("chat") == n
        for i in range(n):
            address = AgentAddress("chat", f"u{i}")
            record = await store.load_agent(address)
            assert record is not None
            assert record.state == f"s{i}".encode()
            assert store.read_kv(address, "k") == str(i).encode()


async def test_bad_commit_in_batch_fails_only_its_caller(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = _Gate(AgentAddress("chat", "gate"))
    monkeypatch.setattr(sqlite_mod, "_apply_commit", gate.wrap(sqlite_mod._apply_commit))
    bad = AgentAddress("chat", "u7")
    outcomes: dict[int, BaseException | None] = {}
    async with open_sqlite_store(db_path) as store:
        await store.commit_turn(_commit(bad, b"old", {"k": b"old"}))

        async def commit(i: int) -> None:
            value = cast(bytes, 12345) if i == 7 else b"new"
            try:
                await store.commit_turn(
                    _commit(AgentAddress("chat", f"u{i}"), b"new", {"k": value, "other": b"o"})
                )
            except StorageError as exc:
                outcomes[i] = exc
            else:
                outcomes[i] = None

        async with trio.open_nursery() as nursery:
            # Hold the writer so that the next twenty commits form one batch.
            nursery.start_soon(store.commit_turn, _commit(gate.address, b"g"))
            await trio.to_thread.run_sync(gate.entered.wait)
            for i in range(20):
                nursery.start_soon(commit, i)
            await trio.testing.wait_all_tasks_blocked()
            gate.release.set()

        error = outcomes.pop(7)
        assert isinstance(error, StorageError)
        assert "chat/u7" in str(error)
        assert str(db_path) in str(error)
        assert "bytes" in str(error)
        assert outcomes == {i: None for i in range(20) if i != 7}
        # The bad commit wrote nothing; its neighbours wrote everything.
        record = await store.load_agent(bad)
        assert record is not None
        assert (record.state, record.turns) == (b"old", 1)
        assert store.read_kv(bad, "k") == b"old"
        assert store.read_kv(bad, "other") is None
        for i in outcomes:
            assert store.read_kv(AgentAddress("chat", f"u{i}"), "other") == b"o"
        stats = store.statistics()
        # 1 setup + 1 gate + 19 good; the failed batch of 20 was retried one by one.
        assert stats.commits == 21
        assert stats.batches == 21


async def test_sqlite_error_reaches_only_its_caller_and_is_atomic(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = AgentAddress("chat", "bad")
    real_apply = sqlite_mod._apply_commit

    def failing_apply(conn: sqlite3.Connection, commit: TurnCommit) -> None:
        real_apply(conn, commit)  # the writes happen, then the commit fails
        if commit.address == bad:
            raise sqlite3.OperationalError("simulated disk I/O error")

    async with open_sqlite_store(db_path) as store:
        await store.commit_turn(_commit(bad, b"before", {"k": b"before"}, kv_bytes=7))
        monkeypatch.setattr(sqlite_mod, "_apply_commit", failing_apply)
        errors: list[StorageError] = []

        async def commit_bad() -> None:
            try:
                await store.commit_turn(_commit(bad, b"after", {"k": None, "n": b"x"}, kv_bytes=2))
            except StorageError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(commit_bad)
            for i in range(10):
                nursery.start_soon(store.commit_turn, _commit(AgentAddress("chat", f"g{i}"), b"s"))

        assert len(errors) == 1
        assert "simulated disk I/O error" in str(errors[0])
        assert "commit_turn" in str(errors[0])
        assert isinstance(errors[0].__cause__, sqlite3.OperationalError)
        assert await store.load_agent(bad) == AgentRecord(
            state=b"before", kv_bytes=7, turns=1, created_at=0.0, updated_at=0.0
        )
        assert store.read_kv_keys(bad, "", 10) == ["k"]
        assert await store.count_agents() == 11


async def test_cancelled_caller_does_not_break_the_writer(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = _Gate(ALICE)
    monkeypatch.setattr(sqlite_mod, "_apply_commit", gate.wrap(sqlite_mod._apply_commit))
    async with open_sqlite_store(db_path) as store:
        cancelled = False

        async def impatient() -> None:
            nonlocal cancelled
            with trio.CancelScope() as scope:
                scope_box.append(scope)
                await store.commit_turn(_commit(ALICE, b"landed anyway"))
            cancelled = scope.cancelled_caught

        scope_box: list[trio.CancelScope] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(impatient)
            await trio.to_thread.run_sync(gate.entered.wait)
            scope_box[0].cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert cancelled  # the caller gave up while its commit was being written
            gate.release.set()
        # The writer survived and keeps committing; the abandoned commit landed.
        await store.commit_turn(_commit(BOB, b"later"))
        alice = await store.load_agent(ALICE)
        assert alice is not None
        assert alice.state == b"landed anyway"
        assert await store.count_agents() == 2


async def test_reads_see_whole_commits_from_many_threads(db_path: Path) -> None:
    rounds = 60
    async with open_sqlite_store(db_path) as store:
        await store.commit_turn(_commit(ALICE, None, {"x000a": b"0", "x000b": b"0"}))
        seen: list[list[str]] = []

        def reader() -> None:
            for _ in range(rounds):
                seen.append(store.read_kv_keys(ALICE, "x", 10))

        async def writer() -> None:
            for i in range(1, rounds):
                await store.commit_turn(
                    _commit(
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

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            for _ in range(8):
                nursery.start_soon(trio.to_thread.run_sync, reader)
        assert len(seen) == 8 * rounds
        for keys in seen:
            assert len(keys) == 2, keys
            assert keys[0][:4] == keys[1][:4], keys
        assert store.read_kv_keys(ALICE, "x", 10) == [f"x{rounds - 1:03}a", f"x{rounds - 1:03}b"]


# -- idempotency records -----------------------------------------------------------------------


async def test_idempotency_record_commits_with_the_turn(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        await store.commit_turn(_commit(ALICE, b"s1", {"k": b"v"}, kv_bytes=2, at=1.0))
        assert await store.load_response(ALICE, "req-1") is None
        # A turn that changes neither state nor kv, committed only for its response.
        await store.commit_turn(
            _commit(ALICE, None, kv_bytes=2, at=2.0, key="req-1", response=b"r1")
        )
        assert await store.load_response(ALICE, "req-1") == b"r1"
        assert await store.load_agent(ALICE) == AgentRecord(
            state=b"s1", kv_bytes=2, turns=2, created_at=1.0, updated_at=2.0
        )
        assert store.read_kv(ALICE, "k") == b"v"
        # With effects, the record lands with them.
        await store.commit_turn(
            _commit(ALICE, b"s3", {"j": b"w"}, kv_bytes=4, at=3.0, key="req-2", response=b"")
        )
        assert await store.load_response(ALICE, "req-2") == b""
        # Keys belong to one agent; a response without a key records nothing.
        await store.commit_turn(_commit(BOB, b"b", at=4.0, response=b"ignored"))
        assert await store.load_response(BOB, "req-1") is None
        assert await store.load_response(OTHER_ALICE, "req-1") is None
        assert await store.load_response(ALICE, "req-3") is None
        # An agent's first turn may be a response-only one.
        await store.commit_turn(_commit(OTHER_ALICE, None, at=5.0, key="req-1", response=b"o"))
        assert await store.load_agent(OTHER_ALICE) == AgentRecord(
            state=None, kv_bytes=0, turns=1, created_at=5.0, updated_at=5.0
        )
    async with open_sqlite_store(db_path) as store:
        assert await store.load_response(ALICE, "req-1") == b"r1"
        assert await store.load_response(ALICE, "req-2") == b""
        assert await store.load_response(OTHER_ALICE, "req-1") == b"o"


async def test_failing_commit_records_no_response(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        await store.commit_turn(_commit(ALICE, b"s", {"k": b"v"}, at=1.0, key="a", response=b"1"))
        before = await store.load_agent(ALICE)

        bad_value = _commit(ALICE, b"t", {"k": cast(bytes, 5)}, at=2.0, key="b", response=b"2")
        with pytest.raises(StorageError, match="commit_turn"):
            await store.commit_turn(bad_value)
        assert await store.load_response(ALICE, "b") is None

        missing_response = _commit(ALICE, b"t", {"k": b"w"}, at=2.0, key="c")
        with pytest.raises(StorageError, match="response must be bytes"):
            await store.commit_turn(missing_response)
        assert await store.load_response(ALICE, "c") is None

        # A key already recorded fails the whole commit: the turn's effects are not applied.
        duplicate = _commit(ALICE, b"t", {"k": b"w"}, at=2.0, key="a", response=b"other")
        with pytest.raises(StorageError, match="already recorded"):
            await store.commit_turn(duplicate)
        assert await store.load_response(ALICE, "a") == b"1"

        assert await store.load_agent(ALICE) == before
        assert store.read_kv(ALICE, "k") == b"v"


async def test_failing_commit_in_batch_records_no_response(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = _Gate(AgentAddress("chat", "gate"))
    monkeypatch.setattr(sqlite_mod, "_apply_commit", gate.wrap(sqlite_mod._apply_commit))
    failures: list[int] = []
    async with open_sqlite_store(db_path) as store:

        async def commit(i: int) -> None:
            value = cast(bytes, 5) if i == 3 else b"v"
            address = AgentAddress("chat", f"u{i}")
            try:
                await store.commit_turn(
                    _commit(address, None, {"k": value}, key=f"r{i}", response=f"{i}".encode())
                )
            except StorageError:
                failures.append(i)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.commit_turn, _commit(gate.address, b"g"))
            await trio.to_thread.run_sync(gate.entered.wait)
            for i in range(6):
                nursery.start_soon(commit, i)
            await trio.testing.wait_all_tasks_blocked()
            gate.release.set()

        assert failures == [3]
        for i in range(6):
            response = await store.load_response(AgentAddress("chat", f"u{i}"), f"r{i}")
            assert response == (None if i == 3 else f"{i}".encode())
        assert await store.load_agent(AgentAddress("chat", "u3")) is None


async def test_prune_responses_by_age(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        for i, address in enumerate([ALICE, BOB, OTHER_ALICE, ALICE], start=1):
            await store.commit_turn(
                _commit(address, b"s", at=float(i), key=f"r{i}", response=f"{i}".encode())
            )
        assert await store.prune_responses(1.0) == 0  # strictly older only
        assert await store.prune_responses(2.5) == 2
        assert await store.load_response(ALICE, "r1") is None
        assert await store.load_response(BOB, "r2") is None
        assert await store.load_response(OTHER_ALICE, "r3") == b"3"
        assert await store.load_response(ALICE, "r4") == b"4"
        assert await store.prune_responses(2.5) == 0
        # Pruning touches only idempotency records.
        record = await store.load_agent(ALICE)
        assert record is not None
        assert (record.state, record.turns) == (b"s", 2)
        assert await store.count_agents() == 3
        # A pruned key may be recorded again.
        await store.commit_turn(_commit(ALICE, None, at=5.0, key="r1", response=b"again"))
        assert await store.load_response(ALICE, "r1") == b"again"
        assert await store.prune_responses(100.0) == 3
    async with open_sqlite_store(db_path) as store:
        assert await store.load_response(ALICE, "r4") is None


# -- delete, fork, list, export ----------------------------------------------------------------


async def test_delete_agent_removes_everything(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        for address in (ALICE, BOB, OTHER_ALICE):
            await store.commit_turn(
                _commit(address, b"s", {"a": b"1", "b": b"2"}, kv_bytes=4, key="r", response=b"x")
            )
        assert await store.delete_agent(ALICE) is True
        assert await store.load_agent(ALICE) is None
        assert store.read_kv_keys(ALICE, "", 10) == []
        assert store.read_kv(ALICE, "a") is None
        assert await store.load_response(ALICE, "r") is None
        assert await store.export_agent(ALICE) is None
        assert await store.count_agents() == 2
        assert await store.stored_bytes() == 2 * (1 + 4)
        # Neighbours (same id in another kind, another id in the same kind) are untouched.
        for address in (BOB, OTHER_ALICE):
            assert store.read_kv_keys(address, "", 10) == ["a", "b"]
            assert await store.load_response(address, "r") == b"x"
        assert await store.delete_agent(ALICE) is False
        assert await store.delete_agent(AgentAddress("chat", "nobody")) is False
        # The id can be used afresh.
        await store.commit_turn(_commit(ALICE, b"new", at=9.0))
        assert await store.load_agent(ALICE) == AgentRecord(
            state=b"new", kv_bytes=0, turns=1, created_at=9.0, updated_at=9.0
        )
    async with open_sqlite_store(db_path) as store:
        assert store.read_kv_keys(ALICE, "", 10) == []
        assert await store.load_response(ALICE, "r") is None


async def test_writes_apply_in_queue_order(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = _Gate(AgentAddress("chat", "gate"))
    monkeypatch.setattr(sqlite_mod, "_apply_commit", gate.wrap(sqlite_mod._apply_commit))
    results: dict[str, object] = {}
    async with open_sqlite_store(db_path) as store:
        await store.commit_turn(_commit(ALICE, b"s0", {"old": b"o"}, at=1.0))

        async def run(name: str, call: Callable[[], Any]) -> None:
            results[name] = await call()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.commit_turn, _commit(gate.address, b"g"))
            await trio.to_thread.run_sync(gate.entered.wait)
            # Queued behind the gate in this order; each must see the ones before it.
            steps: list[tuple[str, Callable[[], Any]]] = [
                ("commit1", lambda: store.commit_turn(_commit(BOB, b"b1", {"k": b"1"}, at=2.0))),
                ("fork", lambda: store.fork_agent(BOB, OTHER_ALICE)),
                ("commit2", lambda: store.commit_turn(_commit(ALICE, b"s1", {"late": b"l"}))),
                ("delete", lambda: store.delete_agent(ALICE)),
                ("commit3", lambda: store.commit_turn(_commit(ALICE, b"s2", {"new": b"n"}))),
                ("delete-bob", lambda: store.delete_agent(BOB)),
            ]
            for name, call in steps:
                nursery.start_soon(run, name, call)
                await trio.testing.wait_all_tasks_blocked()
            gate.release.set()

        assert results == {
            "commit1": None,
            "fork": "forked",
            "commit2": None,
            "delete": True,
            "commit3": None,
            "delete-bob": True,
        }
        # The delete saw commit2 (no "late" survives) and commit3 came after it.
        record = await store.load_agent(ALICE)
        assert record is not None
        assert (record.state, record.turns) == (b"s2", 1)
        assert store.read_kv_keys(ALICE, "", 10) == ["new"]
        # The fork saw commit1; deleting the source afterwards leaves the copy alone.
        assert await store.load_agent(BOB) is None
        fork = await store.export_agent(OTHER_ALICE)
        assert fork is not None
        assert (fork.record.state, fork.kv) == (b"b1", {"k": b"1"})
        # The six queued writes shared one transaction.
        assert store.statistics().batches == 3


async def test_failing_delete_in_batch_fails_only_its_caller(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = _Gate(AgentAddress("chat", "gate"))
    monkeypatch.setattr(sqlite_mod, "_apply_commit", gate.wrap(sqlite_mod._apply_commit))
    real_delete = sqlite_mod._apply_delete

    def failing_delete(conn: sqlite3.Connection, address: AgentAddress) -> bool:
        real_delete(conn, address)  # the rows go, then the transaction fails
        if address == BOB:
            raise sqlite3.OperationalError("simulated delete failure")
        return True

    monkeypatch.setattr(sqlite_mod, "_apply_delete", failing_delete)
    outcomes: dict[str, object] = {}
    async with open_sqlite_store(db_path) as store:
        for address in (ALICE, BOB):
            await store.commit_turn(_commit(address, b"s", {"k": b"v"}, key="r", response=b"x"))

        async def run(name: str, call: Callable[[], Any]) -> None:
            try:
                outcomes[name] = await call()
            except StorageError as exc:
                outcomes[name] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.commit_turn, _commit(gate.address, b"g"))
            await trio.to_thread.run_sync(gate.entered.wait)
            steps: list[tuple[str, Callable[[], Any]]] = [
                ("commit", lambda: store.commit_turn(_commit(ALICE, b"t"))),
                ("bad", lambda: store.delete_agent(BOB)),
                ("good", lambda: store.delete_agent(ALICE)),
            ]
            for name, call in steps:
                nursery.start_soon(run, name, call)
                await trio.testing.wait_all_tasks_blocked()
            gate.release.set()

        error = outcomes.pop("bad")
        assert isinstance(error, StorageError)
        assert "delete_agent failed for chat/bob" in str(error)
        assert "simulated delete failure" in str(error)
        assert outcomes == {"commit": None, "good": True}
        assert await store.load_agent(ALICE) is None
        bob = await store.export_agent(BOB)
        assert bob is not None
        assert (bob.record.state, bob.kv, bob.responses) == (b"s", {"k": b"v"}, 1)


async def test_fork_copies_state_and_kv(db_path: Path) -> None:
    target = AgentAddress("chat", "alice-copy")
    other_kind = AgentAddress("notes", "copy")
    async with open_sqlite_store(db_path) as store:
        await store.commit_turn(_commit(ALICE, b"s1", {"a": b"1", "b": b"2"}, kv_bytes=4, at=1.0))
        await store.commit_turn(_commit(ALICE, b"s2", at=2.0, kv_bytes=4, key="r", response=b"x"))
        before = time.time()
        assert await store.fork_agent(ALICE, target) == "forked"
        assert await store.fork_agent(ALICE, other_kind) == "forked"
        after = time.time()
        for address in (target, other_kind):
            record = await store.load_agent(address)
            assert record is not None
            assert (record.state, record.kv_bytes, record.turns) == (b"s2", 4, 0)
            assert before <= record.created_at == record.updated_at <= after
            assert store.read_kv_keys(address, "", 10) == ["a", "b"]
            assert store.read_kv(address, "a") == b"1"
            # Responses belong to the source's turns; the copy has none.
            assert await store.load_response(address, "r") is None
        assert await store.stored_bytes() == 3 * (2 + 4)
        assert await store.count_agents() == 3

        # Later writes on either side do not reach the other.
        await store.commit_turn(_commit(ALICE, b"s3", {"a": None, "c": b"3"}, kv_bytes=4, at=3.0))
        await store.commit_turn(_commit(target, b"t1", {"b": b"22"}, kv_bytes=5, at=4.0))
        assert store.read_kv_keys(ALICE, "", 10) == ["b", "c"]
        assert store.read_kv(ALICE, "b") == b"2"
        assert store.read_kv_keys(target, "", 10) == ["a", "b"]
        assert store.read_kv(target, "b") == b"22"
        assert store.read_kv_keys(other_kind, "", 10) == ["a", "b"]
        target_record = await store.load_agent(target)
        assert target_record is not None
        assert (target_record.state, target_record.turns) == (b"t1", 1)
        alice = await store.load_agent(ALICE)
        assert alice is not None
        assert (alice.state, alice.turns) == (b"s3", 3)
        other = await store.load_agent(other_kind)
        assert other is not None
        assert other.state == b"s2"
    async with open_sqlite_store(db_path) as store:
        assert store.read_kv(other_kind, "b") == b"2"


async def test_fork_writes_nothing_unless_forked(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        await store.commit_turn(_commit(ALICE, b"alice", {"a": b"1"}, kv_bytes=2, at=1.0))
        await store.commit_turn(_commit(BOB, b"bob", {"b": b"2"}, kv_bytes=2, at=2.0))
        bob_before = await store.export_agent(BOB)
        batches = store.statistics().batches

        assert await store.fork_agent(ALICE, BOB) == "target_exists"
        assert await store.fork_agent(ALICE, ALICE) == "target_exists"
        assert await store.export_agent(BOB) == bob_before
        missing = AgentAddress("chat", "missing")
        fresh = AgentAddress("chat", "fresh")
        assert await store.fork_agent(missing, fresh) == "source_missing"
        assert await store.fork_agent(missing, BOB) == "source_missing"
        assert await store.export_agent(fresh) is None
        assert await store.export_agent(BOB) == bob_before
        assert await store.count_agents() == 2
        # The refusals went through the writer but changed nothing.
        assert store.statistics().batches == batches + 4
        assert store.statistics().commits == 2


async def test_list_agents_pages_by_id(db_path: Path) -> None:
    ids = ["a0", "a1", "a2", "b0", "b1", "b2", "c0", "c1"]
    async with open_sqlite_store(db_path) as store:
        for i, agent_id in enumerate(reversed(ids)):
            address = AgentAddress("chat", agent_id)
            await store.commit_turn(
                _commit(address, b"x" * i, {"k": b"v"}, kv_bytes=2, at=float(i))
            )
        await store.commit_turn(_commit(AgentAddress("notes", "a5"), b"n"))
        await store.commit_turn(_commit(AgentAddress("chats", "a5"), b"n"))

        pages: list[list[AgentSummary]] = []
        after: str | None = None
        while True:
            page = await store.list_agents("chat", after=after, limit=3)
            if not page:
                break
            pages.append(page)
            after = page[-1].id
        assert [[s.id for s in page] for page in pages] == [ids[0:3], ids[3:6], ids[6:8]]
        assert pages[0][0] == AgentSummary(
            id="a0", state_bytes=7, kv_bytes=2, turns=1, created_at=7.0, updated_at=7.0
        )
        assert pages[2][-1] == AgentSummary(
            id="c1", state_bytes=0, kv_bytes=2, turns=1, created_at=0.0, updated_at=0.0
        )
        # ``after`` need not be an existing id; the bound is strict.
        summaries = await store.list_agents("chat", after="b", limit=10)
        assert [s.id for s in summaries] == ids[3:]
        summaries = await store.list_agents("chat", after="b1", limit=2)
        assert [s.id for s in summaries] == ["b2", "c0"]
        assert await store.list_agents("chat", after="c1", limit=10) == []
        assert await store.list_agents("chat", after=None, limit=0) == []
        assert [s.id for s in await store.list_agents("notes", after=None, limit=10)] == ["a5"]
        assert await store.list_agents("nothing", after=None, limit=10) == []


async def test_export_agent_contents(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        assert await store.export_agent(ALICE) is None
        await store.commit_turn(
            _commit(ALICE, b"s1", {"z": b"26", "a": b"1", "m": b""}, kv_bytes=6, at=1.0)
        )
        await store.commit_turn(
            _commit(
                ALICE, b"s2", {"m": None, "é": b"e"}, kv_bytes=8, at=2.0, key="r1", response=b""
            )
        )
        await store.commit_turn(_commit(ALICE, None, kv_bytes=8, at=3.0, key="r2", response=b"x"))
        await store.commit_turn(_commit(BOB, b"bob", {"b": b"b"}, key="r9", response=b"y"))
        export = await store.export_agent(ALICE)
        assert export == AgentExport(
            record=AgentRecord(state=b"s2", kv_bytes=8, turns=3, created_at=1.0, updated_at=3.0),
            kv={"a": b"1", "z": b"26", "é": b"e"},
            responses=2,
        )
        assert export is not None
        assert list(export.kv) == ["a", "z", "é"]
        await store.commit_turn(_commit(OTHER_ALICE, None, at=4.0))
        assert await store.export_agent(OTHER_ALICE) == AgentExport(
            record=AgentRecord(state=None, kv_bytes=0, turns=1, created_at=4.0, updated_at=4.0),
            kv={},
            responses=0,
        )
    # kv rows without a record (not something the store writes) are still exported.
    conn = sqlite3.connect(db_path)
    try:
        conn.execute("DELETE FROM agents WHERE kind = 'chat' AND id = 'bob'")
        conn.commit()
    finally:
        conn.close()
    async with open_sqlite_store(db_path) as store:
        assert await store.export_agent(BOB) == AgentExport(
            record=AgentRecord(state=None, kv_bytes=2, turns=0, created_at=0.0, updated_at=0.0),
            kv={"b": b"b"},
            responses=1,
        )


async def test_writer_limits_the_wal_size(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        limit = store._writer.execute("PRAGMA journal_size_limit").fetchone()[0]
    assert limit == 64 * 1024 * 1024


async def test_version_1_database_is_migrated_with_its_data(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(_schema, "MIGRATIONS", _schema.MIGRATIONS[:1])
        async with open_sqlite_store(db_path) as store:
            await store.commit_turn(_commit(ALICE, b"v1", {"k": b"v"}, kv_bytes=2, at=1.0))
        assert _user_version(db_path) == 1
    async with open_sqlite_store(db_path) as store:
        assert _user_version(db_path) == _schema.schema_version()
        assert await store.load_agent(ALICE) == AgentRecord(
            state=b"v1", kv_bytes=2, turns=1, created_at=1.0, updated_at=1.0
        )
        await store.commit_turn(_commit(ALICE, None, kv_bytes=2, at=2.0, key="r", response=b"x"))
        assert await store.load_response(ALICE, "r") == b"x"


# -- property test against a dict model --------------------------------------------------------

_ADDRESSES = [ALICE, BOB, OTHER_ALICE]
_KEYS = st.text(alphabet="ab%_/\\é", max_size=3)
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


async def _check_against_model(store: SqliteStore, model: _Model) -> None:
    all_keys = {key for kv in model.kv.values() for key in kv} | {"", "a", "%", "_", "zz"}
    prefixes = {key[:n] for key in all_keys for n in range(len(key) + 1)}
    for address in _ADDRESSES:
        assert await store.load_agent(address) == model.records.get(address)
        kv = model.kv[address]
        for key in all_keys:
            assert store.read_kv(address, key) == kv.get(key)
        for prefix in prefixes:
            expected = sorted(k for k in kv if k.startswith(prefix))
            assert store.read_kv_keys(address, prefix, 100) == expected
            assert store.read_kv_keys(address, prefix, 2) == expected[:2]
    for kind in (None, "chat", "notes"):
        records = [r for a, r in model.records.items() if kind is None or a.kind == kind]
        assert await store.count_agents(kind) == len(records)
        assert await store.stored_bytes(kind) == sum(
            len(r.state or b"") + r.kv_bytes for r in records
        )


async def _run_model(path: Path, steps: list[Any]) -> None:
    model = _Model()
    segments: list[list[dict[int, Any]]] = [[]]
    for step in steps:
        if step == "reopen":
            segments.append([])
        else:
            segments[-1].append(step)
    at = 0.0
    for segment in segments:
        async with open_sqlite_store(path) as store:
            await _check_against_model(store, model)
            for commits in segment:
                at += 1.0
                async with trio.open_nursery() as nursery:
                    for index, spec in commits.items():
                        address = _ADDRESSES[index]
                        model.apply(address, spec["state"], spec["kv"], at)
                        commit = TurnCommit(
                            address,
                            spec["state"],
                            spec["kv"],
                            kv_bytes=model.kv_bytes(address),
                            at=at,
                        )
                        nursery.start_soon(store.commit_turn, commit)
                await _check_against_model(store, model)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=_STEPS)
def test_store_matches_dict_model(steps: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        trio.run(_run_model, Path(directory) / "model.db", steps)
