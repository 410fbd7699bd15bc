"""The seam between agents and durable storage.

An agent actor only ever talks to a :class:`StateStore`. The SQLite store is the embedded
default; a PostgreSQL store implements the same protocol for several hosts.

Reads that a guest makes during a turn (``kv.get``) happen on the worker thread that runs the
guest, so the ``read_*`` methods are synchronous and must be thread-safe. Everything else is
async and is called from the trio loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

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


class StateStore(Protocol):
    """Durable per-agent state, kv and bookkeeping."""

    async def load_agent(self, address: AgentAddress) -> AgentRecord | None:
        """The agent's record, or None if it has never committed a turn."""
        ...

    def read_agent(self, address: AgentAddress) -> AgentRecord | None:
        """Same as :meth:`load_agent`, for a worker thread that activates the agent."""
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

    async def count_agents(self, kind: str | None = None) -> int:
        """Number of agents with committed turns (of one kind, or all)."""
        ...

    async def stored_bytes(self, kind: str | None = None) -> int:
        """Bytes of state and kv held for agents (of one kind, or all)."""
        ...
