"""Kinds deployed over the API, kept in the data directory so a restart redeploys them.

Layout, one folder per kind: ``DATA_DIR/kinds/NAME/`` holds each deployed version as
``<sha256>.toml`` (the manifest as uploaded) and ``<sha256>.wasm`` (its component), and
``current``, the sha of the version in service. A version is written under its own names
first; replacing ``current`` (write, then rename) is the one step that switches versions,
so a crash leaves either the old version or the new one, never a mix. Versions no longer
current are removed after the switch.

Nothing is saved until the host has deployed the upload: a rejected upload leaves nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("roost.server")

_KINDS = "kinds"
_CURRENT = "current"
_LEGACY_MANIFEST = "agent.toml"
_LEGACY_COMPONENT = "component.wasm"


@dataclass(frozen=True)
class SavedKind:
    """One kind kept in the data directory."""

    name: str
    manifest: Path
    component: Path


def save_deployment(data_dir: Path, name: str, manifest_text: str, wasm: bytes) -> SavedKind:
    """Keep a kind the host has just deployed, replacing its saved version atomically."""
    directory = data_dir / _KINDS / name
    directory.mkdir(parents=True, exist_ok=True)
    version = hashlib.sha256(manifest_text.encode() + b"\0" + wasm).hexdigest()
    manifest = directory / f"{version}.toml"
    component = directory / f"{version}.wasm"
    _write(component, wasm)
    _write(manifest, manifest_text.encode())
    _write(directory / _CURRENT, version.encode())
    for stale in directory.iterdir():
        if stale.suffix in (".toml", ".wasm") and stale.stem != version:
            stale.unlink(missing_ok=True)
    return SavedKind(name, manifest, component)


def saved_kinds(data_dir: Path) -> list[SavedKind]:
    """The kinds deployed over the API, by name. A folder whose version cannot be found is
    logged and left out."""
    kinds = []
    root = data_dir / _KINDS
    if not root.is_dir():
        return []
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        current = directory / _CURRENT
        if current.is_file():
            version = current.read_text(encoding="ascii").strip()
            manifest, component = directory / f"{version}.toml", directory / f"{version}.wasm"
        else:  # saved by an earlier release: one manifest, one component
            manifest, component = directory / _LEGACY_MANIFEST, directory / _LEGACY_COMPONENT
        if manifest.is_file() and component.is_file():
            kinds.append(SavedKind(directory.name, manifest, component))
        elif current.is_file() or manifest.exists() or component.exists():
            logger.error(
                "saved kind %r in %s is incomplete (no %s or %s); skipping it",
                directory.name,
                directory,
                manifest.name,
                component.name,
            )
    return kinds


def _write(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all (a partial file, then a rename)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with open(partial, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)
