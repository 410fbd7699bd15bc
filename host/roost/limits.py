"""Per-kind resource limits and per-agent budgets, as a manifest states them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_IDLE_TIMEOUT_S = 30.0
DEFAULT_MAX_MEMORY_BYTES = 64 * 1024 * 1024
DEFAULT_CPU_DEADLINE_MS = 1_000
DEFAULT_MAX_STATE_BYTES = 1024 * 1024
DEFAULT_MAX_KV_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_REPLY_BYTES = 1024 * 1024
DEFAULT_MAILBOX_SIZE = 64
DEFAULT_MAX_OPS_PER_TURN = 64
DEFAULT_MAX_PENDING_OPS = 256


class Limits(BaseModel):
    """Per-kind resource limits. Each violation fails only the offending agent's turn."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    idle_timeout_s: float = Field(DEFAULT_IDLE_TIMEOUT_S, gt=0)
    """Hibernate an agent after this long without events (unless an op is pending)."""
    max_memory_bytes: int = Field(DEFAULT_MAX_MEMORY_BYTES, ge=1024 * 1024)
    """Cap on the instance's linear memory."""
    cpu_deadline_ms: int = Field(DEFAULT_CPU_DEADLINE_MS, ge=10)
    """A turn that runs longer than this traps."""
    max_state_bytes: int = Field(DEFAULT_MAX_STATE_BYTES, ge=16)
    max_kv_bytes: int = Field(DEFAULT_MAX_KV_BYTES, ge=0)
    """Total size of one agent's kv keys and values."""
    max_reply_bytes: int = Field(DEFAULT_MAX_REPLY_BYTES, ge=16)
    """Total size of the replies to one event."""
    mailbox_size: int = Field(DEFAULT_MAILBOX_SIZE, ge=1)
    """Events queued for one agent before senders get AgentBusy."""
    max_ops_per_turn: int = Field(DEFAULT_MAX_OPS_PER_TURN, ge=1)
    """Async ops (sleeps, LLM and HTTP calls, asks) one turn may start."""
    max_pending_ops: int = Field(DEFAULT_MAX_PENDING_OPS, ge=1)
    """Async ops one agent's handler may have running at once."""


class Budgets(BaseModel):
    """Per-agent budgets per UTC day (storage: at any time). None means unlimited.
    Passing one fails that agent's call or event with QuotaExceeded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    llm_tokens_per_day: int | None = Field(None, ge=0)
    http_calls_per_day: int | None = Field(None, ge=0)
    cpu_ms_per_day: float | None = Field(None, ge=0)
    storage_bytes: int | None = Field(None, ge=0)
    """State plus kv bytes."""
