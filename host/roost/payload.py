"""The payload codec: msgpack between host and guests, JSON at the edges.

Every value that crosses the ABI (messages, replies, state, op requests and results) is
msgpack: :func:`pack` and :func:`unpack`. The CLI and the HTTP API show msgpack values as
JSON with :func:`to_json`: bytes become base64 text and map keys that are not strings
become their JSON text; nothing else in a msgpack value lacks a JSON form.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import msgpack

from .errors import InvalidMessage


def pack(value: Any) -> bytes:
    """``value`` as msgpack; InvalidMessage naming the type msgpack cannot carry."""
    try:
        return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidMessage(
            f"the value cannot be encoded as msgpack ({exc}); use None, bool, int, float, "
            "str, bytes, lists and dicts"
        ) from None


def unpack(data: bytes) -> Any:
    """The value msgpack ``data`` holds (maps may have keys of any type)."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def to_json(value: Any, *, ensure_ascii: bool = True) -> str:
    return json.dumps(value, default=_json_default, ensure_ascii=ensure_ascii)


def _json_default(value: object) -> object:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    return repr(value)
