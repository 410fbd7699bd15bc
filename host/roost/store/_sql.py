"""The SQL both stores send, written once, and the rows they read back as the protocol's models.

The text marks each parameter with ``?``, as sqlite3 takes it; :func:`pyformat` turns it into
psycopg's ``%s`` for PostgreSQL. Both databases accept the same statements otherwise (upserts
are ``INSERT ... ON CONFLICT``). The one value they keep differently is a kv key
(:class:`Keys`). What truly differs stays with each store: how a transaction is taken and
ordered, leases and fencing, the group commit (SQLite), the pipeline (PostgreSQL).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol, TypeVar, cast

from ..address import AgentAddress
from ..errors import AlreadyHandled
from .protocol import (
    AgentRecord,
    AgentSummary,
    Approval,
    ApprovalDecision,
    Commit,
    DeadLetter,
    Delivery,
    FailedDelivery,
    Handled,
    IdempotencyRecord,
    JournalEntry,
    PendingOp,
    Usage,
)

_V = TypeVar("_V")

_MAX_CODE_POINT = 0x10FFFF
_SURROGATES = range(0xD800, 0xE000)


class Cursor(Protocol):
    """What the shared code reads of an executed statement."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """What the shared SQL runs on: a sqlite3 connection, or a psycopg one that passes its
    text through :func:`pyformat`."""

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Cursor: ...


@functools.lru_cache(maxsize=256)
def pyformat(sql: str) -> str:
    """``sql`` with psycopg's parameter marks: ``%s`` for each ``?`` (and ``%%`` for a
    literal ``%``)."""
    return sql.replace("%", "%%").replace("?", "%s")


# -- kv keys ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Keys:
    """How a store keeps kv keys: as text (SQLite), or as their UTF-8 (``utf8``: PostgreSQL's
    ``bytea``, since a PostgreSQL text cannot hold NUL and a key may). Either way they sort,
    and match prefixes, by code point."""

    utf8: bool

    def param(self, key: object) -> str | bytes:
        """``key`` as a parameter; TypeError unless it is a str."""
        if not isinstance(key, str):
            raise TypeError(f"kv key must be str, not {type(key).__name__}")
        return key.encode("utf-8") if self.utf8 else key

    def text(self, stored: Any) -> str:
        """A key as read back."""
        return bytes(stored).decode("utf-8") if self.utf8 else str(stored)

    def upper_bound(self, prefix: str) -> str | bytes | None:
        """The least key greater than every key that starts with ``prefix``, or None if there
        is no such key."""
        if self.utf8:
            return bytes_upper_bound(prefix.encode("utf-8"))
        return prefix_upper_bound(prefix)


TEXT_KEYS = Keys(utf8=False)
UTF8_KEYS = Keys(utf8=True)


def prefix_upper_bound(prefix: str) -> str | None:
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


def bytes_upper_bound(prefix: bytes) -> bytes | None:
    """The least byte string greater than every string starting with ``prefix``."""
    data = bytearray(prefix)
    while data:
        if data[-1] < 0xFF:
            data[-1] += 1
            return bytes(data)
        data.pop()
    return None


# -- tables and rows -------------------------------------------------------------------------

TABLES = (
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
"""Every table that holds rows of one agent, keyed by (kind, id) (a shared store's leases are
not agent data: their tokens must outlive an erase)."""

DELIVERY_COLUMNS = (
    "d.kind, d.id, d.delivery_id, d.due_at, d.event_kind, d.payload, d.every_s, d.catch_up,"
    " d.idempotency_key, d.attempts, d.last_error"
)
"""The columns :func:`delivery` reads, of ``deliveries d``."""
DEAD_LETTER_COLUMNS = "kind, id, delivery_id, event_kind, payload, attempts, last_error, failed_at"
PENDING_OP_COLUMNS = "p.kind, p.id, p.op_key, p.capability, p.call, p.request, p.handler, p.tag"
"""The columns :func:`pending_op` reads, of ``pending_ops p``."""
APPROVAL_COLUMNS = (
    "kind, id, approval_id, request, requested_at, expires_at, decision, decided_at,"
    " decided_by, note"
)


# Each conversion below takes a row's columns in the order of its model's fields.


def _optional(convert: Callable[[Any], _V], value: Any) -> _V | None:
    return None if value is None else convert(value)


def record(row: Sequence[Any]) -> AgentRecord:
    state, kv_bytes, turns, created_at, updated_at = row
    return AgentRecord(
        _optional(bytes, state), int(kv_bytes), int(turns), float(created_at), float(updated_at)
    )


def summary(row: Sequence[Any]) -> AgentSummary:
    agent_id, state_bytes, kv_bytes, turns, created_at, updated_at = row
    return AgentSummary(
        str(agent_id),
        int(state_bytes),
        int(kv_bytes),
        int(turns),
        float(created_at),
        float(updated_at),
    )


def usage(row: Sequence[Any]) -> Usage:
    return Usage(int(row[0]), int(row[1]), int(row[2]), float(row[3]), int(row[4]), int(row[5]))


def journal_entry(row: Sequence[Any]) -> JournalEntry:
    message_id, seq, capability, call, sha, ok, value = row
    return JournalEntry(
        str(message_id), int(seq), str(capability), str(call), str(sha), bool(ok), bytes(value)
    )


def idempotency_record(row: Sequence[Any]) -> IdempotencyRecord:
    response, request_sha = row
    return IdempotencyRecord(bytes(response), _optional(str, request_sha))


def delivery(row: Sequence[Any]) -> Delivery:
    kind, agent_id, delivery_id, due_at, event_kind, payload, every_s, catch_up, key, n, err = row
    return Delivery(
        address=AgentAddress(str(kind), str(agent_id)),
        delivery_id=str(delivery_id),
        due_at=float(due_at),
        event_kind=str(event_kind),
        payload=bytes(payload),
        every_s=_optional(float, every_s),
        catch_up=catch_up,
        idempotency_key=key,
        attempts=int(n),
        last_error=err,
    )


def dead_letter(row: Sequence[Any]) -> DeadLetter:
    kind, agent_id, delivery_id, event_kind, payload, attempts, last_error, failed_at = row
    return DeadLetter(
        AgentAddress(str(kind), str(agent_id)),
        str(delivery_id),
        str(event_kind),
        bytes(payload),
        int(attempts),
        str(last_error),
        float(failed_at),
    )


def pending_op(row: Sequence[Any]) -> PendingOp:
    kind, agent_id, op_key, capability, call, request, handler, tag = row
    return PendingOp(
        AgentAddress(str(kind), str(agent_id)),
        str(op_key),
        str(capability),
        str(call),
        bytes(request),
        str(handler),
        bytes(tag),
    )


def approval(row: Sequence[Any]) -> Approval:
    kind, agent_id, approval_id, request, asked_at, expires_at, decision, at, by, note = row
    return Approval(
        address=AgentAddress(str(kind), str(agent_id)),
        approval_id=str(approval_id),
        request=bytes(request),
        requested_at=float(asked_at),
        expires_at=_optional(float, expires_at),
        decision=cast("ApprovalDecision | None", decision),
        decided_at=_optional(float, at),
        decided_by=_optional(str, by),
        note=_optional(str, note),
    )


# -- a commit's writes -----------------------------------------------------------------------

Check = Literal["", "handled", "key", "op"]
"""What a write's row count must show: nothing (``""``); the handled delivery found as read,
one row changed (``"handled"``); the idempotency record inserted, one row (``"key"``); the
finished op's pending row deleted, one row (``"op"``)."""


class Write(NamedTuple):
    """One statement of a commit, run once per row of parameters (in order)."""

    sql: str
    rows: Sequence[tuple[object, ...]]
    check: Check = ""


_PUT_KV = (
    "INSERT INTO kv (kind, id, key, value) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (kind, id, key) DO UPDATE SET value = EXCLUDED.value"
)
_PUT_RESPONSE = (
    "INSERT INTO idempotency (kind, id, key, response, created_at, request_sha)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (kind, id, key) DO NOTHING"
)
_PUT_DELIVERY = (
    "INSERT INTO deliveries (kind, id, delivery_id, due_at, event_kind, payload,"
    " every_s, catch_up, created_at, idempotency_key, attempts, last_error)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, NULL)"
    " ON CONFLICT (kind, id, delivery_id) DO UPDATE SET due_at = EXCLUDED.due_at,"
    " event_kind = EXCLUDED.event_kind, payload = EXCLUDED.payload,"
    " every_s = EXCLUDED.every_s, catch_up = EXCLUDED.catch_up,"
    " idempotency_key = EXCLUDED.idempotency_key, attempts = 0, last_error = NULL"
)
_DELETE_DELIVERY = "DELETE FROM deliveries WHERE kind = ? AND id = ? AND delivery_id = ?"
_DEAD_LETTER_FROM_DELIVERY = (
    "INSERT INTO dead_letters (kind, id, delivery_id, event_kind, payload, attempts,"
    " last_error, failed_at) SELECT kind, id, delivery_id, event_kind, payload,"
    " attempts + 1, ?, ? FROM deliveries WHERE kind = ? AND id = ? AND delivery_id = ?"
    " ON CONFLICT (kind, id, delivery_id) DO UPDATE SET event_kind = EXCLUDED.event_kind,"
    " payload = EXCLUDED.payload, attempts = EXCLUDED.attempts,"
    " last_error = EXCLUDED.last_error, failed_at = EXCLUDED.failed_at"
)
_PUT_JOURNAL = (
    "INSERT INTO journal (kind, id, message_id, seq, capability, call, request_sha,"
    " ok, value, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (kind, id, message_id, seq) DO UPDATE SET"
    " capability = EXCLUDED.capability, call = EXCLUDED.call,"
    " request_sha = EXCLUDED.request_sha, ok = EXCLUDED.ok, value = EXCLUDED.value"
)
_PUT_PENDING_OP = (
    "INSERT INTO pending_ops (kind, id, op_key, capability, call, request, handler,"
    " tag, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_ADD_USAGE = (
    "INSERT INTO usage AS u (kind, id, day, llm_input_tokens, llm_output_tokens,"
    " http_calls, cpu_ms, turns, errors) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (kind, id, day) DO UPDATE SET"
    " llm_input_tokens = u.llm_input_tokens + EXCLUDED.llm_input_tokens,"
    " llm_output_tokens = u.llm_output_tokens + EXCLUDED.llm_output_tokens,"
    " http_calls = u.http_calls + EXCLUDED.http_calls,"
    " cpu_ms = u.cpu_ms + EXCLUDED.cpu_ms, turns = u.turns + EXCLUDED.turns,"
    " errors = u.errors + EXCLUDED.errors"
)


def checked_bytes(value: object, what: str) -> bytes:
    """``value``; TypeError unless it is bytes."""
    if not isinstance(value, bytes):
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}")
    return value


def commit_writes(commit: Commit, keys: Keys) -> list[Write]:
    """The statements of ``commit`` in the order they apply, every value checked first
    (TypeError, ValueError): a turn's record, kv writes and response; the delivery handled
    or failed; then cancelled and new deliveries, the journal, pending ops and usage."""
    if not commit.turn and (
        commit.state is not None or commit.kv_writes or commit.idempotency_key is not None
    ):
        raise ValueError("only a turn's commit carries state, kv writes or a response")
    kind, agent_id = commit.address.kind, commit.address.id
    at = float(commit.at)
    writes: list[Write] = []
    if commit.turn:
        writes.append(_record_write(commit, at))
    writes += _kv_writes(commit, keys)
    if commit.idempotency_key is not None:
        if not isinstance(commit.idempotency_key, str):
            raise TypeError(
                f"idempotency key must be str, not {type(commit.idempotency_key).__name__}"
            )
        response = checked_bytes(commit.response, "response")
        row = (kind, agent_id, commit.idempotency_key, response, at, commit.request_sha)
        writes.append(Write(_PUT_RESPONSE, [row], "key"))
    if commit.handled is not None:
        writes.append(_handled_write(commit.address, commit.handled))
    if commit.failed_delivery is not None:
        writes += _failed_writes(commit.address, commit.failed_delivery, at)
    if commit.cancelled:
        cancelled = [(kind, agent_id, delivery_id) for delivery_id in commit.cancelled]
        writes.append(Write(_DELETE_DELIVERY, cancelled))
    if commit.deliveries:
        writes.append(Write(_PUT_DELIVERY, [_delivery_row(d, at) for d in commit.deliveries]))
    if commit.clear_journal is not None:
        writes.append(
            Write(
                "DELETE FROM journal WHERE kind = ? AND id = ? AND message_id = ?",
                [(kind, agent_id, commit.clear_journal)],
            )
        )
    if commit.journal:
        writes.append(Write(_PUT_JOURNAL, [_journal_row(commit, e, at) for e in commit.journal]))
    if commit.op_finished is not None:
        # Checked: an op run twice (a stale read of the pending ops) must not hand its
        # result to the agent twice.
        writes.append(
            Write(
                "DELETE FROM pending_ops WHERE kind = ? AND id = ? AND op_key = ?",
                [(kind, agent_id, commit.op_finished)],
                "op",
            )
        )
    if commit.ops_started:
        rows = [_pending_op_row(commit, op, at) for op in commit.ops_started]
        writes.append(Write(_PUT_PENDING_OP, rows))
    if commit.usage is not None:
        writes.append(Write(_ADD_USAGE, [_usage_row(commit, commit.usage)]))
    return writes


def check_write(commit: Commit, check: Check, rowcount: int) -> None:
    """Raise unless a write of ``commit`` did what its ``check`` asks: AlreadyHandled when the
    handled delivery was gone or moved, or the finished op's pending row was gone (its result
    was handed over already); ValueError when the idempotency key was recorded already
    (raising rolls the commit back)."""
    if check == "handled" and rowcount != 1:
        assert commit.handled is not None
        raise AlreadyHandled(
            f"delivery {commit.handled.delivery_id!r} of {commit.address} was handled already"
        )
    if check == "op" and rowcount != 1:
        raise AlreadyHandled(f"op {commit.op_finished!r} of {commit.address} was finished already")
    if check == "key" and rowcount != 1:
        raise ValueError(f"idempotency key {commit.idempotency_key!r} is already recorded")


def _record_write(commit: Commit, at: float) -> Write:
    """One more turn in the agent's record, with its new state and kv size if they changed."""
    sets = ["turns = agents.turns + EXCLUDED.turns", "updated_at = EXCLUDED.updated_at"]
    state = commit.state
    if state is not None:
        checked_bytes(state, "state")
        sets += ["state = EXCLUDED.state", "state_bytes = EXCLUDED.state_bytes"]
    if commit.kv_bytes is not None:
        sets.append("kv_bytes = EXCLUDED.kv_bytes")
    return Write(
        "INSERT INTO agents (kind, id, state, state_bytes, kv_bytes, turns, created_at,"
        " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        f" ON CONFLICT (kind, id) DO UPDATE SET {', '.join(sets)}",
        [
            (
                commit.address.kind,
                commit.address.id,
                state,
                0 if state is None else len(state),
                commit.kv_bytes or 0,
                commit.turns,
                at,
                at,
            )
        ],
    )


def _kv_writes(commit: Commit, keys: Keys) -> list[Write]:
    """The kv keys a commit deletes, then the ones it puts."""
    kind, agent_id = commit.address.kind, commit.address.id
    deletes: list[tuple[object, ...]] = []
    puts: list[tuple[object, ...]] = []
    for key, value in commit.kv_writes.items():
        stored = keys.param(key)
        if value is None:
            deletes.append((kind, agent_id, stored))
        else:
            puts.append((kind, agent_id, stored, checked_bytes(value, f"kv value of key {key!r}")))
    writes: list[Write] = []
    if deletes:
        writes.append(Write("DELETE FROM kv WHERE kind = ? AND id = ? AND key = ?", deletes))
    if puts:
        writes.append(Write(_PUT_KV, puts))
    return writes


def _handled_write(address: AgentAddress, handled: Handled) -> Write:
    """Remove or re-arm the handled delivery; checked when the handler saw its due time."""
    params: tuple[object, ...] = (address.kind, address.id, handled.delivery_id)
    condition = "kind = ? AND id = ? AND delivery_id = ?"
    if handled.due_at is not None:
        condition += " AND due_at = ?"
        params += (float(handled.due_at),)
    check: Check = "" if handled.due_at is None else "handled"
    if handled.next_due is None:
        return Write(f"DELETE FROM deliveries WHERE {condition}", [params], check)
    return Write(
        f"UPDATE deliveries SET due_at = ?, attempts = 0, last_error = NULL WHERE {condition}",
        [(float(handled.next_due), *params)],
        check,
    )


def _failed_writes(address: AgentAddress, failed: FailedDelivery, at: float) -> list[Write]:
    """Count a failed attempt: retry later, or move the delivery to the dead letters."""
    params = (address.kind, address.id, failed.delivery_id)
    if failed.retry_at is not None:
        return [
            Write(
                "UPDATE deliveries SET due_at = ?, attempts = attempts + 1, last_error = ?"
                " WHERE kind = ? AND id = ? AND delivery_id = ?",
                [(float(failed.retry_at), failed.error, *params)],
            )
        ]
    return [
        Write(_DEAD_LETTER_FROM_DELIVERY, [(failed.error, at, *params)]),
        Write(_DELETE_DELIVERY, [params]),
    ]


def _delivery_row(delivery: Delivery, at: float) -> tuple[object, ...]:
    return (
        delivery.address.kind,
        delivery.address.id,
        delivery.delivery_id,
        float(delivery.due_at),
        delivery.event_kind,
        checked_bytes(delivery.payload, "delivery payload"),
        delivery.every_s,
        delivery.catch_up,
        at,
        delivery.idempotency_key,
    )


def _journal_row(commit: Commit, entry: JournalEntry, at: float) -> tuple[object, ...]:
    return (
        commit.address.kind,
        commit.address.id,
        entry.message_id,
        entry.seq,
        entry.capability,
        entry.call,
        entry.request_sha,
        bool(entry.ok),
        checked_bytes(entry.value, "journal value"),
        at,
    )


def _pending_op_row(commit: Commit, op: PendingOp, at: float) -> tuple[object, ...]:
    return (
        commit.address.kind,
        commit.address.id,
        op.op_key,
        op.capability,
        op.call,
        checked_bytes(op.request, "op request"),
        op.handler,
        checked_bytes(op.tag, "op tag"),
        at,
    )


def _usage_row(commit: Commit, used: Usage) -> tuple[object, ...]:
    return (
        commit.address.kind,
        commit.address.id,
        commit.usage_day,
        used.llm_input_tokens,
        used.llm_output_tokens,
        used.http_calls,
        float(used.cpu_ms),
        used.turns,
        used.errors,
    )
