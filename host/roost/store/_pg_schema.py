"""The PostgreSQL store's schema, as an ordered list of migrations (like ``_schema.py``'s).

``MIGRATIONS[n]`` takes a schema from version ``n`` to ``n + 1``. The version lives in the
one-row table ``roost_schema``. Migrations run in one transaction each, under an advisory
lock, so a migration applies completely or not at all and hosts starting together apply it
once. To change the schema, append a script; never edit one that has shipped.

Texts that are compared or sorted (kinds, ids, kv keys) are ``COLLATE "C"``: byte order of
UTF-8, which is code point order, as the conformance suite asks. kv keys are ``bytea`` (their
UTF-8), because a PostgreSQL text cannot hold NUL and a key may.
"""

from __future__ import annotations

from typing import Any

from ..errors import StorageError

MIGRATIONS: list[str] = [
    # 1: everything the SQLite store holds at its version 5, plus leases and hosts.
    """
    CREATE TABLE agents (
        kind TEXT COLLATE "C" NOT NULL,
        id TEXT COLLATE "C" NOT NULL,
        state BYTEA,
        state_bytes BIGINT NOT NULL DEFAULT 0,
        kv_bytes BIGINT NOT NULL DEFAULT 0,
        turns BIGINT NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (kind, id)
    );
    CREATE TABLE kv (
        kind TEXT COLLATE "C" NOT NULL,
        id TEXT COLLATE "C" NOT NULL,
        key BYTEA NOT NULL,
        value BYTEA NOT NULL,
        PRIMARY KEY (kind, id, key)
    );
    CREATE TABLE idempotency (
        kind TEXT COLLATE "C" NOT NULL,
        id TEXT COLLATE "C" NOT NULL,
        key TEXT COLLATE "C" NOT NULL,
        response BYTEA NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        request_sha TEXT,
        PRIMARY KEY (kind, id, key)
    );
    CREATE INDEX idempotency_created_at ON idempotency (created_at);
    CREATE TABLE deliveries (
        kind TEXT COLLATE "C" NOT NULL,
        id TEXT COLLATE "C" NOT NULL,
        delivery_id TEXT COLLATE "C" NOT NULL,
        due_at DOUBLE PRECISION NOT NULL,
        event_kind TEXT NOT NULL,
        payload BYTEA NOT NULL,
        every_s DOUBLE PRECISION,
        catch_up TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        idempotency_key TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        PRIMARY KEY (kind, id, delivery_id)
    );
    CREATE INDEX deliveries_due_at ON deliveries (due_at);
    CREATE TABLE usage (
        kind TEXT COLLATE "C" NOT NULL,
        id TEXT COLLATE "C" NOT NULL,
        day TEXT NOT NULL,
        llm_input_tokens BIGINT NOT NULL DEFAULT 0,
        llm_output_tokens BIGINT NOT NULL DEFAULT 0,
        http_calls BIGINT NOT NULL DEFAULT 0,
        cpu_ms DOUBLE PRECISION NOT NULL DEFAULT 0,
        turns BIGINT NOT NULL DEFAULT 0,
        errors BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (kind, id, day)
    );
    CREATE TABLE journal (
        kind TEXT COLLATE "C" NOT NULL,
        id TEXT COLLATE "C" NOT NULL,
        message_id TEXT COLLATE "C" NOT NULL,
        seq INTEGER NOT NULL,
        capability TEXT NOT NULL,
        call TEXT NOT NULL,
        request_sha TEXT NOT NULL,
        ok BOOLEAN NOT NULL,
        value BYTEA NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (kind, id, message_id, seq)
    );
    CREATE TABLE pending_ops (
        kind TEXT COLLATE "C" NOT NULL,
        id TEXT COLLATE "C" NOT NULL,
        op_key TEXT COLLATE "C" NOT NULL,
        capability TEXT NOT NULL,
        call TEXT NOT NULL,
        request BYTEA NOT NULL,
        handler TEXT NOT NULL,
        tag BYTEA NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (kind, id, op_key)
    );
    CREATE INDEX pending_ops_created_at ON pending_ops (created_at);
    CREATE TABLE dead_letters (
        kind TEXT COLLATE "C" NOT NULL,
        id TEXT COLLATE "C" NOT NULL,
        delivery_id TEXT COLLATE "C" NOT NULL,
        event_kind TEXT NOT NULL,
        payload BYTEA NOT NULL,
        attempts INTEGER NOT NULL,
        last_error TEXT NOT NULL,
        failed_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (kind, id, delivery_id)
    );
    CREATE TABLE leases (
        kind TEXT COLLATE "C" NOT NULL,
        id TEXT COLLATE "C" NOT NULL,
        owner TEXT NOT NULL,
        token BIGINT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (kind, id)
    );
    CREATE INDEX leases_owner ON leases (owner) WHERE owner <> '';
    CREATE TABLE hosts (
        owner TEXT PRIMARY KEY,
        url TEXT,
        expires_at DOUBLE PRECISION NOT NULL
    );
    """,
]
"""Migration scripts, applied in order. Append only."""

_LOCK_KEY = 0x726F6F7374
"""The advisory lock migrations run under ("roost")."""


def schema_version() -> int:
    """The schema version this code creates and understands."""
    return len(MIGRATIONS)


def migrate(conn: Any, where: str) -> int:
    """Bring the schema on ``conn`` (a psycopg connection, autocommit off) up to the latest
    version and return it. StorageError if a newer roost wrote it or a migration fails."""
    latest = len(MIGRATIONS)
    while True:
        target: int | None = None
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                conn.execute("CREATE TABLE IF NOT EXISTS roost_schema (version INTEGER NOT NULL)")
                row = conn.execute("SELECT version FROM roost_schema").fetchone()
                version = 0 if row is None else int(row[0])
                if version > latest:
                    raise StorageError(
                        f"database {where} has schema version {version}, but this roost only "
                        f"knows schema versions up to {latest}; upgrade roost to open it"
                    )
                if version == latest:
                    return version
                target = version + 1
                conn.execute(MIGRATIONS[version])
                if row is None:
                    conn.execute("INSERT INTO roost_schema (version) VALUES (%s)", (target,))
                else:
                    conn.execute("UPDATE roost_schema SET version = %s", (target,))
        except StorageError:
            raise
        except Exception as exc:
            step = (
                "reading its schema version"
                if target is None
                else f"migrating it to schema version {target}"
            )
            raise StorageError(f"opening database {where} failed while {step}: {exc}") from exc
