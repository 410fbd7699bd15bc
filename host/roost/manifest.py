"""Kind manifests: what an agent program is and what it may touch.

A manifest is TOML::

    name = "echo"
    version = "0.1.0"
    component = "echo.wasm"        # relative to the manifest; `roost run X.wasm` overrides it

    [capabilities.kv]              # one table per granted capability, with its parameters
    [capabilities.log]

    [limits]
    idle_timeout_s = 30
    max_memory_bytes = 67108864

    [config]                       # free-form, handed to the agent as ctx.config
    greeting = "hi"

Unknown keys are errors, so a typo never silently grants or limits nothing.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .address import validate_kind_name
from .capabilities import validate_grants
from .errors import InvalidAddress, ManifestError
from .limits import Budgets, Limits


class Manifest(BaseModel):
    """A kind: a compiled component plus what it is granted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str = "0.0.0"
    component: Path | None = None
    """Path of the .wasm component, resolved against the manifest's directory."""
    source: Path | None = None
    """The agent's Python source; when set, ``roost run``/``roost serve`` build the component
    from it if it is missing or stale (builds are cached by content hash)."""
    description: str = ""
    capabilities: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Granted capability name -> its grant parameters."""
    limits: Limits = Field(default_factory=Limits)  # type: ignore[arg-type]
    budgets: Budgets = Field(default_factory=Budgets)  # type: ignore[arg-type]
    config: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        try:
            return validate_kind_name(value)
        except InvalidAddress as exc:
            raise ValueError(str(exc)) from None

    def with_component(self, component: Path) -> Manifest:
        return self.model_copy(update={"component": component})


def parse_manifest(data: dict[str, Any], *, base_dir: Path, origin: str) -> Manifest:
    """Validate a manifest table; ``component`` is resolved against ``base_dir``."""
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(f"{origin}: invalid manifest:\n{_format_errors(exc)}") from None
    try:
        validate_grants(manifest.capabilities)
    except ManifestError as exc:
        raise ManifestError(f"{origin}: {exc}") from None
    updates = {
        key: base_dir / value
        for key in ("component", "source")
        if (value := getattr(manifest, key)) is not None and not value.is_absolute()
    }
    return manifest.model_copy(update=updates) if updates else manifest


def load_manifest(path: Path) -> Manifest:
    """Read and validate a TOML manifest file (``agent.toml`` in it, for a directory)."""
    if path.is_dir():
        path = path / "agent.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{path}: manifest not found (looked for {path.absolute()})") from None
    except IsADirectoryError:
        raise ManifestError(f"{path}: a directory, not a manifest file") from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{path}: not valid TOML: {exc}") from None
    return parse_manifest(data, base_dir=path.parent.resolve(), origin=str(path))


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"]) or "(top level)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)
