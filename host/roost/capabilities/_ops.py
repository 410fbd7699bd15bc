"""Helpers shared by capabilities whose async ops take a msgpack request."""

from __future__ import annotations

from typing import Any

import msgpack

from ..core.turn import Continuation
from ..errors import CapabilityDenied


def decode_request(call: str, request: bytes) -> dict[str, Any]:
    """A request map, or a clear error naming the call."""
    try:
        fields = msgpack.unpackb(request, raw=False, strict_map_key=False)
    except Exception as exc:
        raise CapabilityDenied(f"{call}: request is not msgpack: {exc}") from None
    if not isinstance(fields, dict):
        raise CapabilityDenied(f"{call}: request must be a map, got {type(fields).__name__}")
    return fields


def continuation_of(fields: dict[str, Any]) -> Continuation | None:
    """The continuation form: ``then`` names the handler that receives the result."""
    handler = fields.get("then")
    if handler is None:
        return None
    if not isinstance(handler, str) or not handler.isidentifier() or handler.startswith("_"):
        raise CapabilityDenied(f"`then` must name a public handler method, got {handler!r}")
    return Continuation(handler, fields.get("tag"))


def encode_result(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]
