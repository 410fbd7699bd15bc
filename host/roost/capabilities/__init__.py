"""Capabilities: one module per WIT interface, discovered, never registered by hand.

Adding a capability means adding a file here holding one :class:`Capability` subclass whose
``name`` equals the file name (``docs/design.md`` walks through it).
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from typing import Any

from pydantic import ValidationError

from ..abi import HostFunction, interface_name
from ..errors import ManifestError
from ._base import BaseGrant as BaseGrant
from ._base import Capability as Capability
from ._base import Continuation as Continuation
from ._base import HostServices as HostServices
from ._base import OpContext as OpContext
from ._base import OpFailed as OpFailed
from ._base import OpResult as OpResult
from ._base import OpRunner as OpRunner
from ._base import TurnEffects as TurnEffects
from ._base import TurnView as TurnView
from ._base import bound_turn as bound_turn
from ._base import host_call as host_call
from ._base import op_error_text as op_error_text


@cache
def registry() -> dict[str, type[Capability[Any]]]:
    """Capability name -> class, for every module in this package, by name."""
    found: dict[str, type[Capability[Any]]] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        classes = [
            obj
            for obj in vars(module).values()
            if isinstance(obj, type)
            and issubclass(obj, Capability)
            and obj is not Capability
            and obj.__module__ == module.__name__
        ]
        if len(classes) != 1:
            raise RuntimeError(f"{module.__name__} must define exactly one Capability class")
        if classes[0].name != info.name:
            raise RuntimeError(
                f"{module.__name__}.{classes[0].__name__}.name is {classes[0].name!r}; "
                f"it must be the file's name, {info.name!r}"
            )
        found[info.name] = classes[0]
    return found


def validate_grants(grants: dict[str, dict[str, Any]]) -> dict[str, BaseGrant]:
    """Parse each granted capability's parameters; unknown names and keys are errors."""
    known = registry()
    parsed: dict[str, BaseGrant] = {}
    problems: list[str] = []
    for name, params in grants.items():
        cls = known.get(name)
        if cls is None:
            problems.append(f"unknown capability {name!r} (known: {', '.join(sorted(known))})")
            continue
        try:
            parsed[name] = cls.Grant.model_validate(params)
        except ValidationError as exc:
            for err in exc.errors():
                loc = ".".join(str(p) for p in err["loc"])
                msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
                problems.append(f"capabilities.{name}.{loc}: {msg}")
    if problems:
        raise ManifestError("invalid capability grants:\n  " + "\n  ".join(problems))
    return parsed


def bind_capabilities(
    grants: dict[str, dict[str, Any]], services: HostServices
) -> dict[str, Capability[Any]]:
    """One capability instance per granted capability, bound to its grant and services."""
    parsed = validate_grants(grants)
    known = registry()
    return {name: known[name](grant, services) for name, grant in parsed.items()}


def link_table(capabilities: dict[str, Capability[Any]]) -> dict[str, list[HostFunction]]:
    """WIT interface -> its host functions, for the sandbox to link."""
    return {
        interface_name(name): capability.host_functions()
        for name, capability in capabilities.items()
    }
