"""``kv``: per-agent key/value storage, committed with the turn.

Keys live in the agent's own namespace: the store is always addressed with the turn's
agent address, so no key string reaches another agent's data.
"""

from __future__ import annotations

from pydantic import Field

from ..core.turn import TurnContext
from ..errors import QuotaExceeded
from ._base import BaseGrant, Capability, host_call

MAX_KEY_BYTES = 512
MAX_KEYS_LISTED = 10_000


class KvGrant(BaseGrant):
    max_value_bytes: int = Field(1024 * 1024, ge=1)
    """Largest single value."""


class Kv(Capability):
    """Per-agent key/value storage with bytes values."""

    name = "kv"
    Grant = KvGrant
    grant: KvGrant

    @host_call("get", fallback=None)
    def get(self, turn: TurnContext, key: str) -> bytes | None:
        _check_key(key)
        return _lookup(turn, key)

    @host_call("set")
    def set(self, turn: TurnContext, key: str, value: bytes) -> None:
        _check_key(key)
        if len(value) > self.grant.max_value_bytes:
            raise QuotaExceeded(
                f"kv value for {key!r} is {len(value)} bytes; the kv grant allows "
                f"max_value_bytes = {self.grant.max_value_bytes}"
            )
        old = _lookup(turn, key)
        key_len = len(key.encode())
        delta = key_len + len(value) - (key_len + len(old) if old is not None else 0)
        if turn.kv_bytes + delta > turn.limits.max_kv_bytes:
            raise QuotaExceeded(
                f"kv quota exceeded: writing {key!r} would make {turn.kv_bytes + delta} bytes; "
                f"the kind allows limits.max_kv_bytes = {turn.limits.max_kv_bytes}"
            )
        turn.kv_bytes += delta
        turn.kv_writes[key] = bytes(value)

    @host_call("delete", fallback=None)
    def delete(self, turn: TurnContext, key: str) -> None:
        _check_key(key)
        old = _lookup(turn, key)
        if old is not None:
            turn.kv_bytes -= len(key.encode()) + len(old)
            turn.kv_writes[key] = None

    @host_call("keys", fallback=[])
    def keys(self, turn: TurnContext, prefix: str, limit: int) -> list[str]:
        limit = min(limit, MAX_KEYS_LISTED)
        written = {k: v for k, v in turn.kv_writes.items() if k.startswith(prefix)}
        committed = turn.store.read_kv_keys(turn.address, prefix, limit + len(written))
        keys = {k for k in committed if k not in written}
        keys.update(k for k, v in written.items() if v is not None)
        return sorted(keys)[:limit]


def _lookup(turn: TurnContext, key: str) -> bytes | None:
    if key in turn.kv_writes:
        return turn.kv_writes[key]
    return turn.store.read_kv(turn.address, key)


def _check_key(key: str) -> None:
    if not key or len(key.encode()) > MAX_KEY_BYTES:
        raise QuotaExceeded(f"kv keys must be 1-{MAX_KEY_BYTES} bytes, got {len(key.encode())}")
