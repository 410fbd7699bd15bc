"""Capabilities: one module per WIT interface, discovered, never registered by hand.

Adding a capability means adding a file here holding one :class:`Capability` subclass whose
``name`` equals the file name.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from typing import Any

from pydantic import ValidationError

from ..errors import ManifestError
from ._base import BaseGrant as BaseGrant
from ._base import Capability as Capability
from ._base import HostCallError as HostCallError
from ._base import HostCallSpec as HostCallSpec
from ._base import host_call as host_call


@cache
def registry() -> dict[str, type[Capability]]:
    """Capability name -> class, for every module in this package."""
    found: dict[str, type[Capability]] = {}
    for info in pkgutil.iter_modules(__path__):
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


def bind_capabilities(grants: dict[str, dict[str, Any]]) -> dict[str, Capability]:
    """One capability instance per granted capability, bound to its grant."""
    parsed = validate_grants(grants)
    known = registry()
    return {name: known[name](grant) for name, grant in parsed.items()}
