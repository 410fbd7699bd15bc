"""Kinds deployed over the API, kept in the data directory so a restart redeploys them.

Layout: ``DATA_DIR/kinds/NAME/agent.toml`` and ``DATA_DIR/kinds/NAME/component.wasm``,
each replaced atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..manifest import Manifest

_KINDS = "kinds"
_COMPONENT = "component.wasm"
_MANIFEST = "agent.toml"


def save_deployment(data_dir: Path, manifest: Manifest, manifest_text: str, wasm: bytes) -> Path:
    """Store an uploaded kind; returns the component's path."""
    directory = data_dir / _KINDS / manifest.name
    directory.mkdir(parents=True, exist_ok=True)
    component = directory / _COMPONENT
    _replace(component, wasm)
    _replace(directory / _MANIFEST, manifest_text.encode())
    return component


def saved_manifests(data_dir: Path) -> list[Path]:
    """Manifests of kinds deployed over the API, by name."""
    return sorted((data_dir / _KINDS).glob(f"*/{_MANIFEST}"))


def saved_component(manifest_path: Path) -> Path:
    return manifest_path.with_name(_COMPONENT)


def _replace(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)
