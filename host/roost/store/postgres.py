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
from ..errors import AlreadyHandled, ConfigError, LeaseLost, StorageError
from . import _pg_schema
from .protocol import (
    AgentExport,
    AgentRecord,
    AgentSummary,
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
    owner_host,
)

__all__ = ["PostgresStore", "PostgresStoreStatistics", "open_postgres_store"]

_T = TypeVar("_T")
_RETRIES = 5
"""Attempts at a transaction that deadlocked or failed to serialize."""
_RETRY_STATES = {"40001", "40P01"}
_NOW = "extract(epoch from clock_timestamp())"
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_CLOSED = "store is closed"

_TABLES = (
    "agents",
    "kv",
    "idempotency",
    "deliveries",
    "usage",
    "journal",
    "pending_ops",
    "dead_letters",
)
"""Every table that holds rows of one agent, keyed by (kind, id) (leases are not agent data:
their tokens must outlive an erase)."""

_DELIVERY_COLUMNS = (
    "d.kind, d.id, d.delivery_id, d.due_at, d.event_kind, d.payload, d.every_s, d.catch_up,"
    " d.idempotency_key, d.attempts, d.last_error"
)
_DEAD_LETTER_COLUMNS = "kind, id, delivery_id, event_kind, payload, attempts, last_error, failed_at"
_PENDING_OP_COLUMNS = "p.kind, p.id, p.op_key, p.capability, p.call, p.request, p.handler, p.tag"
_MAY_TAKE = (
    "(l.owner IS NULL OR l.owner = '' OR l.owner = %(owner)s"
    f" OR l.expires_at <= {_NOW} OR split_part(l.owner, '/', 1) = %(host)s)"
)
"""Rows (joined to their agent's lease ``l``) whose lease ``owner`` holds or could take."""


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


class PostgresStore:
    """A :class:`~roost.store.protocol.StateStore` on a PostgreSQL database, shared by any
    number of hosts. Create it with :func:`open_postgres_store`."""

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

    @contextmanager
    def _conn(self, operation: str, address: AgentAddress | None) -> Iterator[Any]:
        """A pooled connection (autocommit); psycopg errors come out as StorageError."""
        import psycopg

        if self._closed:
            raise StorageError(_CLOSED)
        try:
            with self._pool.connection() as conn:
                yield conn
        except StorageError:
            raise
        except psycopg.Error as exc:
            raise self._error(operation, address, exc) from exc
        except Exception as exc:  # the pool's own errors (timeouts, closed)
            if type(exc).__module__.startswith("psycopg_pool"):
                raise self._error(operation, address, exc) from exc
            raise

    def _error(
        self, operation: str, address: AgentAddress | None, exc: BaseException
    ) -> StorageError:
        subject = f" for {address}" if address is not None else ""
        return StorageError(f"{operation} failed{subject} in {self._where}: {exc}")

    def _write(self, operation: str, address: AgentAddress | None, work: Callable[[Any], _T]) -> _T:
        """Run ``work(conn)`` in one transaction, again if it deadlocked or did not
        serialize."""
        import psycopg

        for attempt in range(_RETRIES):
            try:
                with self._conn(operation, address) as conn, conn.transaction():
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

    def _read(
        self, operation: str, address: AgentAddress | None, sql: str, params: Any
    ) -> list[Any]:
        with self._conn(operation, address) as conn:
            return list(conn.execute(sql, params).fetchall())

    # -- the turn side -----------------------------------------------------------------------

    def read_agent(self, address: AgentAddress) -> AgentRecord | None:
        rows = self._read(
            "read_agent",
            address,
            "SELECT state, kv_bytes, turns, created_at, updated_at FROM agents"
            " WHERE kind = %s AND id = %s",
            (address.kind, address.id),
        )
        return _record(rows[0]) if rows else None

    def read_kv(self, address: AgentAddress, key: str) -> bytes | None:
        rows = self._read(
            "read_kv",
            address,
            "SELECT value FROM kv WHERE kind = %s AND id = %s AND key = %s",
            (address.kind, address.id, _key(key)),
        )
        return bytes(rows[0][0]) if rows else None

    def read_kv_keys(self, address: AgentAddress, prefix: str, limit: int) -> list[str]:
        if self._closed:
            raise StorageError(_CLOSED)
        if limit <= 0:
            return []
        low = _key(prefix)
        high = _bytes_upper_bound(low)
        sql = "SELECT key FROM kv WHERE kind = %s AND id = %s AND key >= %s"
        params: tuple[object, ...] = (address.kind, address.id, low)
        if high is not None:
            sql += " AND key < %s"
            params += (high,)
        sql += " ORDER BY key LIMIT %s"
        params += (int(limit),)
        rows = self._read("read_kv_keys", address, sql, params)
        return [bytes(row[0]).decode("utf-8") for row in rows]

    def read_usage(self, address: AgentAddress, day: str) -> Usage:
        rows = self._read(
            "read_usage",
            address,
            "SELECT llm_input_tokens, llm_output_tokens, http_calls, cpu_ms, turns, errors"
            " FROM usage WHERE kind = %s AND id = %s AND day = %s",
            (address.kind, address.id, day),
        )
        if not rows:
            return Usage()
        r = rows[0]
        return Usage(int(r[0]), int(r[1]), int(r[2]), float(r[3]), int(r[4]), int(r[5]))

    def read_deliveries(self, address: AgentAddress) -> list[Delivery]:
        rows = self._read(
            "read_deliveries",
            address,
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries d WHERE d.kind = %s AND d.id = %s"
            " ORDER BY d.due_at, d.delivery_id",
            (address.kind, address.id),
        )
        return [_delivery(row) for row in rows]

    def read_journal(self, address: AgentAddress, message_id: str) -> list[JournalEntry]:
        rows = self._read(
            "read_journal",
            address,
            "SELECT message_id, seq, capability, call, request_sha, ok, value FROM journal"
            " WHERE kind = %s AND id = %s AND message_id = %s ORDER BY seq",
            (address.kind, address.id, message_id),
        )
        return [
            JournalEntry(str(m), int(s), str(c), str(f), str(r), bool(ok), bytes(v))
            for m, s, c, f, r, ok, v in rows
        ]

    def commit(self, commit: Commit, *, wait: bool = True) -> bool:
        """Apply one commit in one transaction. Every write waits on the network, so
        ``wait=False`` writes nothing and returns False (the async adapter then commits on a
        worker thread)."""
        if not wait:
            if self._closed:
                raise StorageError(_CLOSED)
            return False
        try:
            statements = _commit_statements(commit)  # checks every value before writing
        except (TypeError, ValueError) as exc:
            raise StorageError(
                f"commit failed for {commit.address} in {self._where}: {exc}"
            ) from exc

        def work(conn: Any) -> None:
            _run_commit(conn, commit, statements)

        self._write("commit", commit.address, work)
        if commit.turn:
            self._commits += 1
        return True

    # -- the admin side ----------------------------------------------------------------------

    def read_response(self, address: AgentAddress, key: str) -> IdempotencyRecord | None:
        rows = self._read(
            "read_response",
            address,
            "SELECT response, request_sha FROM idempotency WHERE kind = %s AND id = %s"
            " AND key = %s",
            (address.kind, address.id, key),
        )
        if not rows:
            return None
        response, request_sha = rows[0]
        return IdempotencyRecord(bytes(response), None if request_sha is None else str(request_sha))

    def pending_ops(self, limit: int, *, owner: str | None = None) -> list[PendingOp]:
        if limit <= 0:
            return []
        if owner is None:
            sql = (
                f"SELECT {_PENDING_OP_COLUMNS} FROM pending_ops p"
                " ORDER BY p.created_at LIMIT %(limit)s"
            )
        else:
            sql = (
                f"SELECT {_PENDING_OP_COLUMNS} FROM pending_ops p LEFT JOIN leases l"
                f" ON l.kind = p.kind AND l.id = p.id WHERE {_MAY_TAKE}"
                " ORDER BY p.created_at LIMIT %(limit)s"
            )
        params = {"limit": int(limit), "owner": owner, "host": owner_host(owner or "")}
        return [_pending_op(row) for row in self._read("pending_ops", None, sql, params)]

    def read_dead_letters(self, address: AgentAddress) -> list[DeadLetter]:
        rows = self._read(
            "read_dead_letters",
            address,
            f"SELECT {_DEAD_LETTER_COLUMNS} FROM dead_letters WHERE kind = %s AND id = %s"
            " ORDER BY failed_at, delivery_id",
            (address.kind, address.id),
        )
        return [_dead_letter(row) for row in rows]

    def count_dead_letters(self, kind: str | None = None) -> dict[str, int]:
        if kind is None:
            rows = self._read(
                "count_dead_letters",
                None,
                "SELECT kind, COUNT(*) FROM dead_letters GROUP BY kind",
                (),
            )
        else:
            rows = self._read(
                "count_dead_letters",
                None,
                "SELECT kind, COUNT(*) FROM dead_letters WHERE kind = %s GROUP BY kind",
                (kind,),
            )
        return {str(k): int(n) for k, n in rows}

    def due_deliveries(self, now: float, limit: int, *, owner: str | None = None) -> list[Delivery]:
        if limit <= 0:
            return []
        if owner is None:
            sql = (
                f"SELECT {_DELIVERY_COLUMNS} FROM deliveries d WHERE d.due_at <= %(now)s"
                " ORDER BY d.due_at LIMIT %(limit)s"
            )
        else:
            sql = (
                f"SELECT {_DELIVERY_COLUMNS} FROM deliveries d LEFT JOIN leases l"
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
        return [_delivery(row) for row in self._read("due_deliveries", None, sql, params)]

    def next_due_at(self) -> float | None:
        rows = self._read("next_due_at", None, "SELECT MIN(due_at) FROM deliveries", ())
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    def prune_responses(self, older_than: float) -> int:
        def work(conn: Any) -> int:
            cursor = conn.execute(
                "DELETE FROM idempotency WHERE created_at < %s", (float(older_than),)
            )
            return int(cursor.rowcount)

        return self._write("prune_responses", None, work)

    def delete_agent(self, address: AgentAddress) -> bool:
        def work(conn: Any) -> bool:
            _lock_agent(conn, address)
            deleted = 0
            for table in _TABLES:
                deleted += conn.execute(
                    f"DELETE FROM {table} WHERE kind = %s AND id = %s", (address.kind, address.id)
                ).rowcount
            return deleted > 0

        return self._write("delete_agent", address, work)

    def fork_agent(self, source: AgentAddress, target: AgentAddress) -> ForkResult:
        def work(conn: Any) -> ForkResult:
            _lock_agent(conn, target)
            found = conn.execute(
                "SELECT 1 FROM agents WHERE kind = %s AND id = %s", (source.kind, source.id)
            ).fetchone()
            if found is None:
                return "source_missing"
            for table in _TABLES:
                held = conn.execute(
                    f"SELECT 1 FROM {table} WHERE kind = %s AND id = %s LIMIT 1",
                    (target.kind, target.id),
                ).fetchone()
                if held is not None:
                    return "target_exists"
            now = time.time()
            conn.execute(
                "INSERT INTO agents (kind, id, state, state_bytes, kv_bytes, turns, created_at,"
                " updated_at) SELECT %s, %s, state, state_bytes, kv_bytes, 0, %s, %s FROM agents"
                " WHERE kind = %s AND id = %s",
                (target.kind, target.id, now, now, source.kind, source.id),
            )
            conn.execute(
                "INSERT INTO kv (kind, id, key, value) SELECT %s, %s, key, value FROM kv"
                " WHERE kind = %s AND id = %s",
                (target.kind, target.id, source.kind, source.id),
            )
            return "forked"

        return self._write("fork_agent", target, work)

    def list_agents(self, kind: str, *, after: str | None, limit: int) -> list[AgentSummary]:
        if self._closed:
            raise StorageError(_CLOSED)
        if limit <= 0:
            return []
        sql = (
            "SELECT id, state_bytes, kv_bytes, turns, created_at, updated_at FROM agents"
            " WHERE kind = %s"
        )
        params: tuple[object, ...] = (kind,)
        if after is not None:
            sql += " AND id > %s"
            params += (after,)
        sql += " ORDER BY id LIMIT %s"
        params += (int(limit),)
        rows = self._read("list_agents", None, sql, params)
        return [
            AgentSummary(str(i), int(sb), int(kb), int(t), float(c), float(u))
            for i, sb, kb, t, c, u in rows
        ]

    def export_agent(self, address: AgentAddress) -> AgentExport | None:
        params = (address.kind, address.id)
        with self._conn("export_agent", address) as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            agent_rows = conn.execute(
                "SELECT state, kv_bytes, turns, created_at, updated_at FROM agents"
                " WHERE kind = %s AND id = %s",
                params,
            ).fetchall()
            kv_rows = conn.execute(
                "SELECT key, value FROM kv WHERE kind = %s AND id = %s ORDER BY key", params
            ).fetchall()
            responses = int(
                conn.execute(
                    "SELECT COUNT(*) FROM idempotency WHERE kind = %s AND id = %s", params
                ).fetchone()[0]
            )
            delivery_rows = conn.execute(
                f"SELECT {_DELIVERY_COLUMNS} FROM deliveries d WHERE d.kind = %s AND d.id = %s"
                " ORDER BY d.due_at, d.delivery_id",
                params,
            ).fetchall()
            dead_rows = conn.execute(
                f"SELECT {_DEAD_LETTER_COLUMNS} FROM dead_letters WHERE kind = %s AND id = %s"
                " ORDER BY failed_at, delivery_id",
                params,
            ).fetchall()
            op_rows = conn.execute(
                f"SELECT {_PENDING_OP_COLUMNS} FROM pending_ops p WHERE p.kind = %s"
                " AND p.id = %s ORDER BY p.created_at, p.op_key",
                params,
            ).fetchall()
        if not agent_rows and not kv_rows:
            return None
        kv = {bytes(key).decode("utf-8"): bytes(value) for key, value in kv_rows}
        if agent_rows:
            record = _record(agent_rows[0])
        else:
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
        return self._aggregate("count_agents", "COUNT(*)", kind)

    def stored_bytes(self, kind: str | None = None) -> int:
        return self._aggregate("stored_bytes", "COALESCE(SUM(state_bytes + kv_bytes), 0)", kind)

    def _aggregate(self, operation: str, expression: str, kind: str | None) -> int:
        if kind is None:
            rows = self._read(operation, None, f"SELECT {expression} FROM agents", ())
        else:
            rows = self._read(
                operation, None, f"SELECT {expression} FROM agents WHERE kind = %s", (kind,)
            )
        return int(rows[0][0])

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

        return self._write("acquire_lease", address, work)

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

        return self._write("renew_leases", None, work)

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

        self._write("release_leases", None, work)


# -- a commit's statements -----------------------------------------------------------------


def _key(key: object) -> bytes:
    if not isinstance(key, str):
        raise TypeError(f"kv key must be str, not {type(key).__name__}")
    return key.encode("utf-8")


def _bytes(value: object, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}")
    return value


def _bytes_upper_bound(prefix: bytes) -> bytes | None:
    """The least byte string greater than every string starting with ``prefix``."""
    data = bytearray(prefix)
    while data:
        if data[-1] < 0xFF:
            data[-1] += 1
            return bytes(data)
        data.pop()
    return None


Statement = tuple[str, Any, str]
"""SQL, its parameters, and what its result must show (``""``: nothing; ``"lease"``: a row;
``"handled"``: one row changed; ``"key"``: one row inserted)."""


def _commit_statements(commit: Commit) -> list[Statement]:
    """The statements of one commit, every value checked first (TypeError, ValueError)."""
    if not commit.turn and (
        commit.state is not None or commit.kv_writes or commit.idempotency_key is not None
    ):
        raise ValueError("only a turn's commit carries state, kv writes or a response")
    kind, agent_id = commit.address.kind, commit.address.id
    out: list[Statement] = []
    if commit.fence is not None:
        out.append(
            (
                "SELECT 1 FROM leases WHERE kind = %s AND id = %s AND token = %s"
                f" AND owner <> '' AND expires_at > {_NOW} FOR SHARE",
                (kind, agent_id, int(commit.fence)),
                "lease",
            )
        )
    if commit.turn:
        sets = ["turns = agents.turns + EXCLUDED.turns", "updated_at = EXCLUDED.updated_at"]
        state = commit.state
        if state is not None:
            _bytes(state, "state")
            sets += ["state = EXCLUDED.state", "state_bytes = EXCLUDED.state_bytes"]
        if commit.kv_bytes is not None:
            sets.append("kv_bytes = EXCLUDED.kv_bytes")
        out.append(
            (
                "INSERT INTO agents (kind, id, state, state_bytes, kv_bytes, turns, created_at,"
                " updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                f" ON CONFLICT (kind, id) DO UPDATE SET {', '.join(sets)}",
                (
                    kind,
                    agent_id,
                    state,
                    0 if state is None else len(state),
                    commit.kv_bytes or 0,
                    commit.turns,
                    float(commit.at),
                    float(commit.at),
                ),
                "",
            )
        )
    for key, value in commit.kv_writes.items():
        raw = _key(key)
        if value is None:
            out.append(
                (
                    "DELETE FROM kv WHERE kind = %s AND id = %s AND key = %s",
                    (kind, agent_id, raw),
                    "",
                )
            )
        else:
            out.append(
                (
                    "INSERT INTO kv (kind, id, key, value) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT (kind, id, key) DO UPDATE SET value = EXCLUDED.value",
                    (kind, agent_id, raw, _bytes(value, f"kv value of key {key!r}")),
                    "",
                )
            )
    if commit.idempotency_key is not None:
        if not isinstance(commit.idempotency_key, str):
            raise TypeError(
                f"idempotency key must be str, not {type(commit.idempotency_key).__name__}"
            )
        out.append(
            (
                "INSERT INTO idempotency (kind, id, key, response, created_at, request_sha)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (kind, id, key) DO NOTHING",
                (
                    kind,
                    agent_id,
                    commit.idempotency_key,
                    _bytes(commit.response, "response"),
                    float(commit.at),
                    commit.request_sha,
                ),
                "key",
            )
        )
    if commit.handled is not None:
        out.append(_handled_statement(commit.address, commit.handled))
    if commit.failed_delivery is not None:
        out += _failed_statements(commit.address, commit.failed_delivery, commit.at)
    for delivery_id in commit.cancelled:
        out.append(
            (
                "DELETE FROM deliveries WHERE kind = %s AND id = %s AND delivery_id = %s",
                (kind, agent_id, delivery_id),
                "",
            )
        )
    for delivery in commit.deliveries:
        out.append(
            (
                "INSERT INTO deliveries (kind, id, delivery_id, due_at, event_kind, payload,"
                " every_s, catch_up, created_at, idempotency_key, attempts, last_error)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 0, NULL)"
                " ON CONFLICT (kind, id, delivery_id) DO UPDATE SET due_at = EXCLUDED.due_at,"
                " event_kind = EXCLUDED.event_kind, payload = EXCLUDED.payload,"
                " every_s = EXCLUDED.every_s, catch_up = EXCLUDED.catch_up,"
                " idempotency_key = EXCLUDED.idempotency_key, attempts = 0, last_error = NULL",
                (
                    delivery.address.kind,
                    delivery.address.id,
                    delivery.delivery_id,
                    float(delivery.due_at),
                    delivery.event_kind,
                    _bytes(delivery.payload, "delivery payload"),
                    delivery.every_s,
                    delivery.catch_up,
                    float(commit.at),
                    delivery.idempotency_key,
                ),
                "",
            )
        )
    if commit.clear_journal is not None:
        out.append(
            (
                "DELETE FROM journal WHERE kind = %s AND id = %s AND message_id = %s",
                (kind, agent_id, commit.clear_journal),
                "",
            )
        )
    for e in commit.journal:
        out.append(
            (
                "INSERT INTO journal (kind, id, message_id, seq, capability, call, request_sha,"
                " ok, value, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (kind, id, message_id, seq) DO UPDATE SET"
                " capability = EXCLUDED.capability, call = EXCLUDED.call,"
                " request_sha = EXCLUDED.request_sha, ok = EXCLUDED.ok, value = EXCLUDED.value",
                (
                    kind,
                    agent_id,
                    e.message_id,
                    e.seq,
                    e.capability,
                    e.call,
                    e.request_sha,
                    bool(e.ok),
                    _bytes(e.value, "journal value"),
                    float(commit.at),
                ),
                "",
            )
        )
    if commit.op_finished is not None:
        out.append(
            (
                "DELETE FROM pending_ops WHERE kind = %s AND id = %s AND op_key = %s",
                (kind, agent_id, commit.op_finished),
                "",
            )
        )
    for op in commit.ops_started:
        out.append(
            (
                "INSERT INTO pending_ops (kind, id, op_key, capability, call, request, handler,"
                " tag, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    kind,
                    agent_id,
                    op.op_key,
                    op.capability,
                    op.call,
                    _bytes(op.request, "op request"),
                    op.handler,
                    _bytes(op.tag, "op tag"),
                    float(commit.at),
                ),
                "",
            )
        )
    if commit.usage is not None:
        u = commit.usage
        out.append(
            (
                "INSERT INTO usage AS u (kind, id, day, llm_input_tokens, llm_output_tokens,"
                " http_calls, cpu_ms, turns, errors) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (kind, id, day) DO UPDATE SET"
                " llm_input_tokens = u.llm_input_tokens + EXCLUDED.llm_input_tokens,"
                " llm_output_tokens = u.llm_output_tokens + EXCLUDED.llm_output_tokens,"
                " http_calls = u.http_calls + EXCLUDED.http_calls,"
                " cpu_ms = u.cpu_ms + EXCLUDED.cpu_ms, turns = u.turns + EXCLUDED.turns,"
                " errors = u.errors + EXCLUDED.errors",
                (
                    kind,
                    agent_id,
                    commit.usage_day,
                    u.llm_input_tokens,
                    u.llm_output_tokens,
                    u.http_calls,
                    float(u.cpu_ms),
                    u.turns,
                    u.errors,
                ),
                "",
            )
        )
    return out


def _handled_statement(address: AgentAddress, handled: Handled) -> Statement:
    params: tuple[object, ...] = (address.kind, address.id, handled.delivery_id)
    condition = "kind = %s AND id = %s AND delivery_id = %s"
    if handled.due_at is not None:
        condition += " AND due_at = %s"
        params += (float(handled.due_at),)
    check = "" if handled.due_at is None else "handled"
    if handled.next_due is None:
        return (f"DELETE FROM deliveries WHERE {condition}", params, check)
    return (
        f"UPDATE deliveries SET due_at = %s, attempts = 0, last_error = NULL WHERE {condition}",
        (float(handled.next_due), *params),
        check,
    )


def _failed_statements(address: AgentAddress, failed: FailedDelivery, at: float) -> list[Statement]:
    params = (address.kind, address.id, failed.delivery_id)
    if failed.retry_at is not None:
        return [
            (
                "UPDATE deliveries SET due_at = %s, attempts = attempts + 1, last_error = %s"
                " WHERE kind = %s AND id = %s AND delivery_id = %s",
                (float(failed.retry_at), failed.error, *params),
                "",
            )
        ]
    return [
        (
            "INSERT INTO dead_letters (kind, id, delivery_id, event_kind, payload, attempts,"
            " last_error, failed_at) SELECT kind, id, delivery_id, event_kind, payload,"
            " attempts + 1, %s, %s FROM deliveries WHERE kind = %s AND id = %s"
            " AND delivery_id = %s ON CONFLICT (kind, id, delivery_id) DO UPDATE SET"
            " event_kind = EXCLUDED.event_kind, payload = EXCLUDED.payload,"
            " attempts = EXCLUDED.attempts, last_error = EXCLUDED.last_error,"
            " failed_at = EXCLUDED.failed_at",
            (failed.error, float(at), *params),
            "",
        ),
        (
            "DELETE FROM deliveries WHERE kind = %s AND id = %s AND delivery_id = %s",
            params,
            "",
        ),
    ]


def _run_commit(conn: Any, commit: Commit, statements: Sequence[Statement]) -> None:
    """Send a commit's statements in one pipeline (inside the caller's transaction) and
    check what they did; raising rolls the transaction back."""
    with conn.pipeline() as pipeline:
        cursors = [(conn.execute(sql, params), check) for sql, params, check in statements]
        pipeline.sync()
    for cursor, check in cursors:
        if check == "lease" and cursor.fetchone() is None:
            raise LeaseLost(
                f"the lease on {commit.address} (token {commit.fence}) is no longer held;"
                " nothing was committed"
            )
        if check == "handled" and cursor.rowcount != 1:
            assert commit.handled is not None
            raise AlreadyHandled(
                f"delivery {commit.handled.delivery_id!r} of {commit.address} was handled already"
            )
        if check == "key" and cursor.rowcount != 1:
            raise StorageError(
                f"commit failed for {commit.address}: idempotency key "
                f"{commit.idempotency_key!r} is already recorded"
            )


def _lock_agent(conn: Any, address: AgentAddress) -> None:
    """Hold the agent's record (if any) until the transaction ends, so that commits of the
    agent wait for this erase or fork."""
    conn.execute(
        "SELECT 1 FROM agents WHERE kind = %s AND id = %s FOR UPDATE", (address.kind, address.id)
    )


# -- rows ----------------------------------------------------------------------------------


def _record(row: Sequence[Any]) -> AgentRecord:
    state, kv_bytes, turns, created_at, updated_at = row
    return AgentRecord(
        state=None if state is None else bytes(state),
        kv_bytes=int(kv_bytes),
        turns=int(turns),
        created_at=float(created_at),
        updated_at=float(updated_at),
    )


def _delivery(row: Sequence[Any]) -> Delivery:
    kind, agent_id, delivery_id, due_at, event_kind, payload, every_s, catch_up, key, n, err = row
    return Delivery(
        address=AgentAddress(str(kind), str(agent_id)),
        delivery_id=str(delivery_id),
        due_at=float(due_at),
        event_kind=str(event_kind),
        payload=bytes(payload),
        every_s=None if every_s is None else float(every_s),
        catch_up=catch_up,
        idempotency_key=key,
        attempts=int(n),
        last_error=err,
    )


def _dead_letter(row: Sequence[Any]) -> DeadLetter:
    kind, agent_id, delivery_id, event_kind, payload, attempts, last_error, failed_at = row
    return DeadLetter(
        address=AgentAddress(str(kind), str(agent_id)),
        delivery_id=str(delivery_id),
        event_kind=str(event_kind),
        payload=bytes(payload),
        attempts=int(attempts),
        last_error=str(last_error),
        failed_at=float(failed_at),
    )


def _pending_op(row: Sequence[Any]) -> PendingOp:
    kind, agent_id, op_key, capability, call, request, handler, tag = row
    return PendingOp(
        address=AgentAddress(str(kind), str(agent_id)),
        op_key=str(op_key),
        capability=str(capability),
        call=str(call),
        request=bytes(request),
        handler=str(handler),
        tag=bytes(tag),
    )


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
