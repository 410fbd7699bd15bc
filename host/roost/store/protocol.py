"""The seam between the host and durable storage: :class:`StateStore`.

A store has two parts, both synchronous, blocking and thread-safe:

- the **turn side**: the reads a turn makes while its guest runs (on the worker thread that
  runs the guest), and :meth:`~StateStore.commit`, the one path by which anything about an
  agent is written: a turn's effects, and the host's own bookkeeping (the usage of a failed
  turn, an op's result handed back as a delivery, a delivery moved or dropped);
- the **admin side**: what the host and its API ask outside turns (idempotency records,
  due deliveries, erase, fork, export, listing, counts).

Async code reaches either part through :class:`~roost.store.AsyncStore`, one generic adapter
that runs these methods on worker threads; a store implements no async twins.

Writes are applied in the order they were called: a delete called after a commit returned
sees that commit. A new backend is what passes ``tests/store/test_conformance.py``.

Leases
------
Several hosts may share one store (PostgreSQL). Each agent is then owned by at most one host
at a time, through a **lease** held in the store: :meth:`~StateStore.acquire_lease` before
the host activates the agent, :meth:`~StateStore.renew_leases` in batches while it holds
them, :meth:`~StateStore.release_leases` when it hibernates. Every lease carries a
**fencing token** that grows at each change of holder; every commit about an agent carries
the token its host holds (:attr:`Commit.fence`), and the store checks it in the commit's own
transaction, so a host that lost the lease (paused past its expiry, cut off) cannot commit
anything. A lease holder is a host *incarnation*, ``"<host id>/<nonce>"``: a host restarted
under the same id takes over the leases of its previous incarnation at once.

A store that is not ``shared`` (SQLite: one host) keeps leases in memory; its lease calls
never block.
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
    """An event due for an agent at a time: a durable timer, a message from another agent
    (an outbox entry, due at once), or the result of a continuation-form op. It stays in the
    store until a commit of the receiving agent names it as handled (at-least-once delivery,
    exactly-once handling)."""

    address: AgentAddress
    """The agent that receives it."""
    delivery_id: str
    due_at: float
    """Unix time."""
    event_kind: str
    """``timer``, ``agent`` or ``continuation``."""
    payload: bytes
    """msgpack."""
    every_s: float | None = None
    """Repeat period for recurring timers."""
    catch_up: CatchUp = "once"
    idempotency_key: str | None = None
    """For a message kept in the inbox (a handler that spans turns): its idempotency key."""
    attempts: int = 0
    """Failed attempts to deliver it so far."""
    last_error: str | None = None
    """Why the last attempt failed."""


INBOX_KINDS = ("message", "agent")
"""Event kinds of deliveries that are inbox entries: messages accepted, handler running."""


@dataclass(frozen=True, slots=True)
class Handled:
    """The delivery a commit handles. The commit fails (AlreadyHandled) and writes nothing
    when the delivery is gone or was moved since ``due_at`` was read: each occurrence is
    handled once."""

    delivery_id: str
    next_due: float | None = None
    """Re-arm a recurring timer at this time; None deletes the delivery."""
    due_at: float | None = None
    """The due time the handler saw (None: do not check it)."""


@dataclass(frozen=True, slots=True)
class FailedDelivery:
    """An attempt to deliver failed: retry at ``retry_at``, or give up (None) and move the
    delivery to the agent's dead letters."""

    delivery_id: str
    error: str
    retry_at: float | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A delivery that kept failing, kept for the operator."""

    address: AgentAddress
    delivery_id: str
    event_kind: str
    payload: bytes
    attempts: int
    last_error: str
    failed_at: float


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """The result of one op a running handler consumed, kept until the handler's final
    commit, so that a handler re-run after a crash replays it instead of running the op
    again."""

    message_id: str
    seq: int
    """The op's place among the ops the handler started (1, 2, ...)."""
    capability: str
    call: str
    request_sha: str
    ok: bool
    value: bytes
    """The result (msgpack) when ``ok``, else the error text (UTF-8)."""


@dataclass(frozen=True, slots=True)
class PendingOp:
    """A continuation-form op in flight: committed with the turn that started it and
    removed by the commit that delivers its result, so it runs again after a crash."""

    address: AgentAddress
    op_key: str
    """Unique per agent; also the op's idempotency key towards providers."""
    capability: str
    call: str
    request: bytes
    handler: str
    tag: bytes
    """msgpack."""


ApprovalDecision = Literal["approved", "rejected", "expired"]
"""How an approval was decided: by a person (``approved``, ``rejected``), or by nobody
before it expired."""


@dataclass(frozen=True, slots=True)
class Approval:
    """A person's decision an agent asked for (the ``approval`` capability): kept from the
    moment the agent's op asks until it is pruned after its decision. The row is the op's
    durable result: an op run again after a crash finds it by ``approval_id`` (derived
    from the op's idempotency key), decided or not."""

    address: AgentAddress
    approval_id: str
    """Unique per agent; URL-safe (``[A-Za-z0-9_-]``)."""
    request: bytes
    """msgpack ``{action, details}``: what the agent wants to do."""
    requested_at: float
    """Unix time."""
    expires_at: float | None = None
    """When it is decided ``expired`` if nobody decided it before (unix time)."""
    decision: ApprovalDecision | None = None
    """None while it waits."""
    decided_at: float | None = None
    decided_by: str | None = None
    """Who decided (free text from the decider's credentials; ``roost`` for an expiry)."""
    note: str | None = None
    """The decider's comment."""


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """What was recorded under an idempotency key."""

    response: bytes
    request_sha: str | None
    """A digest of the request that was handled (None for records of an earlier release)."""


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
class Commit:
    """Writes about one agent, applied atomically or not at all.

    A turn's commit has ``turn=True``: it creates or updates the agent's record (one more
    turn, ``updated_at = at``) with its new state, kv writes, deliveries and usage. Host-side
    bookkeeping commits (``turn=False``) leave the record alone and carry only deliveries,
    a handled delivery and usage."""

    address: AgentAddress
    at: float = 0.0
    """Wall-clock time of the write (unix seconds)."""
    turn: bool = True
    """Records turns of the agent (its new state and kv with them)."""
    turns: int = 1
    """How many turns a turn commit records (a handler's turns commit together)."""
    state: bytes | None = None
    """New state, or None when unchanged."""
    kv_writes: Mapping[str, bytes | None] = field(default_factory=dict)
    """Key -> new value; None deletes the key."""
    kv_bytes: int | None = None
    """The agent's total kv bytes after this commit; None when its kv did not change."""
    idempotency_key: str | None = None
    """When set, ``response`` is recorded under this key (see :meth:`StateStore.read_response`)
    in the same transaction. If the agent already holds a record under this key, the whole
    commit fails (StorageError) and nothing of it is written."""
    response: bytes | None = None
    """The final response to the message (opaque bytes); required with ``idempotency_key``."""
    request_sha: str | None = None
    """A digest of the message the response answers, kept with it."""
    deliveries: Sequence[Delivery] = ()
    """Timers the turn set (for itself) and messages it sent (to others); a delivery with the
    id of an existing one of the same agent replaces it."""
    cancelled: Sequence[str] = ()
    """Ids of the agent's own deliveries to delete (cancelled timers)."""
    handled: Handled | None = None
    """The delivery this commit handles (removed, or re-armed)."""
    failed_delivery: FailedDelivery | None = None
    """A delivery whose attempt failed: retried later or moved to the dead letters."""
    journal: Sequence[JournalEntry] = ()
    """Op results a running handler consumed."""
    clear_journal: str | None = None
    """A message whose handler finished: its journal entries are deleted."""
    ops_started: Sequence[PendingOp] = ()
    """Continuation-form ops to keep until their result is delivered."""
    op_finished: str | None = None
    """The ``op_key`` of a pending op whose result this commit delivers."""
    usage: Usage | None = None
    """Usage to add for ``usage_day``."""
    usage_day: str = ""
    fence: int | None = None
    """The fencing token of the agent's lease its host holds. When set, the commit fails
    (LeaseLost) and writes nothing unless it is the agent's lease now and has not expired.
    None: no check (single-host tools, tests)."""


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
    dead_letters: list[DeadLetter] = field(default_factory=list)
    """Deliveries that kept failing, oldest first."""
    pending_ops: list[PendingOp] = field(default_factory=list)
    """Continuation-form ops in flight."""


ForkResult: TypeAlias = Literal["forked", "source_missing", "target_exists"]
"""Outcome of :meth:`StateStore.fork_agent`; nothing is written unless ``"forked"``."""


@dataclass(frozen=True, slots=True)
class Lease:
    """An agent's lease: which host incarnation may activate the agent and commit for it."""

    address: AgentAddress
    owner: str
    """The holder: ``"<host id>/<nonce>"``."""
    token: int
    """The fencing token: grows by at least one at every change of holder."""
    expires_at: float
    """When the lease lapses unless renewed (the store's clock, unix seconds)."""
    owner_url: str | None = None
    """Where the holder serves (what it announced with :meth:`StateStore.renew_leases`)."""


def owner_host(owner: str) -> str:
    """The host id of a lease holder (``"h1/3fa9"`` -> ``"h1"``)."""
    return owner.split("/", 1)[0]


class TurnReads(Protocol):
    """The reads a running turn makes (thread-safe, blocking)."""

    def read_agent(self, address: AgentAddress) -> AgentRecord | None:
        """The agent's record, or None if it has never committed a turn."""
        ...

    def read_kv(self, address: AgentAddress, key: str) -> bytes | None:
        """The committed value of ``key`` in the agent's own namespace."""
        ...

    def read_kv_keys(self, address: AgentAddress, prefix: str, limit: int) -> list[str]:
        """Up to ``limit`` committed keys starting with ``prefix`` (literally), sorted."""
        ...

    def read_usage(self, address: AgentAddress, day: str) -> Usage:
        """The agent's usage on ``day`` (``YYYY-MM-DD``, UTC)."""
        ...

    def read_deliveries(self, address: AgentAddress) -> list[Delivery]:
        """The agent's pending deliveries (timers and messages to it), earliest first."""
        ...

    def read_journal(self, address: AgentAddress, message_id: str) -> list[JournalEntry]:
        """The op results journaled for a message of the agent, by ``seq``."""
        ...

    def read_approvals(self, address: AgentAddress) -> list[Approval]:
        """The agent's approvals, waiting and decided (until pruned), oldest first (by
        ``requested_at``, then ``approval_id``)."""
        ...


class StateStore(TurnReads, Protocol):
    """Durable per-agent state, kv and bookkeeping. Every method is thread-safe and blocks."""

    @property
    def shared(self) -> bool:
        """Whether several hosts may use the store at once (its leases are in the store).
        False: one host; leases live in memory and lease calls never block."""
        ...

    # -- the turn side: TurnReads, and the one write path ---------------------------------

    def commit(self, commit: Commit, *, wait: bool = True) -> bool:
        """Apply ``commit`` in one transaction and return True. Raises StorageError when it
        fails, in which case nothing of it was written.

        With ``wait=False`` (for the event loop) the commit is written only if that means no
        waiting (no other write in progress, no fsync); otherwise nothing is written and the
        result is False."""
        ...

    # -- the admin side -------------------------------------------------------------------

    def read_response(self, address: AgentAddress, key: str) -> IdempotencyRecord | None:
        """What was committed with idempotency key ``key`` for the agent, or None if no
        commit of the agent recorded that key (or its record was pruned)."""
        ...

    def pending_ops(self, limit: int, *, owner: str | None = None) -> list[PendingOp]:
        """Continuation-form ops in flight, oldest first (to resume after a restart). With
        ``owner``, only those of agents whose lease ``owner`` holds or could take."""
        ...

    def op_pending(self, address: AgentAddress, op_key: str) -> bool:
        """Whether the agent's continuation-form op ``op_key`` is still in flight (its
        result not handed over yet)."""
        ...

    # -- leases ---------------------------------------------------------------------------

    def acquire_lease(self, address: AgentAddress, owner: str, ttl_s: float) -> Lease:
        """Take the agent's lease for ``owner`` for ``ttl_s`` seconds and return it, when it
        is free, expired, or held by an earlier incarnation of the same host (a new token),
        or held by ``owner`` already (the same token, renewed). Otherwise nothing changes and
        the holder's lease is returned: the caller compares ``owner``."""
        ...

    def renew_leases(
        self, owner: str, url: str | None, tokens: Mapping[AgentAddress, int], ttl_s: float
    ) -> set[AgentAddress]:
        """Extend the leases ``owner`` holds (address -> token) by ``ttl_s`` from now, in one
        batch, and announce ``owner`` as serving at ``url`` for as long. Returns the
        addresses whose lease ``owner`` no longer holds (expired and taken, or never held):
        the host must stop committing for them."""
        ...

    def release_leases(self, owner: str, tokens: Mapping[AgentAddress, int]) -> None:
        """Give up leases (hibernated agents): each becomes free at once, its token kept so
        that the next holder's is larger. Leases ``owner`` does not hold are left alone."""
        ...

    def read_dead_letters(self, address: AgentAddress) -> list[DeadLetter]:
        """The agent's dead letters, oldest first."""
        ...

    def count_dead_letters(self, kind: str | None = None) -> dict[str, int]:
        """Dead letters held, by kind (of one kind, or all)."""
        ...

    def due_deliveries(self, now: float, limit: int, *, owner: str | None = None) -> list[Delivery]:
        """Deliveries due at or before ``now``, earliest first. With ``owner``, only those of
        agents whose lease ``owner`` holds or could take (free, expired, or held by an
        earlier incarnation of its host): what that host may deliver."""
        ...

    def next_due_at(self) -> float | None:
        """When the earliest delivery is due, or None if there are none."""
        ...

    def request_approval(self, approval: Approval) -> Approval:
        """Record ``approval`` (undecided: its decision fields are ignored) unless the agent
        holds an approval with its ``approval_id`` already, and return the row the store
        holds under that id afterwards: an op asking again after a crash gets the earlier
        row, with its decision if it was decided meanwhile. Thread-safe and atomic: two
        callers with the same id get the same row."""
        ...

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
        """Decide the agent's approval ``approval_id`` if it is undecided (setting
        ``decision``, ``decided_at = at``, ``decided_by = by`` and ``note``), and return the
        row afterwards. An approval decided already is left as it is (the first decision
        stands) and returned as stored. None when the agent holds no such approval."""
        ...

    def prune_approvals(self, decided_before: float) -> int:
        """Delete every approval decided before ``decided_before`` (unix seconds). Undecided
        ones are kept. Returns how many were deleted."""
        ...

    def prune_responses(self, older_than: float) -> int:
        """Delete every idempotency record created before ``older_than`` (unix seconds, the
        ``at`` of the commit that recorded it). Returns how many were deleted."""
        ...

    def delete_agent(self, address: AgentAddress) -> bool:
        """Delete everything held for the agent (record, kv, idempotency records, deliveries,
        usage, journal, pending ops, dead letters, approvals) in one transaction. Returns
        whether there was anything to delete."""
        ...

    def fork_agent(self, source: AgentAddress, target: AgentAddress) -> ForkResult:
        """Copy ``source``'s state and kv entries to ``target`` in one transaction. The copy
        starts with 0 turns, no idempotency records, no approvals and
        ``created_at``/``updated_at`` set to now. Nothing is written unless the result is
        ``"forked"``: ``"source_missing"`` if ``source`` has no record, ``"target_exists"``
        if ``target`` holds any rows."""
        ...

    def list_agents(self, kind: str, *, after: str | None, limit: int) -> list[AgentSummary]:
        """Up to ``limit`` agents of ``kind`` whose ids sort strictly after ``after`` (all when
        None), ordered by id. Page by passing the last id of one page as ``after``."""
        ...

    def export_agent(self, address: AgentAddress) -> AgentExport | None:
        """A consistent snapshot of everything held for the agent, or None if it has neither
        a record nor kv entries."""
        ...

    def count_agents(self, kind: str | None = None) -> int:
        """Number of agents with committed turns (of one kind, or all)."""
        ...

    def stored_bytes(self, kind: str | None = None) -> int:
        """Bytes of state and kv held for agents (of one kind, or all)."""
        ...
