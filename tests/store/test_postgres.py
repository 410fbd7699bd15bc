"""The PostgreSQL store's own behaviour beyond the conformance suite: its migrations."""

from __future__ import annotations

import psycopg
import pytest

from roost.address import AgentAddress
from roost.store import Approval, Commit, _pg_schema
from roost.store.postgres import open_postgres_store

ALICE = AgentAddress("chat", "alice")


async def test_a_database_of_schema_version_1_gains_approvals_and_keeps_its_rows(
    postgres_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = "t_migrate_v1"
    with monkeypatch.context() as patch:  # the schema as the first PostgreSQL store made it
        patch.setattr(_pg_schema, "MIGRATIONS", _pg_schema.MIGRATIONS[:1])
        async with open_postgres_store(postgres_server, schema=schema) as store:
            store.commit(Commit(address=ALICE, state=b"s", at=1.0))
    with psycopg.connect(postgres_server, options=f"-c search_path={schema}") as conn:
        assert conn.execute("SELECT version FROM roost_schema").fetchone() == (1,)
        assert conn.execute("SELECT to_regclass('approvals')").fetchone() == (None,)
    async with open_postgres_store(postgres_server, schema=schema) as store:
        record = store.read_agent(ALICE)
        assert record is not None and record.state == b"s"
        asked = Approval(ALICE, "ap-1", b"\x80", requested_at=2.0, expires_at=62.0)
        assert store.request_approval(asked) == asked
        decided = store.decide_approval(ALICE, "ap-1", "approved", at=3.0, by="dana")
        assert decided is not None and decided.decision == "approved"
    with psycopg.connect(postgres_server, options=f"-c search_path={schema}") as conn:
        assert conn.execute("SELECT version FROM roost_schema").fetchone() == (
            len(_pg_schema.MIGRATIONS),
        )
