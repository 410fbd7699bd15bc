"""The roost:agent ABI as the host sees it: names, versions and the host-call convention.

No wasmtime here: the capabilities describe their host calls with :class:`HostFunction`
and the sandbox links them, without either importing the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import roost_sdk

WIT_DIR = Path(roost_sdk.__file__).parent / "wit"
"""The WIT package agents are built against."""
WIT_PACKAGE = "roost:agent"
WIT_VERSION = "0.1.0"
TYPES_INTERFACE = "types"
"""Interface holding only types; every component may import it."""
EXPORTS = ("init", "on-event", "on-complete")
"""The functions every agent component exports."""
EVENT_KINDS = ("message", "timer", "agent", "continuation")
"""The ``kind`` of the events the host hands to ``on-event``."""


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


@dataclass(frozen=True, slots=True)
class HostCallError:
    """What a host call returns when it fails and its WIT result is ``result<T, string>``:
    the sandbox hands it to the guest as ``err(message)``."""

    message: str


@dataclass(frozen=True, slots=True)
class HostFunction:
    """One host call, ready to link: ``call`` takes the WIT arguments and returns the WIT
    result (or a :class:`HostCallError`); it never raises."""

    name: str
    """The function's name in its WIT interface."""
    call: Callable[..., Any]
    ok_is_text: bool = False
    """The WIT result is ``result<string, string>``: the sandbox must tag its cases."""
