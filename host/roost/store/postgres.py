"""The shared state store: PostgreSQL, for several hosts on one database.

Connections come from a psycopg pool (``psycopg_pool``); every method borrows one for its
call. A commit is one transaction whose statements are sent in one pipeline (one round trip
for the lot, however many kv writes and deliveries it carries), with the lease check first:
``SELECT ... FROM leases ... FOR SHARE`` on the agent's row, so a takeover of the lease waits
for the commit, and a commit after a takeover finds another token and writes nothing
(LeaseLost). Transactions that deadlock or fail to serialize are retried.

Durability is PostgreSQL's: a commit returns once its transaction is committed with the
server's ``synchronous_commit`` (on by default: flushed to its WAL).

Leases and host announcements live in the ``leases`` and ``hosts`` tables, timed by the
database's clock (``clock_timestamp()``), so the hosts' clocks need not agree.

``schema`` puts every table in that PostgreSQL schema (created if needed); the tests give
each store its own. Open it with :func:`open_postgres_store`.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from ..address import AgentAddress
from ..errors import ConfigError, LeaseLost, StorageError
from . import _pg_schema, _sql
from ._sql_store import CLOSED, SqlStore, about
from .protocol import Commit, Delivery, Lease, PendingOp, owner_host

__all__ = ["PostgresStore", "PostgresStoreStatistics", "open_postgres_store"]

_T = TypeVar("_T")
_RETRIES = 5
"""Attempts at a transaction that deadlocked or failed to serialize."""
_RETRY_STATES = {"40001", "40P01"}
_NOW = "extract(epoch from clock_timestamp())"
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

_MAY_TAKE = (
    "(l.owner IS NULL OR l.owner = '' OR l.owner = %(owner)s"
    f" OR l.expires_at <= {_NOW} OR split_part(l.owner, '/', 1) = %(host)s)"
)
"""Rows (joined to their agent's lease ``l``) whose lease ``owner`` holds or could take."""
_FENCE = (
    "SELECT 1 FROM leases WHERE kind = %s AND id = %s AND token = %s"
    f" AND owner <> '' AND expires_at > {_NOW} FOR SHARE"
)
"""The lease a commit's fence names, if it is held and has not expired (held until the
commit's transaction ends, so a takeover waits for it)."""


@dataclass(frozen=True, slots=True)
class PostgresStoreStatistics:
    """Counters of one open :class:`PostgresStore`."""

    commits: int
    """Turn commits written (bookkeeping commits not counted)."""
    transactions: int
    """Write transactions committed."""
    retries: int
    """Transactions run again after a deadlock or a serialization failure."""
    where: str
    """The database (its URL without the password) and schema."""


class PostgresStore(SqlStore):
    """A :class:`~roost.store.protocol.StateStore` on a PostgreSQL database, shared by any
    number of hosts. Create it with :func:`open_postgres_store`."""

    _keys = _sql.UTF8_KEYS

    def __init__(self, pool: Any, where: str) -> None:
        self._pool = pool
        self._where = where
        self._lock = threading.Lock()
        self._closed = False
        self._commits = 0
        self._transactions = 0
        self._retries = 0

    @property
    def shared(self) -> bool:
        """Several hosts may use one PostgreSQL store: leases are in the database."""
        return True

    def close(self) -> None:
        """Close every connection (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._pool.close()

    def statistics(self) -> PostgresStoreStatistics:
        return PostgresStoreStatistics(
            commits=self._commits,
            transactions=self._transactions,
            retries=self._retries,
            where=self._where,
        )

    # -- plumbing ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(CLOSED)

    @contextmanager
    def _conn(self, operation: str, subject: str) -> Iterator[Any]:
        """A pooled connection (autocommit); psycopg errors come out as StorageError."""
        import psycopg

        self._check_open()
        try:
            with self._pool.connection() as conn:
                yield conn
        except StorageError:
            raise
        except psycopg.Error as exc:
            raise self._error(operation, subject, exc) from exc
        except Exception as exc:  # the pool's own errors (timeouts, closed)
            if type(exc).__module__.startswith("psycopg_pool"):
                raise self._error(operation, subject, exc) from exc
            raise

    def _error(self, operation: str, subject: str, exc: BaseException) -> StorageError:
        return StorageError(f"{operation} failed{subject} in {self._where}: {exc}")

    def _transact(self, operation: str, subject: str, work: Callable[[Any], _T]) -> _T:
        """Run ``work(conn)`` in one transaction, again if it deadlocked or did not
        serialize."""
        import psycopg

        for attempt in range(_RETRIES):
            try:
                with self._conn(operation, subject) as conn, conn.transaction():
                    result = work(conn)
            except StorageError as exc:
                cause = exc.__cause__
                if (
                    isinstance(cause, psycopg.Error)
                    and cause.sqlstate in _RETRY_STATES
                    and attempt + 1 < _RETRIES
                ):
                    self._retries += 1
                    time.sleep(0.001 * 2**attempt)
                    continue
                raise
            self._transactions += 1
            return result
        raise AssertionError("unreachable")

    def _read(self, operation: str, sql: str, params: Any) -> list[Any]:
        with self._conn(operation, "") as conn:
            return list(conn.execute(sql, params).fetchall())

    # -- the hooks of SqlStore: the shared SQL, its ``?`` marks made ``%s`` -----------------

    def _rows(
        self, operation: str, address: AgentAddress | None, sql: str, params: Sequence[object]
    ) -> list[Any]:
        with self._conn(operation, about(address)) as conn:
            return list(conn.execute(_sql.pyformat(sql), params).fetchall())

    @contextmanager
    def _snapshot(self, operation: str, address: AgentAddress) -> Iterator[_sql.Connection]:
        with self._conn(operation, about(address)) as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield _Pyformat(conn)

    def _write(self, operation: str, subject: str, work: Callable[[_sql.Connection], _T]) -> _T:
        return self._transact(operation, subject, lambda conn: work(_Pyformat(conn)))

    def _lock_agent(self, conn: _sql.Connection, address: AgentAddress) -> None:
        """Hold the agent's record (if any) until the transaction ends, so that commits of
        the agent wait for this erase or fork."""
        conn.execute(
            "SELECT 1 FROM agents WHERE kind = ? AND id = ? FOR UPDATE", (address.kind, address.id)
        )

    # -- commits, and what hosts may deliver -------------------------------------------------

    def commit(self, commit: Commit, *, wait: bool = True) -> bool:
        """Apply one commit in one transaction. Every write waits on the network, so
        ``wait=False`` writes nothing and returns False (the async adapter then commits on a
        worker thread)."""
        if not wait:
            self._check_open()
            return False
        try:
            writes = _sql.commit_writes(commit, self._keys)  # checks every value before writing
            self._transact(
                "commit", about(commit.address), lambda conn: _run_commit(conn, commit, writes)
            )
        except (TypeError, ValueError) as exc:
            raise StorageError(
                f"commit failed for {commit.address} in {self._where}: {exc}"
            ) from exc
        if commit.turn:
            self._commits += 1
        return True

    def pending_ops(self, limit: int, *, owner: str | None = None) -> list[PendingOp]:
        if limit <= 0:
            return []
        if owner is None:
            sql = (
                f"SELECT {_sql.PENDING_OP_COLUMNS} FROM pending_ops p"
                " ORDER BY p.created_at LIMIT %(limit)s"
            )
        else:
            sql = (
                f"SELECT {_sql.PENDING_OP_COLUMNS} FROM pending_ops p LEFT JOIN leases l"
                f" ON l.kind = p.kind AND l.id = p.id WHERE {_MAY_TAKE}"
                " ORDER BY p.created_at LIMIT %(limit)s"
            )
        params = {"limit": int(limit), "owner": owner, "host": owner_host(owner or "")}
        return [_sql.pending_op(row) for row in self._read("pending_ops", sql, params)]

    def due_deliveries(self, now: float, limit: int, *, owner: str | None = None) -> list[Delivery]:
        if limit <= 0:
            return []
        if owner is None:
            sql = (
                f"SELECT {_sql.DELIVERY_COLUMNS} FROM deliveries d WHERE d.due_at <= %(now)s"
                " ORDER BY d.due_at LIMIT %(limit)s"
            )
        else:
            sql = (
                f"SELECT {_sql.DELIVERY_COLUMNS} FROM deliveries d LEFT JOIN leases l"
                " ON l.kind = d.kind AND l.id = d.id"
                f" WHERE d.due_at <= %(now)s AND {_MAY_TAKE}"
                " ORDER BY d.due_at LIMIT %(limit)s"
            )
        params = {
            "now": float(now),
            "limit": int(limit),
            "owner": owner,
            "host": owner_host(owner or ""),
        }
        return [_sql.delivery(row) for row in self._read("due_deliveries", sql, params)]

    # -- leases ------------------------------------------------------------------------------

    def acquire_lease(self, address: AgentAddress, owner: str, ttl_s: float) -> Lease:
        """Take (or keep) the agent's lease for ``owner``, or return its holder's."""

        def work(conn: Any) -> Lease:
            row = conn.execute(
                "INSERT INTO leases AS l (kind, id, owner, token, expires_at)"
                f" VALUES (%(kind)s, %(id)s, %(owner)s, 1, {_NOW} + %(ttl)s)"
                " ON CONFLICT (kind, id) DO UPDATE SET owner = EXCLUDED.owner,"
                f" token = CASE WHEN l.owner = EXCLUDED.owner AND l.expires_at > {_NOW}"
                " THEN l.token ELSE l.token + 1 END, expires_at = EXCLUDED.expires_at"
                f" WHERE {_MAY_TAKE} RETURNING l.token, l.expires_at",
                {
                    "kind": address.kind,
                    "id": address.id,
                    "owner": owner,
                    "host": owner_host(owner),
                    "ttl": float(ttl_s),
                },
            ).fetchone()
            if row is not None:
                return Lease(address, owner, int(row[0]), float(row[1]))
            held = conn.execute(
                "SELECT l.owner, l.token, l.expires_at, h.url FROM leases l"
                " LEFT JOIN hosts h ON h.owner = l.owner WHERE l.kind = %s AND l.id = %s",
                (address.kind, address.id),
            ).fetchone()
            return Lease(address, str(held[0]), int(held[1]), float(held[2]), held[3])

        return self._transact("acquire_lease", about(address), work)

    def renew_leases(
        self, owner: str, url: str | None, tokens: Mapping[AgentAddress, int], ttl_s: float
    ) -> set[AgentAddress]:
        """Extend ``owner``'s leases and announce it; the ones it no longer holds."""
        items = list(tokens.items())

        def work(conn: Any) -> set[AgentAddress]:
            conn.execute(
                f"INSERT INTO hosts (owner, url, expires_at) VALUES (%s, %s, {_NOW} + %s)"
                " ON CONFLICT (owner) DO UPDATE SET url = EXCLUDED.url,"
                " expires_at = EXCLUDED.expires_at",
                (owner, url, float(ttl_s)),
            )
            conn.execute(f"DELETE FROM hosts WHERE expires_at < {_NOW} - 3600")
            if not items:
                return set()
            rows = conn.execute(
                f"UPDATE leases AS l SET expires_at = {_NOW} + %s"
                " FROM unnest(%s::text[], %s::text[], %s::bigint[]) AS r(kind, id, token)"
                " WHERE l.kind = r.kind AND l.id = r.id AND l.token = r.token"
                f" AND l.owner = %s AND l.expires_at > {_NOW} RETURNING l.kind, l.id",
                (
                    float(ttl_s),
                    [a.kind for a, _ in items],
                    [a.id for a, _ in items],
                    [t for _, t in items],
                    owner,
                ),
            ).fetchall()
            renewed = {AgentAddress(str(k), str(i)) for k, i in rows}
            return {address for address, _ in items if address not in renewed}

        return self._transact("renew_leases", "", work)

    def release_leases(self, owner: str, tokens: Mapping[AgentAddress, int]) -> None:
        """Free ``owner``'s leases at once (tokens kept)."""
        items = list(tokens.items())
        if not items:
            return

        def work(conn: Any) -> None:
            conn.execute(
                f"UPDATE leases AS l SET owner = '', expires_at = {_NOW}"
                " FROM unnest(%s::text[], %s::text[], %s::bigint[]) AS r(kind, id, token)"
                " WHERE l.kind = r.kind AND l.id = r.id AND l.token = r.token"
                " AND l.owner = %s",
                (
                    [a.kind for a, _ in items],
                    [a.id for a, _ in items],
                    [t for _, t in items],
                    owner,
                ),
            )

        self._transact("release_leases", "", work)


# -- transactions ------------------------------------------------------------------------------


class _Pyformat:
    """A psycopg connection that takes the shared SQL, its parameters marked ``?``."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Any:
        return self._conn.execute(_sql.pyformat(sql), params)


def _run_commit(conn: Any, commit: Commit, writes: Sequence[_sql.Write]) -> None:
    """Send a commit's statements in one pipeline (inside the caller's transaction), the
    lease check first, and check what they did; raising rolls the transaction back."""
    address = commit.address
    with conn.pipeline() as pipeline:
        fence = None
        if commit.fence is not None:
            fence = conn.execute(_FENCE, (address.kind, address.id, int(commit.fence)))
        cursors = [
            (conn.execute(_sql.pyformat(write.sql), row), write.check)
            for write in writes
            for row in write.rows
        ]
        pipeline.sync()
    if fence is not None and fence.fetchone() is None:
        raise LeaseLost(
            f"the lease on {address} (token {commit.fence}) is no longer held;"
            " nothing was committed"
        )
    for cursor, check in cursors:
        _sql.check_write(commit, check, cursor.rowcount)


# -- opening -------------------------------------------------------------------------------


def redact(url: str) -> str:
    """``url`` without its password, for messages."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def _open(url: str, schema: str | None, min_size: int, max_size: int) -> PostgresStore:
    try:
        import psycopg
        from psycopg_pool import ConnectionPool
    except ImportError as exc:  # pragma: no cover - a dependency of roost
        raise ConfigError(f"the PostgreSQL store needs psycopg and psycopg_pool: {exc}") from None
    where = redact(url) + (f" (schema {schema})" if schema else "")
    kwargs: dict[str, Any] = {"autocommit": True}
    if schema is not None:
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        except psycopg.Error as exc:
            raise StorageError(f"opening database {where} failed: {exc}") from exc
        kwargs["options"] = f"-c search_path={schema}"
    pool = ConnectionPool(
        url, min_size=min_size, max_size=max_size, kwargs=kwargs, open=False, name="roost"
    )
    try:
        pool.open(wait=True, timeout=30)
    except Exception as exc:
        pool.close()
        raise StorageError(f"opening database {where} failed: {exc}") from exc
    try:
        with pool.connection() as conn:
            conn.autocommit = False
            try:
                _pg_schema.migrate(conn, where)
            finally:
                conn.autocommit = True
    except BaseException:
        pool.close()
        raise
    return PostgresStore(pool, where)


@asynccontextmanager
async def open_postgres_store(
    url: str,
    *,
    schema: str | None = None,
    min_connections: int = 2,
    max_connections: int = 16,
) -> AsyncIterator[PostgresStore]:
    """Open the store in the database at ``url`` (``postgresql://USER:PASS@HOST:PORT/DB``),
    applying migrations, and close its connections on exit. ``schema`` keeps its tables in
    that schema (lowercase letters, digits and ``_``; created if needed)."""
    if schema is not None and not _SCHEMA_NAME.match(schema):
        raise ConfigError(f"invalid schema name {schema!r}: lowercase letters, digits and _")
    if not (url.startswith("postgresql://") or url.startswith("postgres://")):
        raise ConfigError(f"not a PostgreSQL URL: {redact(url)!r} (postgresql://...)")
    store = await trio.to_thread.run_sync(_open, url, schema, min_connections, max_connections)
    try:
        yield store
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(store.close)
