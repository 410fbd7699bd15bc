"""Tests of what is specific to the SQLite store: the file (WAL, ``synchronous``, journal size,
schema migrations), its lifecycle (reopen, close), the group-commit writer (batches, per-write
retry, queue order, statistics) and when ``commit(wait=False)`` declines.

The behaviour every backend shares is tested in ``test_conformance.py``.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing

from roost.address import AgentAddress
from roost.errors import ConfigError, StorageError
from roost.store import (
    AgentExport,
    AgentRecord,
    AsyncStore,
    Commit,
    Delivery,
    SqliteStore,
    StateStore,
    Usage,
    _schema,
    _sql,
    _sql_store,
    open_sqlite_store,
)
from roost.store import sqlite as sqlite_mod

from ..conftest import until

ALICE = AgentAddress("chat", "alice")
BOB = AgentAddress("chat", "bob")
OTHER_ALICE = AgentAddress("notes", "alice")
GATE = AgentAddress("chat", "gate")


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
    return Commit(
        address,
        at=at,
        state=state,
        kv_writes=dict(kv or {}),
        kv_bytes=kv_bytes,
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
    until released (before applying it, or with ``after`` once applied but not committed),
    so a test can queue more writes behind it deterministically."""

    def __init__(self, address: AgentAddress = GATE, *, after: bool = False) -> None:
        self.address = address
        self.after = after
        self.entered = threading.Event()
        self.release = threading.Event()

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        apply = sqlite_mod._apply_commit

        def gated(conn: sqlite3.Connection, commit: Commit) -> None:
            if commit.address == self.address and self.after:
                apply(conn, commit)
            if commit.address == self.address:
                self.entered.set()
                assert self.release.wait(timeout=30)
            if commit.address != self.address or not self.after:
                apply(conn, commit)

        monkeypatch.setattr(sqlite_mod, "_apply_commit", gated)

    async def hold(self, store: SqliteStore, nursery: trio.Nursery) -> None:
        """Start a commit of the gate's agent on a worker thread; return once the writer is
        blocked in it."""
        nursery.start_soon(_in_thread, store, _turn(self.address, b"g"))
        await self.wait_entered()

    async def wait_entered(self) -> None:
        """Return once the writer is blocked in the gated commit."""
        entered = await trio.to_thread.run_sync(self.entered.wait, 30)
        assert entered, "the gated commit never reached the writer"


async def _in_thread(store: StateStore, commit: Commit) -> bool:
    """Commit on a worker thread, waiting (the way a turn's worker thread commits)."""
    return await trio.to_thread.run_sync(store.commit, commit)


async def _queued(store: SqliteStore, count: int) -> None:
    """Wait until ``count`` writes are queued behind the writer."""
    await until(lambda: len(store._queue) >= count)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "roost.db"


# -- the file -----------------------------------------------------------------------------------


async def test_store_satisfies_protocol(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        proto: StateStore = store
        assert proto is store
        assert isinstance(store, SqliteStore)
    assert await trio.Path(db_path).exists()


async def test_uses_wal_mode(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        store.commit(_turn(ALICE, b"s"))
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


@pytest.mark.parametrize(("synchronous", "level"), [(None, 1), ("NORMAL", 1), ("FULL", 2)])
async def test_synchronous_mode_is_set_on_the_writer(
    db_path: Path, synchronous: Any, level: int
) -> None:
    opening = (
        open_sqlite_store(db_path)
        if synchronous is None
        else open_sqlite_store(db_path, synchronous=synchronous)
    )
    async with opening as store:
        assert store._writer.execute("PRAGMA synchronous").fetchone()[0] == level


@pytest.mark.parametrize("synchronous", ["OFF", "EXTRA", "normal", "full", ""])
async def test_invalid_synchronous_is_config_error(db_path: Path, synchronous: str) -> None:
    with pytest.raises(ConfigError, match=repr(synchronous)):
        async with open_sqlite_store(db_path, synchronous=cast(Any, synchronous)):
            pass  # pragma: no cover
    assert not await trio.Path(db_path).exists()


async def test_writer_limits_the_wal_size(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        limit = store._writer.execute("PRAGMA journal_size_limit").fetchone()[0]
    assert limit == 64 * 1024 * 1024


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


@pytest.mark.parametrize(
    ("prefix", "upper"),
    [
        ("", None),
        ("a", "b"),
        ("a%", "a&"),
        ("ab", "ac"),
        ("\ud7ff", "\ue000"),
        ("a\U0010ffff", "b"),
        ("\U0010ffff\U0010ffff", None),
    ],
)
def test_prefix_upper_bound(prefix: str, upper: str | None) -> None:
    assert _sql.prefix_upper_bound(prefix) == upper


async def test_export_reports_kv_without_a_record(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        store.commit(_turn(BOB, b"bob", {"b": b"b"}, kv_bytes=2, key="r9", response=b"y"))
    # kv rows without a record (not something the store writes) are still exported.
    conn = sqlite3.connect(db_path)
    try:
        conn.execute("DELETE FROM agents WHERE kind = 'chat' AND id = 'bob'")
        conn.commit()
    finally:
        conn.close()
    async with open_sqlite_store(db_path) as store:
        assert store.export_agent(BOB) == AgentExport(
            record=AgentRecord(state=None, kv_bytes=2, turns=0, created_at=0.0, updated_at=0.0),
            kv={"b": b"b"},
            responses=1,
        )
        assert store.read_agent(BOB) is None


# -- migrations ---------------------------------------------------------------------------------


async def test_fresh_database_gets_latest_schema(db_path: Path) -> None:
    async with open_sqlite_store(db_path):
        pass
    assert _user_version(db_path) == len(_schema.MIGRATIONS) == _schema.schema_version()
    conn = sqlite3.connect(db_path)
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()
    assert {"agents", "kv", "idempotency", "deliveries", "usage"} <= tables


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
        store.commit(_turn(ALICE, b"kept"))
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
        assert store.read_agent(ALICE) is not None
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


async def test_version_1_database_is_migrated_with_its_data(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(_schema, "MIGRATIONS", _schema.MIGRATIONS[:1])
        async with open_sqlite_store(db_path) as store:
            store.commit(_turn(ALICE, b"v1", {"k": b"v"}, kv_bytes=2, at=1.0))
        assert _user_version(db_path) == 1
    async with open_sqlite_store(db_path) as store:
        assert _user_version(db_path) == _schema.schema_version()
        assert store.read_agent(ALICE) == AgentRecord(
            state=b"v1", kv_bytes=2, turns=1, created_at=1.0, updated_at=1.0
        )
        assert store.read_kv(ALICE, "k") == b"v"
        # Every later table works on the migrated file.
        store.commit(
            Commit(
                ALICE,
                at=2.0,
                idempotency_key="r",
                response=b"x",
                deliveries=[Delivery(ALICE, "t", 5.0, "timer", b"")],
                usage=Usage(turns=1),
                usage_day="d",
            )
        )
        assert _response(store, ALICE, "r") == b"x"
        assert store.next_due_at() == 5.0
        assert store.read_usage(ALICE, "d") == Usage(turns=1)


# -- lifecycle ----------------------------------------------------------------------------------


async def test_contents_persist_across_reopen_in_either_mode(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        store.commit(_turn(ALICE, b"s", {"k": b"v", "j": b"w"}, kv_bytes=4, at=1.0))
        store.commit(_turn(ALICE, None, {"j": None}, kv_bytes=2, at=2.0))
        store.commit(_turn(OTHER_ALICE, b"other", at=3.0))
    async with open_sqlite_store(db_path, synchronous="FULL") as store:
        assert store.read_agent(ALICE) == AgentRecord(
            state=b"s", kv_bytes=2, turns=2, created_at=1.0, updated_at=2.0
        )
        assert store.read_kv(ALICE, "k") == b"v"
        assert store.read_kv(ALICE, "j") is None
        assert store.count_agents() == 2
        store.commit(_turn(ALICE, b"t", at=4.0))
    async with open_sqlite_store(db_path) as store:
        record = store.read_agent(ALICE)
        assert record is not None
        assert (record.state, record.turns) == (b"t", 3)


async def test_closed_store_raises(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        store.commit(_turn(ALICE, b"s"))
    assert store.statistics().commits == 1  # still readable
    calls: list[Callable[[], object]] = [
        lambda: store.read_agent(ALICE),
        lambda: store.read_kv(ALICE, "k"),
        lambda: store.read_kv_keys(ALICE, "", 10),
        lambda: store.read_kv_keys(ALICE, "", 0),
        lambda: store.read_usage(ALICE, "d"),
        lambda: store.read_deliveries(ALICE),
        lambda: store.commit(_turn(ALICE, b"t")),
        lambda: store.commit(_turn(ALICE, b"t"), wait=False),
        lambda: store.commit(Commit(ALICE, turn=False, usage=Usage(), usage_day="d")),
        lambda: _response(store, ALICE, "k"),
        lambda: store.due_deliveries(1.0, 10),
        lambda: store.next_due_at(),
        lambda: store.prune_responses(1.0),
        lambda: store.delete_agent(ALICE),
        lambda: store.fork_agent(ALICE, BOB),
        lambda: store.list_agents("chat", after=None, limit=10),
        lambda: store.list_agents("chat", after=None, limit=0),
        lambda: store.export_agent(ALICE),
        lambda: store.count_agents(),
        lambda: store.stored_bytes("chat"),
    ]
    for call in calls:
        with pytest.raises(StorageError, match="store is closed"):
            call()
    with pytest.raises(StorageError, match="store is closed"):
        await AsyncStore(store).commit(_turn(ALICE, b"t"))
    store.close()  # idempotent
    assert store.statistics().commits == 1


async def test_closed_full_store_raises_through_the_adapter(db_path: Path) -> None:
    async with open_sqlite_store(db_path, synchronous="FULL") as store:
        pass
    # Under FULL, wait=False declines before anything else; the adapter's fallback raises.
    with pytest.raises(StorageError, match="store is closed"):
        await AsyncStore(store).commit(_turn(ALICE, b"t"))


async def test_close_inside_the_block(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        store.commit(_turn(ALICE, b"s"))
        store.close()
        with pytest.raises(StorageError, match="store is closed"):
            store.commit(_turn(ALICE, b"t"))
    async with open_sqlite_store(db_path) as store:
        assert store.count_agents() == 1


async def test_close_lets_queued_writes_land(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = _Gate()
    gate.install(monkeypatch)
    done: list[int] = []
    async with open_sqlite_store(db_path) as store:

        async def commit(i: int) -> None:
            await _in_thread(store, _turn(AgentAddress("chat", f"u{i}"), b"s"))
            done.append(i)

        async with trio.open_nursery() as nursery:
            await gate.hold(store, nursery)
            for i in range(5):
                nursery.start_soon(commit, i)
            await _queued(store, 5)
            # Five commits are queued behind the gated one; closing must not drop them.
            nursery.start_soon(trio.to_thread.run_sync, store.close)
            await until(lambda: store._closing)
            with pytest.raises(StorageError, match="store is closed"):
                store.commit(_turn(BOB, b"too late"))
            gate.release.set()
    assert sorted(done) == [0, 1, 2, 3, 4]
    assert store.statistics().commits == 6
    async with open_sqlite_store(db_path) as store:
        assert store.count_agents() == 6
        assert store.read_agent(BOB) is None


# -- group commit and statistics ----------------------------------------------------------------


async def test_statistics_count_commits_and_batches(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        stats = store.statistics()
        assert (stats.commits, stats.batches, stats.path) == (0, 0, str(db_path))
        store.commit(_turn(ALICE, b"s", at=1.0, key="r", response=b"x"))
        store.commit(_turn(BOB, b"s"))
        assert (store.statistics().commits, store.statistics().batches) == (2, 2)
        # Other writes take a transaction but are not commits.
        assert store.fork_agent(ALICE, OTHER_ALICE) == "forked"
        assert store.prune_responses(10.0) == 1
        assert store.delete_agent(BOB) is True
        assert (store.statistics().commits, store.statistics().batches) == (2, 5)
        # A failed commit counts nothing.
        with pytest.raises(StorageError):
            store.commit(_turn(ALICE, cast(bytes, "bad")))
        assert (store.statistics().commits, store.statistics().batches) == (2, 5)
        # Reads count nothing.
        store.read_agent(ALICE)
        store.export_agent(ALICE)
        assert (store.statistics().commits, store.statistics().batches) == (2, 5)


async def test_group_commit_of_concurrent_turns(db_path: Path) -> None:
    n = 200
    async with open_sqlite_store(db_path) as store:
        async with trio.open_nursery() as nursery:
            for i in range(n):
                address = AgentAddress("chat", f"u{i}")
                commit = _turn(address, f"s{i}".encode(), {"k": str(i).encode()})
                nursery.start_soon(_in_thread, store, commit)
        stats = store.statistics()
        assert stats.commits == n
        assert stats.batches < stats.commits
        assert store.count_agents("chat") == n
        for i in range(n):
            address = AgentAddress("chat", f"u{i}")
            record = store.read_agent(address)
            assert record is not None
            assert record.state == f"s{i}".encode()
            assert store.read_kv(address, "k") == str(i).encode()


async def test_queued_writes_share_one_transaction(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = _Gate()
    gate.install(monkeypatch)
    count = sqlite_mod._MAX_BATCH + 10
    threads = trio.CapacityLimiter(count + 1)
    async with open_sqlite_store(db_path, synchronous="FULL") as store:
        async with trio.open_nursery() as nursery:
            await gate.hold(store, nursery)
            for i in range(count):
                commit = _turn(AgentAddress("chat", f"u{i}"), b"s")
                run = functools.partial(trio.to_thread.run_sync, limiter=threads)
                nursery.start_soon(run, store.commit, commit)
            await _queued(store, count)
            gate.release.set()
        stats = store.statistics()
        # The gate's batch, then the queued writes in batches of at most _MAX_BATCH: with
        # FULL, three fsyncs for count + 1 commits.
        assert (stats.commits, stats.batches) == (count + 1, 3)
        assert store.count_agents() == count + 1


async def test_bad_commit_in_batch_fails_only_its_caller(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = _Gate()
    gate.install(monkeypatch)
    bad = AgentAddress("chat", "u7")
    outcomes: dict[int, BaseException | None] = {}
    async with open_sqlite_store(db_path) as store:
        store.commit(_turn(bad, b"old", {"k": b"old"}))

        async def commit(i: int) -> None:
            value = cast(bytes, 12345) if i == 7 else b"new"
            try:
                await _in_thread(
                    store, _turn(AgentAddress("chat", f"u{i}"), b"new", {"k": value, "other": b"o"})
                )
            except StorageError as exc:
                outcomes[i] = exc
            else:
                outcomes[i] = None

        async with trio.open_nursery() as nursery:
            # Hold the writer so that the next twenty commits form one batch.
            await gate.hold(store, nursery)
            for i in range(20):
                nursery.start_soon(commit, i)
            await _queued(store, 20)
            gate.release.set()

        error = outcomes.pop(7)
        assert isinstance(error, StorageError)
        assert "chat/u7" in str(error)
        assert str(db_path) in str(error)
        assert "bytes" in str(error)
        assert isinstance(error.__cause__, TypeError)
        assert outcomes == {i: None for i in range(20) if i != 7}
        # The bad commit wrote nothing; its neighbours wrote everything.
        record = store.read_agent(bad)
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

    def failing_apply(conn: sqlite3.Connection, commit: Commit) -> None:
        real_apply(conn, commit)  # the writes happen, then the commit fails
        if commit.address == bad:
            raise sqlite3.OperationalError("simulated disk I/O error")

    async with open_sqlite_store(db_path) as store:
        store.commit(_turn(bad, b"before", {"k": b"before"}, kv_bytes=7))
        monkeypatch.setattr(sqlite_mod, "_apply_commit", failing_apply)
        errors: list[StorageError] = []

        async def commit_bad() -> None:
            try:
                await _in_thread(
                    store,
                    Commit(
                        bad,
                        state=b"after",
                        kv_writes={"k": None, "n": b"x"},
                        kv_bytes=2,
                        deliveries=[Delivery(bad, "t", 1.0, "timer", b"")],
                        usage=Usage(turns=1),
                        usage_day="d",
                    ),
                )
            except StorageError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(commit_bad)
            for i in range(10):
                nursery.start_soon(_in_thread, store, _turn(AgentAddress("chat", f"g{i}"), b"s"))

        assert len(errors) == 1
        assert "simulated disk I/O error" in str(errors[0])
        assert "failed for chat/bad" in str(errors[0])
        assert str(db_path) in str(errors[0])
        assert isinstance(errors[0].__cause__, sqlite3.OperationalError)
        assert store.read_agent(bad) == AgentRecord(
            state=b"before", kv_bytes=7, turns=1, created_at=0.0, updated_at=0.0
        )
        assert store.read_kv_keys(bad, "", 10) == ["k"]
        assert store.read_deliveries(bad) == []
        assert store.read_usage(bad, "d") == Usage()
        assert store.count_agents() == 11


async def test_commit_errors_name_the_commit_method(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        with pytest.raises(StorageError, match=r"^commit failed for chat/alice in "):
            store.commit(_turn(ALICE, cast(bytes, "not bytes")))


async def test_cancelled_caller_does_not_break_the_writer(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = _Gate(ALICE)
    gate.install(monkeypatch)
    # Under FULL the adapter commits on a worker thread, where the gate can hold it.
    async with open_sqlite_store(db_path, synchronous="FULL") as store:
        stores = AsyncStore(store)
        finished = trio.Event()
        scopes: list[trio.CancelScope] = []

        async def impatient() -> None:
            with trio.CancelScope() as scope:
                scopes.append(scope)
                await stores.commit(_turn(ALICE, b"landed anyway"))
            finished.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(impatient)
            await gate.wait_entered()
            scopes[0].cancel()
            await trio.testing.wait_all_tasks_blocked()
            # The caller waits for the commit its thread is writing.
            assert not finished.is_set()
            gate.release.set()
        assert finished.is_set()
        # The writer survived and keeps committing; the abandoned commit landed.
        await stores.commit(_turn(BOB, b"later"))
        alice = store.read_agent(ALICE)
        assert alice is not None
        assert alice.state == b"landed anyway"
        assert store.count_agents() == 2


async def test_reads_do_not_wait_for_the_writer(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = _Gate(after=True)
    gate.install(monkeypatch)
    async with open_sqlite_store(db_path) as store:
        store.commit(_turn(ALICE, b"committed", {"k": b"v"}))
        async with trio.open_nursery() as nursery:
            await gate.hold(store, nursery)
            # The gate's commit is written but its transaction is still open: readers see
            # the last committed state, without waiting.
            assert store.read_agent(GATE) is None
            assert store.count_agents() == 1
            assert store.read_kv(ALICE, "k") == b"v"
            assert store.export_agent(ALICE) is not None
            gate.release.set()
        assert store.read_agent(GATE) is not None


async def test_failing_commit_in_batch_records_no_response(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = _Gate()
    gate.install(monkeypatch)
    failures: list[int] = []
    async with open_sqlite_store(db_path) as store:

        async def commit(i: int) -> None:
            value = cast(bytes, 5) if i == 3 else b"v"
            address = AgentAddress("chat", f"u{i}")
            try:
                await _in_thread(
                    store, _turn(address, None, {"k": value}, key=f"r{i}", response=f"{i}".encode())
                )
            except StorageError:
                failures.append(i)

        async with trio.open_nursery() as nursery:
            await gate.hold(store, nursery)
            for i in range(6):
                nursery.start_soon(commit, i)
            await _queued(store, 6)
            gate.release.set()

        assert failures == [3]
        for i in range(6):
            response = _response(store, AgentAddress("chat", f"u{i}"), f"r{i}")
            assert response == (None if i == 3 else f"{i}".encode())
        assert store.read_agent(AgentAddress("chat", "u3")) is None


async def test_writes_apply_in_queue_order(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = _Gate()
    gate.install(monkeypatch)
    results: dict[str, object] = {}
    async with open_sqlite_store(db_path) as store:
        store.commit(_turn(ALICE, b"s0", {"old": b"o"}, at=1.0))

        async def run(name: str, call: Callable[[], Awaitable[object]]) -> None:
            results[name] = await call()

        async with trio.open_nursery() as nursery:
            await gate.hold(store, nursery)
            # Queued behind the gate in this order; each must see the ones before it.
            steps: list[tuple[str, Callable[[], Awaitable[object]]]] = [
                ("commit1", lambda: _in_thread(store, _turn(BOB, b"b1", {"k": b"1"}, at=2.0))),
                ("fork", lambda: trio.to_thread.run_sync(store.fork_agent, BOB, OTHER_ALICE)),
                ("commit2", lambda: _in_thread(store, _turn(ALICE, b"s1", {"late": b"l"}))),
                ("delete", lambda: trio.to_thread.run_sync(store.delete_agent, ALICE)),
                ("commit3", lambda: _in_thread(store, _turn(ALICE, b"s2", {"new": b"n"}))),
                ("delete-bob", lambda: trio.to_thread.run_sync(store.delete_agent, BOB)),
            ]
            for queued, (name, call) in enumerate(steps, start=1):
                nursery.start_soon(run, name, call)
                await _queued(store, queued)
            gate.release.set()

        assert results == {
            "commit1": True,
            "fork": "forked",
            "commit2": True,
            "delete": True,
            "commit3": True,
            "delete-bob": True,
        }
        # The delete saw commit2 (no "late" survives) and commit3 came after it.
        record = store.read_agent(ALICE)
        assert record is not None
        assert (record.state, record.turns) == (b"s2", 1)
        assert store.read_kv_keys(ALICE, "", 10) == ["new"]
        # The fork saw commit1; deleting the source afterwards leaves the copy alone.
        assert store.read_agent(BOB) is None
        fork = store.export_agent(OTHER_ALICE)
        assert fork is not None
        assert (fork.record.state, fork.kv) == (b"b1", {"k": b"1"})
        # The six queued writes shared one transaction.
        assert store.statistics().batches == 3


async def test_failing_delete_in_batch_fails_only_its_caller(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = _Gate()
    gate.install(monkeypatch)
    real_delete = _sql_store.delete_rows

    def failing_delete(conn: sqlite3.Connection, address: AgentAddress) -> bool:
        real_delete(conn, address)  # the rows go, then the transaction fails
        if address == BOB:
            raise sqlite3.OperationalError("simulated delete failure")
        return True

    monkeypatch.setattr(_sql_store, "delete_rows", failing_delete)
    outcomes: dict[str, object] = {}
    async with open_sqlite_store(db_path) as store:
        for address in (ALICE, BOB):
            store.commit(_turn(address, b"s", {"k": b"v"}, key="r", response=b"x"))

        async def run(name: str, call: Callable[[], Awaitable[object]]) -> None:
            try:
                outcomes[name] = await call()
            except StorageError as exc:
                outcomes[name] = exc

        async with trio.open_nursery() as nursery:
            await gate.hold(store, nursery)
            steps: list[tuple[str, Callable[[], Awaitable[object]]]] = [
                ("commit", lambda: _in_thread(store, _turn(ALICE, b"t"))),
                ("bad", lambda: trio.to_thread.run_sync(store.delete_agent, BOB)),
                ("good", lambda: trio.to_thread.run_sync(store.delete_agent, ALICE)),
            ]
            for queued, (name, call) in enumerate(steps, start=1):
                nursery.start_soon(run, name, call)
                await _queued(store, queued)
            gate.release.set()

        error = outcomes.pop("bad")
        assert isinstance(error, StorageError)
        assert "delete_agent failed for chat/bob" in str(error)
        assert "simulated delete failure" in str(error)
        assert outcomes == {"commit": True, "good": True}
        assert store.read_agent(ALICE) is None
        bob = store.export_agent(BOB)
        assert bob is not None
        assert (bob.record.state, bob.kv, bob.responses) == (b"s", {"k": b"v"}, 1)


async def test_fork_refusals_go_through_the_writer(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        store.commit(_turn(ALICE, b"alice", {"a": b"1"}, kv_bytes=2, at=1.0))
        store.commit(_turn(BOB, b"bob", {"b": b"2"}, kv_bytes=2, at=2.0))
        batches = store.statistics().batches
        assert store.fork_agent(ALICE, BOB) == "target_exists"
        assert store.fork_agent(ALICE, ALICE) == "target_exists"
        missing = AgentAddress("chat", "missing")
        assert store.fork_agent(missing, AgentAddress("chat", "fresh")) == "source_missing"
        assert store.fork_agent(missing, BOB) == "source_missing"
        # The refusals went through the writer but changed nothing.
        assert store.statistics().batches == batches + 4
        assert store.statistics().commits == 2


# -- commit(wait=False) -------------------------------------------------------------------------


async def test_commit_without_waiting_writes_at_once_when_idle(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        assert store.commit(_turn(ALICE, b"s", {"k": b"v"}, kv_bytes=2, at=1.0), wait=False)
        assert store.read_agent(ALICE) == AgentRecord(
            state=b"s", kv_bytes=2, turns=1, created_at=1.0, updated_at=1.0
        )
        assert (store.statistics().commits, store.statistics().batches) == (1, 1)
        # A failing one raises, having written nothing.
        with pytest.raises(StorageError, match="chat/bob"):
            store.commit(_turn(BOB, cast(bytes, "bad"), {"k": b"v"}), wait=False)
        assert store.read_agent(BOB) is None
        assert store.read_kv(BOB, "k") is None
        assert (store.statistics().commits, store.statistics().batches) == (1, 1)


async def test_commit_without_waiting_declines_under_full(db_path: Path) -> None:
    async with open_sqlite_store(db_path, synchronous="FULL") as store:
        assert store.commit(_turn(ALICE, b"s", {"k": b"v"}), wait=False) is False
        assert store.read_agent(ALICE) is None
        assert store.read_kv(ALICE, "k") is None
        assert (store.statistics().commits, store.statistics().batches) == (0, 0)
        assert store.commit(_turn(ALICE, b"s", {"k": b"v"})) is True
        assert store.read_kv(ALICE, "k") == b"v"
        # It declines before looking at the commit.
        assert store.commit(_turn(BOB, cast(bytes, "bad")), wait=False) is False


async def test_commit_without_waiting_declines_while_the_writer_is_busy(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = _Gate()
    gate.install(monkeypatch)
    async with open_sqlite_store(db_path) as store:
        async with trio.open_nursery() as nursery:
            await gate.hold(store, nursery)
            assert store.commit(_turn(ALICE, b"s"), wait=False) is False
            assert len(store._queue) == 0  # not queued either
            gate.release.set()
        assert store.read_agent(ALICE) is None
        assert store.read_agent(GATE) is not None
        assert store.commit(_turn(ALICE, b"s"), wait=False) is True
        assert store.read_agent(ALICE) is not None


async def test_commit_without_waiting_writes_queued_writes_first(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        # A write queued by a thread that has not taken the writer lock yet.
        queued = store._enqueue(
            sqlite_mod._CommitOp(_turn(ALICE, b"first", {"k": b"1"}), store._leases)
        )
        assert store.commit(_turn(ALICE, b"second", {"k": b"2"}), wait=False) is True
        assert queued.done
        assert queued.error is None
        record = store.read_agent(ALICE)
        assert record is not None
        assert (record.state, record.turns) == (b"second", 2)
        assert store.read_kv(ALICE, "k") == b"2"
        assert (store.statistics().commits, store.statistics().batches) == (2, 1)

        # The queued write and a failing one: the failing one fails only its caller.
        queued = store._enqueue(sqlite_mod._CommitOp(_turn(BOB, b"bob"), store._leases))
        with pytest.raises(StorageError, match="chat/alice"):
            store.commit(_turn(ALICE, cast(bytes, "bad"), {"k": b"3"}), wait=False)
        assert queued.done
        assert queued.error is None
        assert store.read_agent(BOB) is not None
        assert store.read_kv(ALICE, "k") == b"2"


@pytest.mark.parametrize(("synchronous", "on_loop"), [("NORMAL", True), ("FULL", False)])
async def test_adapter_commits_on_the_loop_only_without_fsync(
    db_path: Path, monkeypatch: pytest.MonkeyPatch, synchronous: Any, on_loop: bool
) -> None:
    threads: list[int] = []
    real_apply = sqlite_mod._apply_commit

    def recording(conn: sqlite3.Connection, commit: Commit) -> None:
        threads.append(threading.get_ident())
        real_apply(conn, commit)

    monkeypatch.setattr(sqlite_mod, "_apply_commit", recording)
    async with open_sqlite_store(db_path, synchronous=synchronous) as store:
        await AsyncStore(store).commit(_turn(ALICE, b"s"))
        assert (threads == [threading.get_ident()]) is on_loop
        assert len(threads) == 1
        assert store.read_agent(ALICE) is not None


def _response(store: StateStore, address: AgentAddress, key: str) -> bytes | None:
    """The response recorded under ``key``, or None."""
    record = store.read_response(address, key)
    return None if record is None else record.response
