"""The roost:agent ABI as the host sees it: names and versions, no wasmtime."""

from __future__ import annotations

from pathlib import Path

import roost_sdk

WIT_DIR = Path(roost_sdk.__file__).parent / "wit"
"""The WIT package agents are built against."""
WIT_PACKAGE = "roost:agent"
WIT_VERSION = "0.1.0"
TYPES_INTERFACE = "types"
"""Interface holding only types; every component may import it."""


def interface_name(capability: str) -> str:
    """The component import name of a capability's interface, e.g. ``roost:agent/kv@0.1.0``."""
    return f"{WIT_PACKAGE}/{capability}@{WIT_VERSION}"


def capability_of(import_name: str) -> str | None:
    """The capability an import names, or None if it is not a roost:agent interface."""
    prefix = f"{WIT_PACKAGE}/"
    if not import_name.startswith(prefix):
        return None
    rest = import_name[len(prefix) :]
    name, _, version = rest.partition("@")
    if version and version != WIT_VERSION:
        return None
    return name
