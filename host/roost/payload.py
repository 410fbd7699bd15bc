"""msgpack values as JSON, for the CLI and the HTTP API.

msgpack carries bytes and JSON does not: bytes become base64 text. Map keys that are not
strings become their JSON text. Nothing else in a msgpack value lacks a JSON form.
"""

from __future__ import annotations

import base64
import json
from typing import Any


def to_json(value: Any, *, ensure_ascii: bool = True) -> str:
    return json.dumps(value, default=_json_default, ensure_ascii=ensure_ascii)


def _json_default(value: object) -> object:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    return repr(value)
