"""The embedded state store: one SQLite file per host.

Durability
----------
The database runs in WAL mode. A turn counts as committed once its transaction is in the
write-ahead log; readers never block the writer and the writer never blocks readers.

``synchronous`` picks what a committed turn survives:

* ``NORMAL`` (default): the WAL is not fsynced on every commit. A committed turn survives the
  process being killed (the OS still holds the data), but the last few turns before a power
  loss or kernel crash may roll back. The database itself is never corrupted.
* ``FULL``: the WAL is fsynced before every commit returns, so committed turns also survive
  power loss, at the price of one fsync per write transaction.

The writer connection sets ``journal_size_limit``, so after a checkpoint the WAL file is
truncated back to at most that size instead of keeping the high-water mark of a burst of writes.

Group commit
------------
All writes go through one writer connection. A write is queued, then written under the
writer lock by whichever thread takes the lock next, with everything else queued (up to
``_MAX_BATCH``) in ONE transaction: the worker thread that ran a turn commits it, unless an
earlier holder of the lock already did. So many concurrent writes share one commit (and,
with ``FULL``, one fsync), and a lone turn pays no extra thread trip. If a batch transaction
fails, each write of the batch is retried in its own transaction, so a bad commit fails
only its own caller.

The other writes (:meth:`~SqliteStore.delete_agent`, :meth:`~SqliteStore.fork_agent`,
:meth:`~SqliteStore.prune_responses`) go through the same queue and are applied in the same
batch transactions, in queue order, with the same retry: a delete called after a commit sees
that commit applied, and a failing operation fails only its own caller.

Reads
-----
Every read borrows a connection from a small pool of read connections, which WAL lets read
while the writer writes.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar, cast

import trio

from ..address import AgentAddress
from ..errors import AlreadyHandled, ConfigError, StorageError
from . import _schema
from . import _sqlite_approvals as _approvals
from ._leases import MemoryLeases
from .protocol import (
    AgentExport,
    AgentRecord,
    AgentSummary,
    Approval,
    ApprovalDecision,
    Commit,
    DeadLetter,
    Delivery,
    FailedDelivery,
    ForkResult,
    Handled,
    IdempotencyRecord,
    JournalEntry,
    Lease,
    PendingOp,
    Usage,
)

__all__ = ["SqliteStore", "SqliteStoreStatistics", "open_sqlite_store"]

_MAX_BATCH = 256
"""Most writes (commits and other operations) applied in one group-commit transaction."""
_BUSY_TIMEOUT_MS = 5000
"""How long a connection waits on a lock held by another process before failing."""
_JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
"""Most bytes the WAL file keeps on disk after a checkpoint (it is truncated to this)."""
_MAX_IDLE_READERS = 16
"""Read connections kept open between reads (more than the threads that read at once: the
worker threads' turns and the loop's store calls); more are opened under load and closed
after."""
_MAX_CODE_POINT = 0x10FFFF
_SURROGATES = range(0xD800, 0xE000)

_CLOSED = "store is closed"

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class SqliteStoreStatistics:
    """Counters of one open :class:`SqliteStore`."""

    commits: int
    """Turn commits written (bookkeeping commits not counted)."""
    batches: int
    """Write transactions committed (one group commit holds one or more turn commits)."""
    path: str
    """The database file."""


class _WriteOp(Generic[_T]):
    """One write the writer applies inside a (possibly shared) transaction."""

    __slots__ = ()

    name: ClassVar[str]
    """The public method, for error messages."""

    def turn_commits(self) -> int:
        """How many turn commits this is (for the statistics)."""
        return 0

    def apply(self, conn: sqlite3.Connection) -> _T:
        """Write inside the caller's transaction and return the caller's result."""
        raise NotImplementedError

    def subject(self) -> str:
        """What the operation is about, for error messages (``" for chat/alice"``)."""
        raise NotImplementedError


class _CommitOp(_WriteOp[None]):
    __slots__ = ("commit", "leases")
    name = "commit"

    def __init__(self, commit: Commit, leases: MemoryLeases) -> None:
        self.commit = commit
        self.leases = leases

    def turn_commits(self) -> int:
        return 1 if self.commit.turn else 0

    def apply(self, conn: sqlite3.Connection) -> None:
        if self.commit.fence is not None:
            self.leases.check(self.commit.address, self.commit.fence)
        _apply_commit(conn, self.commit)

    def subject(self) -> str:
        return f" for {self.commit.address}"


class _DeleteOp(_WriteOp[bool]):
    __slots__ = ("address",)
    name = "delete_agent"

    def __init__(self, address: AgentAddress) -> None:
        self.address = address

    def apply(self, conn: sqlite3.Connection) -> bool:
        return _apply_delete(conn, self.address)

    def subject(self) -> str:
        return f" for {self.address}"


class _ForkOp(_WriteOp[ForkResult]):
    __slots__ = ("source", "target")
    name = "fork_agent"

    def __init__(self, source: AgentAddress, target: AgentAddress) -> None:
        self.source = source
        self.target = target

    def apply(self, conn: sqlite3.Connection) -> ForkResult:
        return _apply_fork(conn, self.source, self.target)

    def subject(self) -> str:
        return f" from {self.source} to {self.target}"


class _PruneOp(_WriteOp[int]):
    __slots__ = ("older_than",)
    name = "prune_responses"

    def __init__(self, older_than: float) -> None:
        self.older_than = older_than

    def apply(self, conn: sqlite3.Connection) -> int:
        cursor = conn.execute(
            "DELETE FROM idempotency WHERE created_at < ?", (float(self.older_than),)
        )
        return int(cursor.rowcount)

    def subject(self) -> str:
        return ""


class _CallOp(_WriteOp[_T]):
    """A write given as a function of the writer's connection (the approvals' writes)."""

    __slots__ = ("_about", "_apply", "name")

    def __init__(self, name: str, about: str, apply: Callable[[sqlite3.Connection], _T]) -> None:
        self.name = name  # type: ignore[misc]
        self._about = about
        self._apply = apply

    def apply(self, conn: sqlite3.Connection) -> _T:
        return self._apply(conn)

    def subject(self) -> str:
        return self._about


def _add_usage(conn: sqlite3.Connection, address: AgentAddress, day: str, usage: Usage) -> None:
    conn.execute(
        "INSERT INTO usage (kind, id, day, llm_input_tokens, llm_output_tokens, http_calls,"
        " cpu_ms, turns, errors) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (kind, id, day) DO UPDATE SET"
        " llm_input_tokens = usage.llm_input_tokens + excluded.llm_input_tokens,"
        " llm_output_tokens = usage.llm_output_tokens + excluded.llm_output_tokens,"
        " http_calls = usage.http_calls + excluded.http_calls,"
        " cpu_ms = usage.cpu_ms + excluded.cpu_ms,"
        " turns = usage.turns + excluded.turns, errors = usage.errors + excluded.errors",
        (
            address.kind,
            address.id,
            day,
            usage.llm_input_tokens,
            usage.llm_output_tokens,
            usage.http_calls,
            usage.cpu_ms,
            usage.turns,
            usage.errors,
        ),
    )


class _Pending(Generic[_T]):
    """One queued write and its outcome, filled in by whichever thread writes it."""

    __slots__ = ("done", "error", "op", "result")

    def __init__(self, op: _WriteOp[_T]) -> None:
        self.op = op
        self.done = False
        self.error: StorageError | None = None
        self.result: _T | None = None


def _connect(path: str, *, read_only: bool) -> sqlite3.Connection:
    """A connection in autocommit mode (we issue BEGIN/COMMIT ourselves), usable from any
    thread (but only one at a time)."""
    conn = sqlite3.connect(
        path,
        timeout=_BUSY_TIMEOUT_MS / 1000,
        isolation_level=None,
        check_same_thread=False,
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        if read_only:
            conn.execute("PRAGMA query_only = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _open_writer(
    raw_path: str | os.PathLike[str], synchronous: str
) -> tuple[str, sqlite3.Connection]:
    """Open the writer connection: switch to WAL, set durability, apply migrations.
    Returns the absolute path and the connection."""
    path = os.path.abspath(os.fspath(raw_path))
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"opening database {path} failed: {exc}") from exc
    try:
        conn = _connect(path, read_only=False)
    except sqlite3.Error as exc:
        raise StorageError(f"opening database {path} failed: {exc}") from exc
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StorageError(
                f"opening database {path} failed: could not switch to WAL mode (got {mode!r})"
            )
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute(f"PRAGMA journal_size_limit = {_JOURNAL_SIZE_LIMIT}")
        _schema.migrate(conn, path)
    except sqlite3.Error as exc:
        conn.close()
        raise StorageError(f"opening database {path} failed: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return path, conn


def _check_bytes(value: object, what: str) -> None:
    if not isinstance(value, bytes):
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}")


def _apply_commit(conn: sqlite3.Connection, commit: Commit) -> None:
    """Write one commit inside the caller's transaction."""
    if not commit.turn and (
        commit.state is not None or commit.kv_writes or commit.idempotency_key is not None
    ):
        raise ValueError("only a turn's commit carries state, kv writes or a response")
    kind, agent_id = commit.address.kind, commit.address.id
    puts: list[tuple[str, str, str, bytes]] = []
    deletes: list[tuple[str, str, str]] = []
    for key, value in commit.kv_writes.items():
        if not isinstance(key, str):
            raise TypeError(f"kv key must be str, not {type(key).__name__}")
        if value is None:
            deletes.append((kind, agent_id, key))
        else:
            _check_bytes(value, f"kv value of key {key!r}")
            puts.append((kind, agent_id, key, value))
    if commit.turn:
        _upsert_record(conn, commit)
    if deletes:
        conn.executemany("DELETE FROM kv WHERE kind = ? AND id = ? AND key = ?", deletes)
    if puts:
        conn.executemany(
            "INSERT INTO kv (kind, id, key, value) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (kind, id, key) DO UPDATE SET value = excluded.value",
            puts,
        )
    idempotency_key = commit.idempotency_key
    if idempotency_key is not None:
        if not isinstance(idempotency_key, str):
            raise TypeError(f"idempotency key must be str, not {type(idempotency_key).__name__}")
        _check_bytes(commit.response, "response")
        cursor = conn.execute(
            "INSERT INTO idempotency (kind, id, key, response, created_at, request_sha)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (kind, id, key) DO NOTHING",
            (kind, agent_id, idempotency_key, commit.response, commit.at, commit.request_sha),
        )
        if cursor.rowcount != 1:
            raise ValueError(f"idempotency key {idempotency_key!r} is already recorded")
    if commit.handled is not None:
        _apply_handled(conn, commit.address, commit.handled)
    if commit.failed_delivery is not None:
        _apply_failed(conn, commit.address, commit.failed_delivery, commit.at)
    if commit.cancelled:
        conn.executemany(
            "DELETE FROM deliveries WHERE kind = ? AND id = ? AND delivery_id = ?",
            [(kind, agent_id, delivery_id) for delivery_id in commit.cancelled],
        )
    for delivery in commit.deliveries:
        _insert_delivery(conn, delivery, commit.at)
    if commit.clear_journal is not None:
        conn.execute(
            "DELETE FROM journal WHERE kind = ? AND id = ? AND message_id = ?",
            (kind, agent_id, commit.clear_journal),
        )
    if commit.journal:
        conn.executemany(
            "INSERT INTO journal (kind, id, message_id, seq, capability, call, request_sha,"
            " ok, value, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (kind, id, message_id, seq) DO UPDATE SET capability ="
            " excluded.capability, call = excluded.call, request_sha = excluded.request_sha,"
            " ok = excluded.ok, value = excluded.value",
            [
                (
                    kind,
                    agent_id,
                    e.message_id,
                    e.seq,
                    e.capability,
                    e.call,
                    e.request_sha,
                    int(e.ok),
                    _bytes(e.value, "journal value"),
                    commit.at,
                )
                for e in commit.journal
            ],
        )
    if commit.op_finished is not None:
        conn.execute(
            "DELETE FROM pending_ops WHERE kind = ? AND id = ? AND op_key = ?",
            (kind, agent_id, commit.op_finished),
        )
    if commit.ops_started:
        conn.executemany(
            "INSERT INTO pending_ops (kind, id, op_key, capability, call, request, handler,"
            " tag, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    kind,
                    agent_id,
                    op.op_key,
                    op.capability,
                    op.call,
                    _bytes(op.request, "op request"),
                    op.handler,
                    _bytes(op.tag, "op tag"),
                    commit.at,
                )
                for op in commit.ops_started
            ],
        )
    if commit.usage is not None:
        _add_usage(conn, commit.address, commit.usage_day, commit.usage)


def _bytes(value: object, what: str) -> bytes:
    _check_bytes(value, what)
    assert isinstance(value, bytes)
    return value


def _apply_handled(conn: sqlite3.Connection, address: AgentAddress, handled: Handled) -> None:
    """Remove or re-arm the handled delivery; AlreadyHandled if it is gone or was moved."""
    params: tuple[object, ...] = (address.kind, address.id, handled.delivery_id)
    condition = "kind = ? AND id = ? AND delivery_id = ?"
    if handled.due_at is not None:
        condition += " AND due_at = ?"
        params += (float(handled.due_at),)
    if handled.next_due is None:
        cursor = conn.execute(f"DELETE FROM deliveries WHERE {condition}", params)
    else:
        cursor = conn.execute(
            f"UPDATE deliveries SET due_at = ?, attempts = 0, last_error = NULL WHERE {condition}",
            (float(handled.next_due), *params),
        )
    if handled.due_at is not None and cursor.rowcount != 1:
        raise AlreadyHandled(f"delivery {handled.delivery_id!r} of {address} was handled already")


def _apply_failed(
    conn: sqlite3.Connection, address: AgentAddress, failed: FailedDelivery, at: float
) -> None:
    """Count a failed attempt: retry later, or move the delivery to the dead letters."""
    params = (address.kind, address.id, failed.delivery_id)
    if failed.retry_at is not None:
        conn.execute(
            "UPDATE deliveries SET due_at = ?, attempts = attempts + 1, last_error = ?"
            " WHERE kind = ? AND id = ? AND delivery_id = ?",
            (float(failed.retry_at), failed.error, *params),
        )
        return
    conn.execute(
        "INSERT INTO dead_letters (kind, id, delivery_id, event_kind, payload, attempts,"
        " last_error, failed_at) SELECT kind, id, delivery_id, event_kind, payload,"
        " attempts + 1, ?, ? FROM deliveries WHERE kind = ? AND id = ? AND delivery_id = ?"
        " ON CONFLICT (kind, id, delivery_id) DO UPDATE SET event_kind = excluded.event_kind,"
        " payload = excluded.payload, attempts = excluded.attempts,"
        " last_error = excluded.last_error, failed_at = excluded.failed_at",
        (failed.error, float(at), *params),
    )
    conn.execute("DELETE FROM deliveries WHERE kind = ? AND id = ? AND delivery_id = ?", params)


def _upsert_record(conn: sqlite3.Connection, commit: Commit) -> None:
    """One more turn in the agent's record, with its new state and kv size if they changed."""
    sets = ["turns = agents.turns + excluded.turns", "updated_at = excluded.updated_at"]
    if commit.state is not None:
        _check_bytes(commit.state, "state")
        sets += ["state = excluded.state", "state_bytes = excluded.state_bytes"]
    if commit.kv_bytes is not None:
        sets.append("kv_bytes = excluded.kv_bytes")
    state = commit.state
    conn.execute(
        "INSERT INTO agents (kind, id, state, state_bytes, kv_bytes, turns, created_at,"
        " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        f" ON CONFLICT (kind, id) DO UPDATE SET {', '.join(sets)}",
        (
            commit.address.kind,
            commit.address.id,
            state,
            0 if state is None else len(state),
            commit.kv_bytes or 0,
            commit.turns,
            commit.at,
            commit.at,
        ),
    )


def _insert_delivery(conn: sqlite3.Connection, delivery: Delivery, created_at: float) -> None:
    """Insert a delivery, replacing one with the same agent and id."""
    _check_bytes(delivery.payload, "delivery payload")
    conn.execute(
        "INSERT INTO deliveries (kind, id, delivery_id, due_at, event_kind, payload,"
        " every_s, catch_up, created_at, idempotency_key, attempts, last_error)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, NULL)"
        " ON CONFLICT (kind, id, delivery_id) DO UPDATE SET due_at = excluded.due_at,"
        " event_kind = excluded.event_kind, payload = excluded.payload,"
        " every_s = excluded.every_s, catch_up = excluded.catch_up,"
        " idempotency_key = excluded.idempotency_key, attempts = 0, last_error = NULL",
        (
            delivery.address.kind,
            delivery.address.id,
            delivery.delivery_id,
            float(delivery.due_at),
            delivery.event_kind,
            delivery.payload,
            delivery.every_s,
            delivery.catch_up,
            created_at,
            delivery.idempotency_key,
        ),
    )


_TABLES = (
    "agents",
    "kv",
    "idempotency",
    "deliveries",
    "usage",
    "journal",
    "pending_ops",
    "dead_letters",
    "approvals",
)
"""Every table that holds rows of one agent, keyed by (kind, id)."""


def _holds_rows(conn: sqlite3.Connection, address: AgentAddress) -> bool:
    """Whether any table holds a row of the agent."""
    params = (address.kind, address.id)
    return any(
        conn.execute(f"SELECT 1 FROM {table} WHERE kind = ? AND id = ? LIMIT 1", params).fetchone()
        is not None
        for table in _TABLES
    )


def _apply_delete(conn: sqlite3.Connection, address: AgentAddress) -> bool:
    """Delete every row of the agent inside the caller's transaction; True if there were any."""
    params = (address.kind, address.id)
    deleted = 0
    for table in _TABLES:
        deleted += conn.execute(f"DELETE FROM {table} WHERE kind = ? AND id = ?", params).rowcount
    return deleted > 0


def _apply_fork(conn: sqlite3.Connection, source: AgentAddress, target: AgentAddress) -> ForkResult:
    """Copy the source's record and kv to the target inside the caller's transaction."""
    found = conn.execute(
        "SELECT 1 FROM agents WHERE kind = ? AND id = ?", (source.kind, source.id)
    ).fetchone()
    if found is None:
        return "source_missing"
    if _holds_rows(conn, target):
        return "target_exists"
    now = time.time()
    conn.execute(
        "INSERT INTO agents (kind, id, state, state_bytes, kv_bytes, turns,"
        " created_at, updated_at)"
        " SELECT ?, ?, state, state_bytes, kv_bytes, 0, ?, ? FROM agents"
        " WHERE kind = ? AND id = ?",
        (target.kind, target.id, now, now, source.kind, source.id),
    )
    conn.execute(
        "INSERT INTO kv (kind, id, key, value)"
        " SELECT ?, ?, key, value FROM kv WHERE kind = ? AND id = ?",
        (target.kind, target.id, source.kind, source.id),
    )
    return "forked"


_DELIVERY_COLUMNS = (
    "kind, id, delivery_id, due_at, event_kind, payload, every_s, catch_up, idempotency_key,"
    " attempts, last_error"
)


def _delivery(row: tuple[Any, ...]) -> Delivery:
    (
        kind,
        agent_id,
        delivery_id,
        due_at,
        event_kind,
        payload,
        every_s,
        catch_up,
        key,
        attempts,
        last_error,
    ) = row
    return Delivery(
        address=AgentAddress(kind, agent_id),
        delivery_id=delivery_id,
        due_at=float(due_at),
        event_kind=event_kind,
        payload=bytes(payload),
        every_s=None if every_s is None else float(every_s),
        catch_up=catch_up,
        idempotency_key=key,
        attempts=int(attempts),
        last_error=last_error,
    )


_DEAD_LETTER_COLUMNS = "kind, id, delivery_id, event_kind, payload, attempts, last_error, failed_at"


def _dead_letter(row: tuple[Any, ...]) -> DeadLetter:
    kind, agent_id, delivery_id, event_kind, payload, attempts, last_error, failed_at = row
    return DeadLetter(
        address=AgentAddress(kind, agent_id),
        delivery_id=str(delivery_id),
        event_kind=str(event_kind),
        payload=bytes(payload),
        attempts=int(attempts),
        last_error=str(last_error),
        failed_at=float(failed_at),
    )


_PENDING_OP_COLUMNS = "kind, id, op_key, capability, call, request, handler, tag"


def _pending_op(row: tuple[Any, ...]) -> PendingOp:
    kind, agent_id, op_key, capability, call, request, handler, tag = row
    return PendingOp(
        address=AgentAddress(kind, agent_id),
        op_key=str(op_key),
        capability=str(capability),
        call=str(call),
        request=bytes(request),
        handler=str(handler),
        tag=bytes(tag),
    )


def _prefix_upper_bound(prefix: str) -> str | None:
    """The least string greater than every string that starts with ``prefix`` (in SQLite's
    BINARY collation, i.e. UTF-8 byte order, which is code point order), or None if there is
    no such bound (empty prefix, or only U+10FFFF characters)."""
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if code in _SURROGATES:
            code = _SURROGATES.stop
        if code <= _MAX_CODE_POINT:
            return "".join(chars) + chr(code)
    return None


class _ReadPool:
    """Read connections shared by any number of threads; each read borrows one exclusively."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._closed = False

    def acquire(self) -> sqlite3.Connection:
        """A connection for this thread alone, until :meth:`release`."""
        with self._lock:
            if self._closed:
                raise StorageError(_CLOSED)
            conn = self._idle.pop() if self._idle else None
        return _connect(self._path, read_only=True) if conn is None else conn

    def release(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            keep = not self._closed and len(self._idle) < _MAX_IDLE_READERS
            if keep:
                self._idle.append(conn)
        if not keep:
            conn.close()

    def close(self) -> None:
        """Close idle connections now; borrowed ones are closed when given back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class _Reading:
    """``with store._reading(operation, address) as conn``: a borrowed read connection;
    SQLite errors come out as StorageError naming the operation. A plain class, not
    ``@contextmanager``: guest turns read through it."""

    __slots__ = ("_address", "_conn", "_operation", "_path", "_pool")

    def __init__(
        self, pool: _ReadPool, operation: str, address: AgentAddress | None, path: str
    ) -> None:
        self._pool = pool
        self._operation = operation
        self._address = address
        self._path = path
        self._conn: sqlite3.Connection | None = None

    def __enter__(self) -> sqlite3.Connection:
        try:
            self._conn = self._pool.acquire()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        return self._conn

    def __exit__(self, _type: object, exc: BaseException | None, _tb: object) -> None:
        if self._conn is not None:
            self._pool.release(self._conn)
        if isinstance(exc, sqlite3.Error):
            raise self._error(exc) from exc

    def _error(self, exc: sqlite3.Error) -> StorageError:
        subject = f" for {self._address}" if self._address is not None else ""
        return StorageError(f"{self._operation} failed{subject} in {self._path}: {exc}")


class SqliteStore:
    """A :class:`~roost.store.protocol.StateStore` on one SQLite file.

    Create it with :func:`open_sqlite_store`.
    """

    def __init__(self, path: str, writer: sqlite3.Connection, synchronous: str = "NORMAL") -> None:
        self._path = path
        self._writer = writer
        self._fsyncs = synchronous == "FULL"
        self._readers = _ReadPool(path)
        self._queue: deque[_Pending[Any]] = deque()
        self._queue_lock = threading.Lock()
        """Guards ``_queue`` and ``_closing``; held only to append or take writes."""
        self._writer_lock = threading.Lock()
        """Held by the thread writing a batch on the writer connection."""
        self._closing = False
        self._closed = False
        self._commits = 0
        self._batches = 0
        self._leases = MemoryLeases()

    @property
    def shared(self) -> bool:
        """One host uses a SQLite store: leases are kept in memory."""
        return False

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop accepting work, write what was queued, close every connection. Idempotent."""
        with self._queue_lock:
            self._closing = True
        with self._writer_lock:
            if self._closed:
                return
            try:
                self._write_queue_locked()
            finally:
                self._closed = True
                self._writer.close()
                self._readers.close()

    def statistics(self) -> SqliteStoreStatistics:
        """Counters since the store was opened (still readable after :meth:`close`)."""
        return SqliteStoreStatistics(commits=self._commits, batches=self._batches, path=self._path)

    def _check_open(self) -> None:
        if self._closing:
            raise StorageError(_CLOSED)

    # -- the turn side ---------------------------------------------------------------------

    def _reading(self, operation: str, address: AgentAddress | None) -> _Reading:
        self._check_open()
        return _Reading(self._readers, operation, address, self._path)

    def read_agent(self, address: AgentAddress) -> AgentRecord | None:
        """The agent's record, or None if it has never committed a turn."""
        with self._reading("read_agent", address) as conn:
            rows = conn.execute(
                "SELECT state, kv_bytes, turns, created_at, updated_at FROM agents"
                " WHERE kind = ? AND id = ?",
                (address.kind, address.id),
            ).fetchall()
        return _record(rows[0]) if rows else None

    def read_kv(self, address: AgentAddress, key: str) -> bytes | None:
        """The committed value of ``key`` in the agent's own namespace."""
        with self._reading("read_kv", address) as conn:
            rows = conn.execute(
                "SELECT value FROM kv WHERE kind = ? AND id = ? AND key = ?",
                (address.kind, address.id, key),
            ).fetchall()
        return bytes(rows[0][0]) if rows else None

    def read_kv_keys(self, address: AgentAddress, prefix: str, limit: int) -> list[str]:
        """Up to ``limit`` committed keys starting with ``prefix``, sorted. ``prefix``
        matches literally: it is turned into a key range, not a LIKE pattern."""
        self._check_open()
        if limit <= 0:
            return []
        upper = _prefix_upper_bound(prefix)
        with self._reading("read_kv_keys", address) as conn:
            if upper is None:
                cursor = conn.execute(
                    "SELECT key FROM kv WHERE kind = ? AND id = ? AND key >= ?"
                    " ORDER BY key LIMIT ?",
                    (address.kind, address.id, prefix, limit),
                )
            else:
                cursor = conn.execute(
                    "SELECT key FROM kv WHERE kind = ? AND id = ? AND key >= ? AND key < ?"
                    " ORDER BY key LIMIT ?",
                    (address.kind, address.id, prefix, upper, limit),
                )
            rows = cursor.fetchall()
        return [str(row[0]) for row in rows]

    def read_usage(self, address: AgentAddress, day: str) -> Usage:
        """The agent's usage on ``day``."""
        with self._reading("read_usage", address) as conn:
            row = conn.execute(
                "SELECT llm_input_tokens, llm_output_tokens, http_calls, cpu_ms, turns, errors"
                " FROM usage WHERE kind = ? AND id = ? AND day = ?",
                (address.kind, address.id, day),
            ).fetchone()
        if row is None:
            return Usage()
        return Usage(int(row[0]), int(row[1]), int(row[2]), float(row[3]), int(row[4]), int(row[5]))

    def read_deliveries(self, address: AgentAddress) -> list[Delivery]:
        """The agent's pending deliveries, earliest first."""
        with self._reading("read_deliveries", address) as conn:
            rows = conn.execute(
                f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE kind = ? AND id = ?"
                " ORDER BY due_at",
                (address.kind, address.id),
            ).fetchall()
        return [_delivery(row) for row in rows]

    def read_journal(self, address: AgentAddress, message_id: str) -> list[JournalEntry]:
        """The op results journaled for a message of the agent, by ``seq``."""
        with self._reading("read_journal", address) as conn:
            rows = conn.execute(
                "SELECT message_id, seq, capability, call, request_sha, ok, value FROM journal"
                " WHERE kind = ? AND id = ? AND message_id = ? ORDER BY seq",
                (address.kind, address.id, message_id),
            ).fetchall()
        return [
            JournalEntry(str(m), int(s), str(c), str(f), str(r), bool(ok), bytes(v))
            for m, s, c, f, r, ok, v in rows
        ]

    def commit(self, commit: Commit, *, wait: bool = True) -> bool:
        """Apply one commit in one transaction, shared with whatever else is queued (group
        commit). With ``wait=False``: only if no other write is in progress and no fsync is
        needed (``synchronous="NORMAL"``); False, having written nothing, otherwise."""
        if wait:
            self._submit(_CommitOp(commit, self._leases))
            return True
        if self._fsyncs or not self._writer_lock.acquire(blocking=False):
            return False
        try:
            op = _CommitOp(commit, self._leases)
            with self._queue_lock:
                if self._closing:
                    raise StorageError(_CLOSED)
                alone = not self._queue
            if alone:  # nothing queued to keep the order of: no batch to assemble
                try:
                    self._transaction([op])
                except Exception as exc:
                    raise self._op_error(op, exc) from exc
                return True
            pending = self._enqueue(op)
            self._write_locked(pending)
        finally:
            self._writer_lock.release()
        self._outcome(pending)
        return True

    # -- the admin side --------------------------------------------------------------------

    def read_response(self, address: AgentAddress, key: str) -> IdempotencyRecord | None:
        """What was committed with idempotency key ``key`` for the agent, if anything."""
        with self._reading("read_response", address) as conn:
            rows = conn.execute(
                "SELECT response, request_sha FROM idempotency"
                " WHERE kind = ? AND id = ? AND key = ?",
                (address.kind, address.id, key),
            ).fetchall()
        if not rows:
            return None
        response, request_sha = rows[0]
        return IdempotencyRecord(bytes(response), None if request_sha is None else str(request_sha))

    def pending_ops(self, limit: int, *, owner: str | None = None) -> list[PendingOp]:
        """Continuation-form ops in flight, oldest first (with ``owner``: of agents whose
        lease it holds or could take)."""
        if limit <= 0:
            return []
        with self._reading("pending_ops", None) as conn:
            rows = conn.execute(
                f"SELECT {_PENDING_OP_COLUMNS} FROM pending_ops ORDER BY created_at LIMIT ?",
                (int(limit) if owner is None else -1,),
            ).fetchall()
        ops = [_pending_op(row) for row in rows]
        if owner is not None:
            ops = [op for op in ops if self._leases.may_take(op.address, owner)][:limit]
        return ops

    def read_dead_letters(self, address: AgentAddress) -> list[DeadLetter]:
        """The agent's dead letters, oldest first."""
        with self._reading("read_dead_letters", address) as conn:
            rows = conn.execute(
                f"SELECT {_DEAD_LETTER_COLUMNS} FROM dead_letters WHERE kind = ? AND id = ?"
                " ORDER BY failed_at",
                (address.kind, address.id),
            ).fetchall()
        return [_dead_letter(row) for row in rows]

    def count_dead_letters(self, kind: str | None = None) -> dict[str, int]:
        """Dead letters held, by kind."""
        with self._reading("count_dead_letters", None) as conn:
            if kind is None:
                rows = conn.execute(
                    "SELECT kind, COUNT(*) FROM dead_letters GROUP BY kind"
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT kind, COUNT(*) FROM dead_letters WHERE kind = ? GROUP BY kind",
                    (kind,),
                ).fetchall()
        return {str(k): int(n) for k, n in rows}

    def due_deliveries(self, now: float, limit: int, *, owner: str | None = None) -> list[Delivery]:
        """Deliveries due at or before ``now``, earliest first (with ``owner``: of agents
        whose lease it holds or could take)."""
        if limit <= 0:
            return []
        found: list[Delivery] = []
        offset = 0
        with self._reading("due_deliveries", None) as conn:
            while len(found) < limit:
                rows = conn.execute(
                    f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE due_at <= ?"
                    " ORDER BY due_at LIMIT ? OFFSET ?",
                    (float(now), int(limit), offset),
                ).fetchall()
                offset += len(rows)
                for delivery in map(_delivery, rows):
                    if owner is None or self._leases.may_take(delivery.address, owner):
                        found.append(delivery)
                if len(rows) < limit:
                    break
        return found[:limit]

    # -- leases (in memory: one host uses this store) --------------------------------------

    def acquire_lease(self, address: AgentAddress, owner: str, ttl_s: float) -> Lease:
        """Take (or keep) the agent's lease for ``owner``, or return its holder's."""
        self._check_open()
        return self._leases.acquire(address, owner, ttl_s)

    def renew_leases(
        self, owner: str, url: str | None, tokens: Mapping[AgentAddress, int], ttl_s: float
    ) -> set[AgentAddress]:
        """Extend ``owner``'s leases; the ones it no longer holds."""
        self._check_open()
        return self._leases.renew(owner, url, tokens, ttl_s)

    def release_leases(self, owner: str, tokens: Mapping[AgentAddress, int]) -> None:
        """Free ``owner``'s leases at once (tokens kept)."""
        self._leases.release(owner, tokens)

    def next_due_at(self) -> float | None:
        """When the earliest delivery is due, or None if there are none."""
        with self._reading("next_due_at", None) as conn:
            row = conn.execute("SELECT MIN(due_at) FROM deliveries").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def prune_responses(self, older_than: float) -> int:
        """Delete every idempotency record created before ``older_than``."""
        return self._submit(_PruneOp(older_than))

    def read_approvals(self, address: AgentAddress) -> list[Approval]:
        """The agent's approvals, waiting and decided, oldest first."""
        with self._reading("read_approvals", address) as conn:
            return _approvals.read_all(conn, address)

    def request_approval(self, approval: Approval) -> Approval:
        """Record an approval unless its id exists; the stored row (see the protocol)."""
        return self._submit(
            _CallOp(
                "request_approval",
                f" for {approval.address}",
                lambda conn: _approvals.insert(conn, approval),
            )
        )

    def decide_approval(
        self,
        address: AgentAddress,
        approval_id: str,
        decision: ApprovalDecision,
        *,
        at: float,
        by: str,
        note: str | None = None,
    ) -> Approval | None:
        """Decide an undecided approval; the stored row afterwards (see the protocol)."""
        return self._submit(
            _CallOp(
                "decide_approval",
                f" for {address}",
                lambda conn: _approvals.decide(conn, address, approval_id, decision, at, by, note),
            )
        )

    def prune_approvals(self, decided_before: float) -> int:
        """Delete every approval decided before ``decided_before``."""
        return self._submit(
            _CallOp("prune_approvals", "", lambda conn: _approvals.prune(conn, decided_before))
        )

    def delete_agent(self, address: AgentAddress) -> bool:
        """Delete everything held for the agent in one transaction, after every write
        queued before it. Returns whether there was anything to delete."""
        return self._submit(_DeleteOp(address))

    def fork_agent(self, source: AgentAddress, target: AgentAddress) -> ForkResult:
        """Copy ``source``'s state and kv entries to ``target`` in one transaction, after
        every write queued before it (see the protocol for the outcomes)."""
        return self._submit(_ForkOp(source, target))

    def list_agents(self, kind: str, *, after: str | None, limit: int) -> list[AgentSummary]:
        """Up to ``limit`` agents of ``kind`` whose ids sort after ``after``, by id."""
        self._check_open()
        if limit <= 0:
            return []
        query = (
            "SELECT id, state_bytes, kv_bytes, turns, created_at, updated_at FROM agents"
            " WHERE kind = ?"
        )
        params: tuple[object, ...] = (kind,)
        if after is not None:
            query += " AND id > ?"
            params += (after,)
        query += " ORDER BY id LIMIT ?"
        params += (limit,)
        with self._reading("list_agents", None) as conn:
            rows = conn.execute(query, params).fetchall()
        return [
            AgentSummary(
                id=str(agent_id),
                state_bytes=int(state_bytes),
                kv_bytes=int(kv_bytes),
                turns=int(turns),
                created_at=float(created_at),
                updated_at=float(updated_at),
            )
            for agent_id, state_bytes, kv_bytes, turns, created_at, updated_at in rows
        ]

    def export_agent(self, address: AgentAddress) -> AgentExport | None:
        """A consistent snapshot of everything held for the agent, or None if it has neither
        a record nor kv entries. (kv entries without a record, which this store never writes,
        are reported with a record of no state, 0 turns and timestamps 0.)"""
        params = (address.kind, address.id)
        with self._reading("export_agent", address) as conn:
            conn.execute("BEGIN")  # one snapshot for every read
            try:
                agent_rows = conn.execute(
                    "SELECT state, kv_bytes, turns, created_at, updated_at FROM agents"
                    " WHERE kind = ? AND id = ?",
                    params,
                ).fetchall()
                kv_rows = conn.execute(
                    "SELECT key, value FROM kv WHERE kind = ? AND id = ? ORDER BY key", params
                ).fetchall()
                responses = int(
                    conn.execute(
                        "SELECT COUNT(*) FROM idempotency WHERE kind = ? AND id = ?", params
                    ).fetchone()[0]
                )
                delivery_rows = conn.execute(
                    f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE kind = ? AND id = ?"
                    " ORDER BY due_at",
                    params,
                ).fetchall()
                dead_rows = conn.execute(
                    f"SELECT {_DEAD_LETTER_COLUMNS} FROM dead_letters WHERE kind = ? AND id = ?"
                    " ORDER BY failed_at",
                    params,
                ).fetchall()
                op_rows = conn.execute(
                    f"SELECT {_PENDING_OP_COLUMNS} FROM pending_ops WHERE kind = ? AND id = ?"
                    " ORDER BY created_at",
                    params,
                ).fetchall()
            finally:
                _schema.rollback_quietly(conn)
        if not agent_rows and not kv_rows:
            return None
        kv = {str(key): bytes(value) for key, value in kv_rows}
        if agent_rows:
            record = _record(agent_rows[0])
        else:  # kv without a record: not written by this store, but report it faithfully
            size = sum(len(key.encode()) + len(value) for key, value in kv.items())
            record = AgentRecord(state=None, kv_bytes=size, turns=0, created_at=0.0, updated_at=0.0)
        return AgentExport(
            record=record,
            kv=kv,
            responses=responses,
            deliveries=[_delivery(row) for row in delivery_rows],
            dead_letters=[_dead_letter(row) for row in dead_rows],
            pending_ops=[_pending_op(row) for row in op_rows],
        )

    def count_agents(self, kind: str | None = None) -> int:
        """Number of agents with committed turns (of one kind, or all)."""
        return self._aggregate("count_agents", "COUNT(*)", kind)

    def stored_bytes(self, kind: str | None = None) -> int:
        """Bytes of state and kv held for agents (of one kind, or all)."""
        return self._aggregate("stored_bytes", "COALESCE(SUM(state_bytes + kv_bytes), 0)", kind)

    def _aggregate(self, operation: str, expression: str, kind: str | None) -> int:
        with self._reading(operation, None) as conn:
            if kind is None:
                rows = conn.execute(f"SELECT {expression} FROM agents").fetchall()
            else:
                rows = conn.execute(
                    f"SELECT {expression} FROM agents WHERE kind = ?", (kind,)
                ).fetchall()
        return int(rows[0][0])

    # -- group commit ----------------------------------------------------------------------

    def _submit(self, op: _WriteOp[_T]) -> _T:
        """Queue one write and write it (or wait for the thread writing it), blocking."""
        pending = self._enqueue(op)
        with self._writer_lock:
            self._write_locked(pending)
        return self._outcome(pending)

    def _enqueue(self, op: _WriteOp[_T]) -> _Pending[_T]:
        pending = _Pending(op)
        with self._queue_lock:
            if self._closing:
                raise StorageError(_CLOSED)
            self._queue.append(pending)
        return pending

    def _write_queue_locked(self) -> None:
        """With the writer lock held: write batches until the queue is empty."""
        while batch := self._take_batch():
            self._write_batch(batch)

    def _write_locked(self, pending: _Pending[Any]) -> None:
        """With the writer lock held: write batches of what is queued until ``pending`` is
        (unless the previous holder of the lock wrote it already)."""
        while not pending.done:
            self._write_batch(self._take_batch())

    def _write_batch(self, batch: list[_Pending[Any]]) -> None:
        """With the writer lock held: write one batch, filling in each write's outcome."""
        try:
            self._write_sync(batch)
        except Exception as exc:  # a bug in the write path: fail the batch only
            for item in batch:
                item.error = StorageError(
                    f"{item.op.name} failed{item.op.subject()} in {self._path}: {exc!r}"
                )
        finally:
            for item in batch:
                item.done = True

    def _take_batch(self) -> list[_Pending[Any]]:
        with self._queue_lock:
            count = min(len(self._queue), _MAX_BATCH)
            return [self._queue.popleft() for _ in range(count)]

    @staticmethod
    def _outcome(pending: _Pending[_T]) -> _T:
        if pending.error is not None:
            raise pending.error
        return cast(_T, pending.result)

    def _write_sync(self, batch: Sequence[_Pending[Any]]) -> None:
        """One transaction for the batch; if it fails, one per write. Fills in each write's
        result or error."""
        try:
            results = self._transaction([pending.op for pending in batch])
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = self._op_error(batch[0].op, exc)
                return
        else:
            for pending, result in zip(batch, results, strict=True):
                pending.result = result
            return
        for pending in batch:
            try:
                [pending.result] = self._transaction([pending.op])
            except Exception as exc:
                pending.error = self._op_error(pending.op, exc)

    def _transaction(self, ops: Sequence[_WriteOp[Any]]) -> list[Any]:
        conn = self._writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            results = [op.apply(conn) for op in ops]
            conn.execute("COMMIT")
        except BaseException:
            _schema.rollback_quietly(conn)
            raise
        self._batches += 1
        self._commits += sum(op.turn_commits() for op in ops)
        return results

    def _op_error(self, op: _WriteOp[Any], exc: Exception) -> StorageError:
        if isinstance(exc, StorageError):  # already says what failed (AlreadyHandled)
            return exc
        error = StorageError(f"{op.name} failed{op.subject()} in {self._path}: {exc}")
        error.__cause__ = exc
        return error


def _record(row: tuple[Any, ...]) -> AgentRecord:
    state, kv_bytes, turns, created_at, updated_at = row
    return AgentRecord(
        state=None if state is None else bytes(state),
        kv_bytes=int(kv_bytes),
        turns=int(turns),
        created_at=float(created_at),
        updated_at=float(updated_at),
    )


@asynccontextmanager
async def open_sqlite_store(
    path: str | os.PathLike[str],
    *,
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
) -> AsyncIterator[SqliteStore]:
    """Open (creating it and its parent directories if needed) the store at ``path``, and close
    it (after writing whatever was queued) on exit.

    ``synchronous="NORMAL"`` makes committed turns survive a process kill; ``"FULL"`` also
    makes them survive power loss (one fsync per group commit).
    """
    if synchronous not in ("NORMAL", "FULL"):
        raise ConfigError(f"invalid synchronous mode {synchronous!r}: use 'NORMAL' or 'FULL'")
    db_path, writer = await trio.to_thread.run_sync(_open_writer, path, synchronous)
    store = SqliteStore(db_path, writer, synchronous)
    try:
        yield store
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(store.close)
