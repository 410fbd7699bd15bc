"""The seam between agents and durable storage.

An agent actor only ever talks to a :class:`StateStore`. The SQLite store is the embedded
default; a PostgreSQL store implements the same protocol for several hosts.

Reads that a guest makes during a turn (``kv.get``) happen on the worker thread that runs the
guest, so the ``read_*`` methods are synchronous and must be thread-safe. Everything else is
async and is called from the trio loop.

Writes (turn commits, deletes, forks, pruning) are applied in the order they were called: a
delete called after a commit sees that commit applied.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeAlias

from ..address import AgentAddress


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """What the store holds for one agent, minus its kv entries."""

    state: bytes | None
    """The last committed state (msgpack), or None if the agent never committed any."""
    kv_bytes: int
    """Total size of the agent's kv keys and values, in bytes."""
    turns: int
    """Number of committed turns."""
    created_at: float
    updated_at: float


CatchUp = Literal["once", "all", "skip"]
"""What a recurring timer does about occurrences missed while the host was down: fire once,
fire every missed occurrence, or skip them."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """An event due for an agent at a time: a durable timer, or a message from another
    agent (an outbox entry, due at once). It stays in the store until a turn of the
    receiving agent that handled it commits (at-least-once)."""

    address: AgentAddress
    """The agent that receives it."""
    delivery_id: str
    due_at: float
    """Unix time."""
    event_kind: str
    """``timer`` or ``agent``."""
    payload: bytes
    """msgpack."""
    every_s: float | None = None
    """Repeat period for recurring timers."""
    catch_up: CatchUp = "once"


@dataclass(frozen=True, slots=True)
class Usage:
    """What one agent used on one UTC day."""

    llm_input_tokens: int = 0
    llm_output_tokens: int = 0
    http_calls: int = 0
    cpu_ms: float = 0.0
    turns: int = 0
    errors: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.llm_input_tokens + other.llm_input_tokens,
            self.llm_output_tokens + other.llm_output_tokens,
            self.http_calls + other.http_calls,
            self.cpu_ms + other.cpu_ms,
            self.turns + other.turns,
            self.errors + other.errors,
        )

    @property
    def llm_tokens(self) -> int:
        return self.llm_input_tokens + self.llm_output_tokens


@dataclass(frozen=True, slots=True)
class TurnCommit:
    """The effects of one successful turn, committed atomically or not at all."""

    address: AgentAddress
    state: bytes | None
    """New state, or None when the turn left it unchanged."""
    kv_writes: Mapping[str, bytes | None] = field(default_factory=dict)
    """Key -> new value; None deletes the key."""
    kv_bytes: int = 0
    """The agent's total kv bytes after this commit (the actor tracks it)."""
    at: float = 0.0
    """Wall-clock time of the turn (unix seconds)."""
    idempotency_key: str | None = None
    """When set, the commit also records ``response`` under this key (see
    :meth:`StateStore.load_response`), in the same transaction as the turn's effects. A turn
    that changes neither state nor kv may be committed just to record its response: it still
    counts as a turn and sets ``updated_at``. If the agent already holds a record under this
    key, the whole commit fails (StorageError) and nothing of the turn is written."""
    response: bytes | None = None
    """The turn's final response (opaque bytes); required when ``idempotency_key`` is set,
    ignored otherwise."""
    deliveries: Sequence[Delivery] = ()
    """Timers the turn set (for itself) and messages it sent (to others); a delivery with
    the id of an existing one of the same agent replaces it."""
    cancelled: Sequence[str] = ()
    """Ids of the agent's own timers the turn cancelled."""
    handled: tuple[str, float | None] | None = None
    """The delivery this turn handled: (id, next due time for a recurring timer, or None to
    delete it)."""
    usage: Usage | None = None
    """Usage to add for ``usage_day`` (the turn itself, its CPU time)."""
    usage_day: str = ""


@dataclass(frozen=True, slots=True)
class AgentSummary:
    """One row of :meth:`StateStore.list_agents`."""

    id: str
    state_bytes: int
    """Size of the last committed state, in bytes (0 if none)."""
    kv_bytes: int
    """Total size of the agent's kv keys and values, in bytes."""
    turns: int
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class AgentExport:
    """Everything the store holds for one agent (see :meth:`StateStore.export_agent`)."""

    record: AgentRecord
    kv: dict[str, bytes]
    """Every kv entry, in key order."""
    responses: int
    """Number of idempotency records held for the agent."""
    deliveries: list[Delivery] = field(default_factory=list)
    """Its pending timers and the messages waiting for it, earliest first."""


ForkResult: TypeAlias = Literal["forked", "source_missing", "target_exists"]
"""Outcome of :meth:`StateStore.fork_agent`; nothing is written unless ``"forked"``."""


class StateStore(Protocol):
    """Durable per-agent state, kv and bookkeeping."""

    async def load_agent(self, address: AgentAddress) -> AgentRecord | None:
        """The agent's record, or None if it has never committed a turn."""
        ...

    def read_agent(self, address: AgentAddress) -> AgentRecord | None:
        """Same as :meth:`load_agent`, for a worker thread that activates the agent."""
        ...

    def read_deliveries(self, address: AgentAddress) -> list[Delivery]:
        """The agent's pending timers and incoming messages, earliest first (thread-safe)."""
        ...

    def read_kv(self, address: AgentAddress, key: str) -> bytes | None:
        """The committed value of ``key`` in the agent's own namespace (thread-safe)."""
        ...

    def read_kv_keys(self, address: AgentAddress, prefix: str, limit: int) -> list[str]:
        """Up to ``limit`` committed keys starting with ``prefix``, sorted (thread-safe)."""
        ...

    async def commit_turn(self, commit: TurnCommit) -> None:
        """Apply one turn's effects in one transaction. Raises StorageError on failure,
        in which case nothing of the turn was written."""
        ...

    def write_turn(self, commit: TurnCommit) -> None:
        """Same as :meth:`commit_turn`, for the worker thread that ran the turn (blocking,
        thread-safe)."""
        ...

    def try_write_turn(self, commit: TurnCommit) -> bool:
        """Write the commit now if that means no waiting (no other write in progress, no
        fsync); False, having written nothing, otherwise. For the event loop."""
        ...

    async def load_response(self, address: AgentAddress, key: str) -> bytes | None:
        """The response committed with idempotency key ``key`` for the agent, or None if no
        turn of the agent committed that key (or its record was pruned)."""
        ...

    async def due_deliveries(self, now: float, limit: int) -> list[Delivery]:
        """Deliveries due at or before ``now``, earliest first."""
        ...

    async def next_due_at(self) -> float | None:
        """When the earliest delivery is due, or None if there are none."""
        ...

    def read_usage(self, address: AgentAddress, day: str) -> Usage:
        """The agent's usage on ``day`` (``YYYY-MM-DD``, UTC) (thread-safe)."""
        ...

    async def add_usage(self, address: AgentAddress, day: str, usage: Usage) -> None:
        """Add to the agent's usage on ``day``."""
        ...

    async def add_delivery(self, delivery: Delivery) -> None:
        """Store a delivery outside any turn (the result of a continuation-form op)."""
        ...

    async def reschedule_delivery(
        self, address: AgentAddress, delivery_id: str, due_at: float | None
    ) -> None:
        """Move a delivery to ``due_at``, or delete it when None (skipped occurrences,
        messages to kinds that no longer exist)."""
        ...

    async def prune_responses(self, older_than: float) -> int:
        """Delete every idempotency record created before ``older_than`` (unix seconds, the
        ``at`` of the turn that recorded it). Returns how many were deleted."""
        ...

    async def delete_agent(self, address: AgentAddress) -> bool:
        """Delete the agent's record, kv entries and idempotency records in one transaction,
        ordered with the writes called before it. Returns whether there was anything to
        delete."""
        ...

    async def fork_agent(self, source: AgentAddress, target: AgentAddress) -> ForkResult:
        """Copy ``source``'s state and kv entries to ``target`` (of the same kind or another) in
        one transaction, ordered with the writes called before it. The copy starts with 0 turns,
        no idempotency records and ``created_at``/``updated_at`` set to now.

        Returns ``"source_missing"`` if ``source`` has no record, ``"target_exists"`` if
        ``target`` already has any rows (record, kv entries or idempotency records); nothing is
        written in either case."""
        ...

    async def list_agents(self, kind: str, *, after: str | None, limit: int) -> list[AgentSummary]:
        """Up to ``limit`` agents of ``kind`` whose ids sort strictly after ``after`` (all when
        None), ordered by id. Page by passing the last id of one page as ``after``."""
        ...

    async def export_agent(self, address: AgentAddress) -> AgentExport | None:
        """A consistent snapshot of everything held for the agent, or None if it has neither
        a record nor kv entries."""
        ...

    async def count_agents(self, kind: str | None = None) -> int:
        """Number of agents with committed turns (of one kind, or all)."""
        ...

    async def stored_bytes(self, kind: str | None = None) -> int:
        """Bytes of state and kv held for agents (of one kind, or all)."""
        ...
