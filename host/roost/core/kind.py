"""A deployed kind: its manifest, its bound capabilities and its sandbox factory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..capabilities import Capability
from ..manifest import Manifest
from ..sandbox.protocol import SandboxFactory


@dataclass(frozen=True)
class Kind:
    manifest: Manifest
    capabilities: dict[str, Capability]
    factory: SandboxFactory
    wasm_sha256: str

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest.config


@dataclass(frozen=True)
class KindInfo:
    """What ``Host.deploy`` and ``Host.kinds`` report about a kind."""

    name: str
    version: str
    capabilities: tuple[str, ...]
    wasm_sha256: str
