"""The SQLite store's schema, as an ordered list of migrations.

``MIGRATIONS[n]`` takes a database from schema version ``n`` to ``n + 1``. The version lives in
``PRAGMA user_version`` (0 for a new file). Each migration runs in its own ``BEGIN IMMEDIATE``
transaction together with the ``user_version`` bump, so a migration either applies completely or
not at all, and two processes opening the same new file cannot both apply it.

To change the schema, append a script to ``MIGRATIONS``; never edit one that has shipped.
"""

from __future__ import annotations

import contextlib
import sqlite3

from ..errors import StorageError

MIGRATIONS: list[str] = [
    # 1: agents and their kv entries.
    """
    CREATE TABLE agents (
        kind TEXT NOT NULL,
        id TEXT NOT NULL,
        state BLOB,
        state_bytes INTEGER NOT NULL DEFAULT 0,
        kv_bytes INTEGER NOT NULL DEFAULT 0,
        turns INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (kind, id)
    ) WITHOUT ROWID;
    CREATE TABLE kv (
        kind TEXT NOT NULL,
        id TEXT NOT NULL,
        key TEXT NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (kind, id, key)
    ) WITHOUT ROWID;
    """,
    # 2: idempotency records (a turn's response under its idempotency key), pruned by age.
    """
    CREATE TABLE idempotency (
        kind TEXT NOT NULL,
        id TEXT NOT NULL,
        key TEXT NOT NULL,
        response BLOB NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (kind, id, key)
    ) WITHOUT ROWID;
    CREATE INDEX idempotency_created_at ON idempotency (created_at);
    """,
    # 3: deliveries: durable timers and messages between agents, due at a time.
    """
    CREATE TABLE deliveries (
        kind TEXT NOT NULL,
        id TEXT NOT NULL,
        delivery_id TEXT NOT NULL,
        due_at REAL NOT NULL,
        event_kind TEXT NOT NULL,
        payload BLOB NOT NULL,
        every_s REAL,
        catch_up TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (kind, id, delivery_id)
    ) WITHOUT ROWID;
    CREATE INDEX deliveries_due_at ON deliveries (due_at);
    """,
    # 4: per-agent usage per UTC day, for budgets and status.
    """
    CREATE TABLE usage (
        kind TEXT NOT NULL,
        id TEXT NOT NULL,
        day TEXT NOT NULL,
        llm_input_tokens INTEGER NOT NULL DEFAULT 0,
        llm_output_tokens INTEGER NOT NULL DEFAULT 0,
        http_calls INTEGER NOT NULL DEFAULT 0,
        cpu_ms REAL NOT NULL DEFAULT 0,
        turns INTEGER NOT NULL DEFAULT 0,
        errors INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (kind, id, day)
    ) WITHOUT ROWID;
    """,
    # 5: exactly-once messages: the inbox (deliveries of kind message/agent with the key of
    # the message), the journal of op results a running handler consumed, continuation ops
    # in flight, attempts and dead letters, and the request behind each idempotency record.
    """
    ALTER TABLE deliveries ADD COLUMN idempotency_key TEXT;
    ALTER TABLE deliveries ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE deliveries ADD COLUMN last_error TEXT;
    ALTER TABLE idempotency ADD COLUMN request_sha TEXT;
    CREATE TABLE journal (
        kind TEXT NOT NULL,
        id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        capability TEXT NOT NULL,
        call TEXT NOT NULL,
        request_sha TEXT NOT NULL,
        ok INTEGER NOT NULL,
        value BLOB NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (kind, id, message_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE pending_ops (
        kind TEXT NOT NULL,
        id TEXT NOT NULL,
        op_key TEXT NOT NULL,
        capability TEXT NOT NULL,
        call TEXT NOT NULL,
        request BLOB NOT NULL,
        handler TEXT NOT NULL,
        tag BLOB NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (kind, id, op_key)
    ) WITHOUT ROWID;
    CREATE TABLE dead_letters (
        kind TEXT NOT NULL,
        id TEXT NOT NULL,
        delivery_id TEXT NOT NULL,
        event_kind TEXT NOT NULL,
        payload BLOB NOT NULL,
        attempts INTEGER NOT NULL,
        last_error TEXT NOT NULL,
        failed_at REAL NOT NULL,
        PRIMARY KEY (kind, id, delivery_id)
    ) WITHOUT ROWID;
    """,
    # 6: approvals an agent asked a person for, waiting and decided (until pruned).
    """
    CREATE TABLE approvals (
        kind TEXT NOT NULL,
        id TEXT NOT NULL,
        approval_id TEXT NOT NULL,
        request BLOB NOT NULL,
        requested_at REAL NOT NULL,
        expires_at REAL,
        decision TEXT,
        decided_at REAL,
        decided_by TEXT,
        note TEXT,
        PRIMARY KEY (kind, id, approval_id)
    ) WITHOUT ROWID;
    CREATE INDEX approvals_decided_at ON approvals (decided_at);
    """,
]
"""Migration scripts, applied in order. Append only."""


def schema_version() -> int:
    """The schema version this code creates and understands."""
    return len(MIGRATIONS)


def _split_statements(script: str) -> list[str]:
    """Split a script into complete SQL statements (``executescript`` would commit our
    transaction, so statements are run one by one instead)."""
    statements: list[str] = []
    buffer = ""
    for piece in script.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            statement = buffer.strip()
            if statement != ";":
                statements.append(statement)
            buffer = ""
    # The final piece has a ';' appended by the loop; what is left must be blank.
    if buffer.strip(" \t\r\n;"):
        raise ValueError(f"incomplete SQL statement in migration: {buffer.strip()!r}")
    return statements


def _user_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def rollback_quietly(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if any, ignoring errors (used while already failing)."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def migrate(conn: sqlite3.Connection, path: str) -> int:
    """Bring the database on ``conn`` (opened with ``isolation_level=None``) up to the latest
    schema version and return it. Raises :class:`StorageError` if the file was written by a
    newer roost or a migration fails; a failed migration leaves the file at its old version."""
    migrations = list(MIGRATIONS)
    latest = len(migrations)
    while True:
        target: int | None = None
        try:
            conn.execute("BEGIN IMMEDIATE")
            version = _user_version(conn)
            if version > latest:
                raise StorageError(
                    f"database {path} has schema version {version}, but this roost only knows "
                    f"schema versions up to {latest}; upgrade roost to open it"
                )
            if version == latest:
                conn.execute("COMMIT")
                return version
            target = version + 1
            for statement in _split_statements(migrations[version]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {target}")
            conn.execute("COMMIT")
        except StorageError:
            rollback_quietly(conn)
            raise
        except (sqlite3.Error, ValueError) as exc:
            rollback_quietly(conn)
            step = (
                "reading its schema version"
                if target is None
                else f"migrating it to schema version {target}"
            )
            raise StorageError(f"opening database {path} failed while {step}: {exc}") from exc
