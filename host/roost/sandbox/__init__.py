"""The wasmtime runtime: the only package that imports ``wasmtime``."""

from __future__ import annotations

from .engine import WasmEngine as WasmEngine
from .engine import open_engine as open_engine
