"""The SQLite store's approvals: the writes (applied by the writer, in its group-commit
transactions) and the rows read back."""

from __future__ import annotations

import sqlite3
from typing import Any, cast

from ..address import AgentAddress
from .protocol import Approval, ApprovalDecision

COLUMNS = (
    "kind, id, approval_id, request, requested_at, expires_at, decision, decided_at,"
    " decided_by, note"
)


def approval(row: tuple[Any, ...]) -> Approval:
    (
        kind,
        agent_id,
        approval_id,
        request,
        requested_at,
        expires_at,
        decision,
        decided_at,
        decided_by,
        note,
    ) = row
    return Approval(
        address=AgentAddress(str(kind), str(agent_id)),
        approval_id=str(approval_id),
        request=bytes(request),
        requested_at=float(requested_at),
        expires_at=None if expires_at is None else float(expires_at),
        decision=cast("ApprovalDecision | None", decision),
        decided_at=None if decided_at is None else float(decided_at),
        decided_by=None if decided_by is None else str(decided_by),
        note=None if note is None else str(note),
    )


def read(conn: sqlite3.Connection, address: AgentAddress, approval_id: str) -> Approval | None:
    row = conn.execute(
        f"SELECT {COLUMNS} FROM approvals WHERE kind = ? AND id = ? AND approval_id = ?",
        (address.kind, address.id, approval_id),
    ).fetchone()
    return None if row is None else approval(row)


def read_all(conn: sqlite3.Connection, address: AgentAddress) -> list[Approval]:
    rows = conn.execute(
        f"SELECT {COLUMNS} FROM approvals WHERE kind = ? AND id = ?"
        " ORDER BY requested_at, approval_id",
        (address.kind, address.id),
    ).fetchall()
    return [approval(row) for row in rows]


def insert(conn: sqlite3.Connection, new: Approval) -> Approval:
    """Record ``new`` undecided unless its id exists; the stored row either way."""
    address = new.address
    conn.execute(
        "INSERT OR IGNORE INTO approvals (kind, id, approval_id, request, requested_at,"
        " expires_at) VALUES (?, ?, ?, ?, ?, ?)",
        (
            address.kind,
            address.id,
            new.approval_id,
            bytes(new.request),
            float(new.requested_at),
            None if new.expires_at is None else float(new.expires_at),
        ),
    )
    stored = read(conn, address, new.approval_id)
    assert stored is not None
    return stored


def decide(
    conn: sqlite3.Connection,
    address: AgentAddress,
    approval_id: str,
    decision: ApprovalDecision,
    at: float,
    by: str,
    note: str | None,
) -> Approval | None:
    """Decide an undecided approval; the stored row afterwards (None if there is none)."""
    conn.execute(
        "UPDATE approvals SET decision = ?, decided_at = ?, decided_by = ?, note = ?"
        " WHERE kind = ? AND id = ? AND approval_id = ? AND decision IS NULL",
        (decision, float(at), by, note, address.kind, address.id, approval_id),
    )
    return read(conn, address, approval_id)


def prune(conn: sqlite3.Connection, decided_before: float) -> int:
    return conn.execute(
        "DELETE FROM approvals WHERE decided_at IS NOT NULL AND decided_at < ?",
        (float(decided_before),),
    ).rowcount
