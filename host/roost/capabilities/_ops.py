"""Helpers shared by capabilities whose async ops take a msgpack request."""

from __future__ import annotations

from typing import Any

from ..errors import CapabilityDenied
from ..payload import pack, unpack
from ._base import Continuation


def decode_request(call: str, request: bytes) -> dict[str, Any]:
    """A request map, or a clear error naming the call."""
    try:
        fields = unpack(request)
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
    return pack(value)
