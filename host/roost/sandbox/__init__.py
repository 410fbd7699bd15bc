"""The sandbox: the only package that imports ``wasmtime``.

:mod:`.protocol` is the seam the core sees (:class:`~.protocol.Sandbox`,
:class:`~.protocol.SandboxFactory`); :mod:`.engine` compiles, checks and links components
and :mod:`.instance` runs one of them in its own wasmtime store.
"""

from __future__ import annotations

from .engine import WasmEngine as WasmEngine
from .engine import open_engine as open_engine
