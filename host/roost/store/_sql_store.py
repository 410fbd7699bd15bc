"""What the SQLite and the PostgreSQL store do alike: :class:`SqlStore`, their common base.

Their reads, approvals, prunes, erase and fork send the same SQL (:mod:`._sql`, parameters
marked ``?``) and read the same rows back; only the way to a connection differs. A store
supplies that through its hooks (``_check_open``, ``_rows``, ``_snapshot``, ``_write``, and
``_lock_agent`` where an erase or a fork must hold off the agent's commits) and says how it
keeps kv keys (``_keys``). Commits, due deliveries, pending ops and leases are each store's
own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar, TypeVar

from ..address import AgentAddress
from . import _sql
from ._sql import Connection
from .protocol import (
    AgentExport,
    AgentRecord,
    AgentSummary,
    Approval,
    ApprovalDecision,
    DeadLetter,
    Delivery,
    ForkResult,
    IdempotencyRecord,
    JournalEntry,
    Usage,
)

_T = TypeVar("_T")

CLOSED = "store is closed"

_READ_KV = "SELECT value FROM kv WHERE kind = ? AND id = ? AND key = ?"
_READ_USAGE = (
    "SELECT llm_input_tokens, llm_output_tokens, http_calls, cpu_ms, turns, errors FROM usage"
    " WHERE kind = ? AND id = ? AND day = ?"
)
_READ_JOURNAL = (
    "SELECT message_id, seq, capability, call, request_sha, ok, value FROM journal"
    " WHERE kind = ? AND id = ? AND message_id = ? ORDER BY seq"
)
_READ_RESPONSE = (
    "SELECT response, request_sha FROM idempotency WHERE kind = ? AND id = ? AND key = ?"
)
_OP_PENDING = "SELECT 1 FROM pending_ops WHERE kind = ? AND id = ? AND op_key = ?"
_READ_RECORD = (
    "SELECT state, kv_bytes, turns, created_at, updated_at FROM agents WHERE kind = ? AND id = ?"
)
_READ_DELIVERIES = (
    f"SELECT {_sql.DELIVERY_COLUMNS} FROM deliveries d WHERE d.kind = ? AND d.id = ?"
    " ORDER BY d.due_at, d.delivery_id"
)
_READ_DEAD_LETTERS = (
    f"SELECT {_sql.DEAD_LETTER_COLUMNS} FROM dead_letters WHERE kind = ? AND id = ?"
    " ORDER BY failed_at, delivery_id"
)
_READ_PENDING_OPS = (
    f"SELECT {_sql.PENDING_OP_COLUMNS} FROM pending_ops p WHERE p.kind = ? AND p.id = ?"
    " ORDER BY p.created_at, p.op_key"
)
_READ_APPROVALS = (
    f"SELECT {_sql.APPROVAL_COLUMNS} FROM approvals WHERE kind = ? AND id = ?"
    " ORDER BY requested_at, approval_id"
)
_READ_APPROVAL = (
    f"SELECT {_sql.APPROVAL_COLUMNS} FROM approvals WHERE kind = ? AND id = ? AND approval_id = ?"
)


def about(address: AgentAddress | None) -> str:
    """What an operation is about, for error messages (``" for chat/alice"``, or nothing)."""
    return "" if address is None else f" for {address}"


class SqlStore:
    """The :class:`~roost.store.protocol.StateStore` methods both SQL stores share, over the
    hooks each of them supplies."""

    _keys: ClassVar[_sql.Keys]
    """How the store keeps kv keys."""

    # -- hooks -------------------------------------------------------------------------------

    def _check_open(self) -> None:
        """StorageError if the store is closed (or closing)."""
        raise NotImplementedError

    def _rows(
        self, operation: str, address: AgentAddress | None, sql: str, params: Sequence[object]
    ) -> list[Any]:
        """Every row ``sql`` reads; errors come out as StorageError naming ``operation`` and
        ``address``."""
        raise NotImplementedError

    def _snapshot(
        self, operation: str, address: AgentAddress
    ) -> AbstractContextManager[Connection]:
        """A connection whose reads all see one snapshot of the store."""
        raise NotImplementedError

    def _write(self, operation: str, subject: str, work: Callable[[Connection], _T]) -> _T:
        """``work(conn)`` in a write transaction of its own, after every write called before
        it, and its result; errors come out as StorageError naming ``operation`` and
        ``subject``."""
        raise NotImplementedError

    def _lock_agent(self, conn: Connection, address: AgentAddress) -> None:
        """In a write transaction: make the agent's commits wait until it ends (for an erase
        or a fork). Nothing to do where one writer applies every write in order (SQLite)."""

    def _of_agent(
        self, operation: str, address: AgentAddress, sql: str, *params: object
    ) -> list[Any]:
        """The rows of the agent ``sql`` reads: its first parameters are the agent's kind and
        id, then ``params``."""
        return self._rows(operation, address, sql, (address.kind, address.id, *params))

    # -- the turn side -----------------------------------------------------------------------

    def read_agent(self, address: AgentAddress) -> AgentRecord | None:
        """The agent's record, or None if it has never committed a turn."""
        rows = self._of_agent("read_agent", address, _READ_RECORD)
        return _sql.record(rows[0]) if rows else None

    def read_kv(self, address: AgentAddress, key: str) -> bytes | None:
        """The committed value of ``key`` in the agent's own namespace."""
        rows = self._of_agent("read_kv", address, _READ_KV, self._keys.param(key))
        return bytes(rows[0][0]) if rows else None

    def read_kv_keys(self, address: AgentAddress, prefix: str, limit: int) -> list[str]:
        """Up to ``limit`` committed keys starting with ``prefix``, sorted. ``prefix`` matches
        literally: it is turned into a key range, not a LIKE pattern."""
        self._check_open()
        if limit <= 0:
            return []
        sql = "SELECT key FROM kv WHERE kind = ? AND id = ? AND key >= ?"
        params: tuple[object, ...] = (address.kind, address.id, self._keys.param(prefix))
        upper = self._keys.upper_bound(prefix)
        if upper is not None:
            sql += " AND key < ?"
            params += (upper,)
        params += (int(limit),)
        rows = self._rows("read_kv_keys", address, f"{sql} ORDER BY key LIMIT ?", params)
        return [self._keys.text(row[0]) for row in rows]

    def read_usage(self, address: AgentAddress, day: str) -> Usage:
        """The agent's usage on ``day``."""
        rows = self._of_agent("read_usage", address, _READ_USAGE, day)
        return _sql.usage(rows[0]) if rows else Usage()

    def read_deliveries(self, address: AgentAddress) -> list[Delivery]:
        """The agent's pending deliveries, earliest first."""
        rows = self._of_agent("read_deliveries", address, _READ_DELIVERIES)
        return [_sql.delivery(row) for row in rows]

    def read_journal(self, address: AgentAddress, message_id: str) -> list[JournalEntry]:
        """The op results journaled for a message of the agent, by ``seq``."""
        rows = self._of_agent("read_journal", address, _READ_JOURNAL, message_id)
        return [_sql.journal_entry(row) for row in rows]

    def read_approvals(self, address: AgentAddress) -> list[Approval]:
        """The agent's approvals, waiting and decided, oldest first."""
        rows = self._of_agent("read_approvals", address, _READ_APPROVALS)
        return [_sql.approval(row) for row in rows]

    # -- the admin side: reads ---------------------------------------------------------------

    def read_response(self, address: AgentAddress, key: str) -> IdempotencyRecord | None:
        """What was committed with idempotency key ``key`` for the agent, if anything."""
        rows = self._of_agent("read_response", address, _READ_RESPONSE, key)
        return _sql.idempotency_record(rows[0]) if rows else None

    def op_pending(self, address: AgentAddress, op_key: str) -> bool:
        """Whether the agent's continuation-form op ``op_key`` is still in flight."""
        return bool(self._of_agent("op_pending", address, _OP_PENDING, op_key))

    def read_dead_letters(self, address: AgentAddress) -> list[DeadLetter]:
        """The agent's dead letters, oldest first."""
        rows = self._of_agent("read_dead_letters", address, _READ_DEAD_LETTERS)
        return [_sql.dead_letter(row) for row in rows]

    def count_dead_letters(self, kind: str | None = None) -> dict[str, int]:
        """Dead letters held, by kind (of one kind, or all)."""
        where, params = _of_kind(kind)
        sql = f"SELECT kind, COUNT(*) FROM dead_letters{where} GROUP BY kind"
        return {str(k): int(n) for k, n in self._rows("count_dead_letters", None, sql, params)}

    def next_due_at(self) -> float | None:
        """When the earliest delivery is due, or None if there are none."""
        rows = self._rows("next_due_at", None, "SELECT MIN(due_at) FROM deliveries", ())
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    def list_agents(self, kind: str, *, after: str | None, limit: int) -> list[AgentSummary]:
        """Up to ``limit`` agents of ``kind`` whose ids sort after ``after``, by id."""
        self._check_open()
        if limit <= 0:
            return []
        sql = (
            "SELECT id, state_bytes, kv_bytes, turns, created_at, updated_at FROM agents"
            " WHERE kind = ?"
        )
        params: tuple[object, ...] = (kind,)
        if after is not None:
            sql += " AND id > ?"
            params += (after,)
        params += (int(limit),)
        rows = self._rows("list_agents", None, f"{sql} ORDER BY id LIMIT ?", params)
        return [_sql.summary(row) for row in rows]

    def export_agent(self, address: AgentAddress) -> AgentExport | None:
        """A consistent snapshot of everything held for the agent, or None if it has neither
        a record nor kv entries. (kv entries without a record, which no store writes, are
        reported with a record of no state, 0 turns and timestamps 0.)"""
        params = (address.kind, address.id)
        with self._snapshot("export_agent", address) as conn:
            agent_rows = conn.execute(_READ_RECORD, params).fetchall()
            kv_rows = conn.execute(
                "SELECT key, value FROM kv WHERE kind = ? AND id = ? ORDER BY key", params
            ).fetchall()
            responses = conn.execute(
                "SELECT COUNT(*) FROM idempotency WHERE kind = ? AND id = ?", params
            ).fetchone()[0]
            delivery_rows = conn.execute(_READ_DELIVERIES, params).fetchall()
            dead_rows = conn.execute(_READ_DEAD_LETTERS, params).fetchall()
            op_rows = conn.execute(_READ_PENDING_OPS, params).fetchall()
        if not agent_rows and not kv_rows:
            return None
        kv = {self._keys.text(key): bytes(value) for key, value in kv_rows}
        if agent_rows:
            record = _sql.record(agent_rows[0])
        else:  # kv without a record: not written by a store, but report it faithfully
            size = sum(len(key.encode()) + len(value) for key, value in kv.items())
            record = AgentRecord(state=None, kv_bytes=size, turns=0, created_at=0.0, updated_at=0.0)
        return AgentExport(
            record=record,
            kv=kv,
            responses=int(responses),
            deliveries=[_sql.delivery(row) for row in delivery_rows],
            dead_letters=[_sql.dead_letter(row) for row in dead_rows],
            pending_ops=[_sql.pending_op(row) for row in op_rows],
        )

    def count_agents(self, kind: str | None = None) -> int:
        """Number of agents with committed turns (of one kind, or all)."""
        return self._aggregate("count_agents", "COUNT(*)", kind)

    def stored_bytes(self, kind: str | None = None) -> int:
        """Bytes of state and kv held for agents (of one kind, or all)."""
        return self._aggregate("stored_bytes", "COALESCE(SUM(state_bytes + kv_bytes), 0)", kind)

    def _aggregate(self, operation: str, expression: str, kind: str | None) -> int:
        where, params = _of_kind(kind)
        rows = self._rows(operation, None, f"SELECT {expression} FROM agents{where}", params)
        return int(rows[0][0])

    # -- the admin side: writes --------------------------------------------------------------

    def prune_responses(self, older_than: float) -> int:
        """Delete every idempotency record created before ``older_than``."""
        sql = "DELETE FROM idempotency WHERE created_at < ?"
        return self._write("prune_responses", "", lambda conn: _deleted(conn, sql, older_than))

    def request_approval(self, approval: Approval) -> Approval:
        """Record an approval unless its id exists; the stored row (see the protocol)."""
        return self._write(
            "request_approval", about(approval.address), lambda conn: _ask(conn, approval)
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

        def work(conn: Connection) -> Approval | None:
            conn.execute(
                "UPDATE approvals SET decision = ?, decided_at = ?, decided_by = ?, note = ?"
                " WHERE kind = ? AND id = ? AND approval_id = ? AND decision IS NULL",
                (decision, float(at), by, note, address.kind, address.id, approval_id),
            )
            return _approval(conn, address, approval_id)

        return self._write("decide_approval", about(address), work)

    def prune_approvals(self, decided_before: float) -> int:
        """Delete every approval decided before ``decided_before``."""
        sql = "DELETE FROM approvals WHERE decided_at IS NOT NULL AND decided_at < ?"
        return self._write("prune_approvals", "", lambda conn: _deleted(conn, sql, decided_before))

    def delete_agent(self, address: AgentAddress) -> bool:
        """Delete everything held for the agent in one transaction, after every write called
        before it. Returns whether there was anything to delete."""

        def work(conn: Connection) -> bool:
            self._lock_agent(conn, address)
            return delete_rows(conn, address)

        return self._write("delete_agent", about(address), work)

    def fork_agent(self, source: AgentAddress, target: AgentAddress) -> ForkResult:
        """Copy ``source``'s state and kv entries to ``target`` in one transaction, after
        every write called before it (see the protocol for the outcomes)."""

        def work(conn: Connection) -> ForkResult:
            self._lock_agent(conn, target)
            return fork_rows(conn, source, target)

        return self._write("fork_agent", f" from {source} to {target}", work)


def _of_kind(kind: str | None) -> tuple[str, tuple[object, ...]]:
    """A WHERE clause keeping the rows of agents of ``kind`` (all when None), and its
    parameters."""
    return ("", ()) if kind is None else (" WHERE kind = ?", (kind,))


def _deleted(conn: Connection, sql: str, before: float) -> int:
    """Run a DELETE of rows older than ``before``; how many it deleted."""
    return int(conn.execute(sql, (float(before),)).rowcount)


def _approval(conn: Connection, address: AgentAddress, approval_id: str) -> Approval | None:
    row = conn.execute(_READ_APPROVAL, (address.kind, address.id, approval_id)).fetchone()
    return None if row is None else _sql.approval(row)


def _ask(conn: Connection, approval: Approval) -> Approval:
    """Record ``approval`` undecided unless its id exists; the stored row either way."""
    address = approval.address
    conn.execute(
        "INSERT INTO approvals (kind, id, approval_id, request, requested_at, expires_at)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (kind, id, approval_id) DO NOTHING",
        (
            address.kind,
            address.id,
            approval.approval_id,
            bytes(approval.request),
            float(approval.requested_at),
            None if approval.expires_at is None else float(approval.expires_at),
        ),
    )
    stored = _approval(conn, address, approval.approval_id)
    assert stored is not None
    return stored


def delete_rows(conn: Connection, address: AgentAddress) -> bool:
    """Delete every row of the agent inside the caller's transaction; True if there were any."""
    params = (address.kind, address.id)
    deleted = 0
    for table in _sql.TABLES:
        deleted += conn.execute(f"DELETE FROM {table} WHERE kind = ? AND id = ?", params).rowcount
    return deleted > 0


def fork_rows(conn: Connection, source: AgentAddress, target: AgentAddress) -> ForkResult:
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
        "INSERT INTO agents (kind, id, state, state_bytes, kv_bytes, turns, created_at,"
        " updated_at) SELECT ?, ?, state, state_bytes, kv_bytes, 0, ?, ? FROM agents"
        " WHERE kind = ? AND id = ?",
        (target.kind, target.id, now, now, source.kind, source.id),
    )
    conn.execute(
        "INSERT INTO kv (kind, id, key, value) SELECT ?, ?, key, value FROM kv"
        " WHERE kind = ? AND id = ?",
        (target.kind, target.id, source.kind, source.id),
    )
    return "forked"


def _holds_rows(conn: Connection, address: AgentAddress) -> bool:
    """Whether any table holds a row of the agent."""
    params = (address.kind, address.id)
    return any(
        conn.execute(f"SELECT 1 FROM {table} WHERE kind = ? AND id = ? LIMIT 1", params).fetchone()
        is not None
        for table in _sql.TABLES
    )
