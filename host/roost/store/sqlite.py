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
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar, cast

import trio

from ..address import AgentAddress
from ..errors import ConfigError, StorageError
from . import _schema, _sql
from ._leases import MemoryLeases
from ._sql_store import CLOSED, SqlStore, about
from .protocol import Commit, Delivery, Lease, PendingOp

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
        return about(self.commit.address)


class _CallOp(_WriteOp[_T]):
    """A write given as a function of the writer's connection: every write but a commit
    (erase, fork, prunes, approvals)."""

    __slots__ = ("_apply", "_subject", "name")

    def __init__(self, name: str, subject: str, apply: Callable[[sqlite3.Connection], _T]) -> None:
        self.name = name  # type: ignore[misc]
        self._subject = subject
        self._apply = apply

    def apply(self, conn: sqlite3.Connection) -> _T:
        return self._apply(conn)

    def subject(self) -> str:
        return self._subject


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


def _apply_commit(conn: sqlite3.Connection, commit: Commit) -> None:
    """Write one commit inside the caller's transaction."""
    for write in _sql.commit_writes(commit, _sql.TEXT_KEYS):
        cursor = conn.executemany(write.sql, write.rows)
        _sql.check_write(commit, write.check, cursor.rowcount)


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
                raise StorageError(CLOSED)
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
        return StorageError(
            f"{self._operation} failed{about(self._address)} in {self._path}: {exc}"
        )


class SqliteStore(SqlStore):
    """A :class:`~roost.store.protocol.StateStore` on one SQLite file.

    Create it with :func:`open_sqlite_store`.
    """

    _keys = _sql.TEXT_KEYS

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
            raise StorageError(CLOSED)

    # -- the hooks of SqlStore: reads on borrowed connections, writes through the queue -----

    def _reading(self, operation: str, address: AgentAddress | None) -> _Reading:
        self._check_open()
        return _Reading(self._readers, operation, address, self._path)

    def _rows(
        self, operation: str, address: AgentAddress | None, sql: str, params: Sequence[object]
    ) -> list[Any]:
        with self._reading(operation, address) as conn:
            return conn.execute(sql, params).fetchall()

    @contextmanager
    def _snapshot(self, operation: str, address: AgentAddress) -> Iterator[sqlite3.Connection]:
        with self._reading(operation, address) as conn:
            conn.execute("BEGIN")  # one snapshot for every read
            try:
                yield conn
            finally:
                _schema.rollback_quietly(conn)

    def _write(self, operation: str, subject: str, work: Callable[[_sql.Connection], _T]) -> _T:
        """Queue ``work`` as one write of the group commit."""
        return self._submit(_CallOp(operation, subject, work))

    # -- the turn side ---------------------------------------------------------------------

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
                    raise StorageError(CLOSED)
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

    def pending_ops(self, limit: int, *, owner: str | None = None) -> list[PendingOp]:
        """Continuation-form ops in flight, oldest first (with ``owner``: of agents whose
        lease it holds or could take)."""
        if limit <= 0:
            return []
        rows = self._rows(
            "pending_ops",
            None,
            f"SELECT {_sql.PENDING_OP_COLUMNS} FROM pending_ops p ORDER BY p.created_at LIMIT ?",
            (int(limit) if owner is None else -1,),
        )
        ops = [_sql.pending_op(row) for row in rows]
        if owner is not None:
            ops = [op for op in ops if self._leases.may_take(op.address, owner)][:limit]
        return ops

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
                    f"SELECT {_sql.DELIVERY_COLUMNS} FROM deliveries d WHERE d.due_at <= ?"
                    " ORDER BY d.due_at LIMIT ? OFFSET ?",
                    (float(now), int(limit), offset),
                ).fetchall()
                offset += len(rows)
                for delivery in map(_sql.delivery, rows):
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
                raise StorageError(CLOSED)
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
