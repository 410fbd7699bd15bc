"""Deployed kinds: a manifest, its bound capabilities and its sandbox factory."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..address import AgentAddress
from ..capabilities import Capability
from ..errors import UnknownKind
from ..manifest import Manifest
from ..sandbox.protocol import SandboxFactory


@dataclass(frozen=True)
class Kind:
    manifest: Manifest
    capabilities: dict[str, Capability[Any]]
    factory: SandboxFactory
    wasm_sha256: str

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest.config

    def info(self) -> KindInfo:
        return KindInfo(
            name=self.name,
            version=self.manifest.version,
            capabilities=tuple(sorted(self.capabilities)),
            wasm_sha256=self.wasm_sha256,
        )


@dataclass(frozen=True)
class KindInfo:
    """What ``Host.deploy`` and ``Host.kinds`` report about a kind."""

    name: str
    version: str
    capabilities: tuple[str, ...]
    wasm_sha256: str


class KindTable:
    """The kinds deployed on this host, by name."""

    def __init__(self) -> None:
        self._kinds: dict[str, Kind] = {}

    def put(self, kind: Kind) -> None:
        """Deploy ``kind``, replacing a kind of the same name."""
        self._kinds[kind.name] = kind

    def of(self, address: AgentAddress) -> Kind:
        """The kind of ``address``, or UnknownKind naming what is deployed."""
        kind = self._kinds.get(address.kind)
        if kind is None:
            raise UnknownKind(
                f"no kind named {address.kind!r} is deployed "
                f"(deployed: {', '.join(sorted(self._kinds)) or 'none'})",
                address=str(address),
            )
        return kind

    def __iter__(self) -> Iterator[Kind]:
        return iter(list(self._kinds.values()))

    def __len__(self) -> int:
        return len(self._kinds)
