"""The payload codec: msgpack between host and guests, JSON at the edges.

Every value that crosses the ABI (messages, replies, state, op requests and results) is
msgpack: :func:`pack` and :func:`unpack`. The CLI and the HTTP API read JSON with
:func:`from_json` (strict: no NaN or Infinity, numbers of at most 4,300 digits, at most
:data:`MAX_DEPTH` levels of nesting) and show msgpack values as JSON with :func:`to_json`:
bytes become base64 text, map keys that are not strings their JSON text, and the floats
JSON has no literal for the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``.
"""

from __future__ import annotations

import base64
import json
import math
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


MAX_DEPTH = 64
"""Most levels of nesting in a message or a reply (lists and maps inside each other)."""


def from_json(text: str | bytes, *, what: str = "request body") -> Any:
    """A JSON document, or InvalidMessage saying what is wrong with it."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidMessage(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidMessage(
            f"{what} is nested too deeply; at most {MAX_DEPTH} levels of lists and objects"
        ) from None
    except ValueError as exc:  # Python's limit on the digits of an integer
        raise InvalidMessage(f"{what} holds a number too long to read: {exc}") from None
    if nested_deeper(value, MAX_DEPTH):
        raise InvalidMessage(
            f"{what} is nested too deeply; at most {MAX_DEPTH} levels of lists and objects"
        )
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidMessage(f"{text} is too large for a number (it reads as Infinity)")
    return value


def _refuse_constant(name: str) -> Any:
    raise InvalidMessage(f"{name} is not a JSON value; send a number, or null")


def nested_deeper(value: Any, limit: int) -> bool:
    """Whether ``value`` holds lists and maps more than ``limit`` levels deep."""
    if not isinstance(value, list | dict):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, list | dict):
                stack.append((child, depth + 1))
    return False


def to_json(value: Any, *, ensure_ascii: bool = True) -> str:
    try:
        return json.dumps(value, default=_json_default, ensure_ascii=ensure_ascii, allow_nan=False)
    except (ValueError, RecursionError):  # a non-finite float, or nesting JSON cannot take
        return json.dumps(
            _representable(value, 0), default=_json_default, ensure_ascii=ensure_ascii
        )


def _representable(value: Any, depth: int) -> Any:
    """``value`` with non-finite floats as strings and what is nested past MAX_DEPTH cut."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, list | tuple | dict) and depth >= MAX_DEPTH:
        return f"<nested deeper than {MAX_DEPTH} levels>"
    if isinstance(value, list | tuple):
        return [_representable(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {
            (k if isinstance(k, str | int | float | bool) or k is None else _json_key(k)): (
                _representable(v, depth + 1)
            )
            for k, v in value.items()
        }
    return value


def _json_key(key: Any) -> str:
    return json.dumps(key, default=_json_default)


def _json_default(value: object) -> object:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    return repr(value)
