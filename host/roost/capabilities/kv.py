"""``kv``: per-agent key/value storage, committed with the turn.

Keys live in the agent's own namespace: the store is always addressed with the turn's
agent address, so no key string reaches another agent's data. Writes are buffered in the
turn and committed with it; reads see the turn's own writes first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import Field

from ..errors import QuotaExceeded
from ._base import BaseGrant, Capability, TurnEffects, TurnView, host_call

MAX_KEY_BYTES = 512
MAX_KEYS_LISTED = 10_000


class KvGrant(BaseGrant):
    max_value_bytes: int = Field(1024 * 1024, ge=1)
    """Largest single value."""


@dataclass(slots=True)
class KvTurn:
    """A turn's buffered kv writes."""

    kv_bytes: int
    """The agent's kv bytes, including the buffered writes."""
    writes: dict[str, bytes | None] = field(default_factory=dict)
    """Key -> new value; None deletes the key."""


class Kv(Capability[KvTurn]):
    """Per-agent key/value storage with bytes values."""

    name = "kv"
    Grant = KvGrant
    grant: KvGrant

    def begin_turn(self, turn: TurnView) -> KvTurn:
        record = turn.reads.read_agent(turn.address)
        return KvTurn(kv_bytes=0 if record is None else record.kv_bytes)

    def add_effects(self, state: KvTurn, effects: TurnEffects) -> None:
        if state.writes:
            effects.kv_writes.update(state.writes)
            effects.kv_bytes = state.kv_bytes

    @host_call("get", fallback=None)
    def get(self, turn: TurnView, key: str) -> bytes | None:
        _check_key(key)
        return _lookup(turn, self.state(turn), key)

    @host_call("set")
    def set(self, turn: TurnView, key: str, value: bytes) -> None:
        _check_key(key)
        if len(value) > self.grant.max_value_bytes:
            raise QuotaExceeded(
                f"kv value for {key!r} is {len(value)} bytes; the kv grant allows "
                f"max_value_bytes = {self.grant.max_value_bytes}"
            )
        state = self.state(turn)
        old = _lookup(turn, state, key)
        key_len = len(key.encode())
        delta = key_len + len(value) - (key_len + len(old) if old is not None else 0)
        if state.kv_bytes + delta > turn.limits.max_kv_bytes:
            raise QuotaExceeded(
                f"kv quota exceeded: writing {key!r} would make {state.kv_bytes + delta} "
                f"bytes; the kind allows limits.max_kv_bytes = {turn.limits.max_kv_bytes}"
            )
        state.kv_bytes += delta
        state.writes[key] = bytes(value)

    @host_call("delete", fallback=None)
    def delete(self, turn: TurnView, key: str) -> None:
        _check_key(key)
        state = self.state(turn)
        old = _lookup(turn, state, key)
        if old is not None:
            state.kv_bytes -= len(key.encode()) + len(old)
            state.writes[key] = None

    @host_call("keys", fallback=[])
    def keys(self, turn: TurnView, prefix: str, limit: int) -> list[str]:
        limit = min(limit, MAX_KEYS_LISTED)
        state = self.state(turn)
        written = {k: v for k, v in state.writes.items() if k.startswith(prefix)}
        committed = turn.reads.read_kv_keys(turn.address, prefix, limit + len(written))
        keys = {k for k in committed if k not in written}
        keys.update(k for k, v in written.items() if v is not None)
        return sorted(keys)[:limit]


def _lookup(turn: TurnView, state: KvTurn, key: str) -> bytes | None:
    if key in state.writes:
        return state.writes[key]
    return turn.reads.read_kv(turn.address, key)


def _check_key(key: str) -> None:
    if not key or len(key.encode()) > MAX_KEY_BYTES:
        raise QuotaExceeded(f"kv keys must be 1-{MAX_KEY_BYTES} bytes, got {len(key.encode())}")
