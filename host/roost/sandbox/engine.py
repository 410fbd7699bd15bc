"""The wasmtime engine: compilation with an on-disk cache, deploy-time import checks, linking
only the granted interfaces, and the epoch ticker that enforces CPU deadlines.

Two memory profiles share the ticker. Large components (Python agents: an interpreter and
its heap) keep wasmtime's defaults: each linear memory reserves 4 GiB of address space
plus guards (bounds checks are free) and starts as a copy-on-write view of the component's
memory image, so every instance shares those pages. Small components (native C/Zig agents,
tens of KiB) use the dense profile: a linear memory is one anonymous mapping of exactly
its current size, with explicit bounds checks and no image. Adjacent mappings merge, so
100,000 instances need neither 400 TiB of address space nor 400,000 of the kernel's
memory mappings (``vm.max_map_count`` is 65,530 by default).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime.component import Component, Linker, Variant

from ..abi import EXPORTS, TYPES_INTERFACE, HostCallError, HostFunction, capability_of
from ..errors import DeployError
from ..limits import Limits
from ._host_calls import add_host_function
from .instance import WasmSandbox
from .protocol import TurnSliceExceeded

DENSE_MAX_COMPONENT_BYTES = 1024 * 1024
"""Components up to this size run on the dense memory profile."""

_WASI_PREFIX = "wasi:"
"""WASI imports come with the Python runtime; they are linked sandboxed (no files, no
environment, no network), so they are not capabilities. Two of them would be ambient
authority, so they follow the grants instead: without the ``clock`` grant WASI's wall
clock reads the epoch (1970-01-01), and without the ``random`` grant WASI's random numbers
are a fixed, public sequence (the same for every instance: not secret, not unpredictable).
The monotonic clock stays (it measures durations; it tells no date)."""
_WALL_CLOCK = "wasi:clocks/wall-clock@"
_RANDOM = ("wasi:random/random@", "wasi:random/insecure@")
_INSECURE_SEED = "wasi:random/insecure-seed@"
_MAX_STAND_IN_RANDOM_BYTES = 1024 * 1024


@contextmanager
def open_engine(*, cache_dir: Path, epoch_tick_ms: int) -> Iterator[WasmEngine]:
    """A wasmtime engine with its epoch ticker running."""
    engine = WasmEngine(cache_dir=cache_dir, epoch_tick_ms=epoch_tick_ms)
    engine.start()
    try:
        yield engine
    finally:
        engine.close()


class WasmEngine:
    """One wasmtime engine for the whole host."""

    def __init__(self, *, cache_dir: Path, epoch_tick_ms: int) -> None:
        self._config_key = "component-model,epoch,speed"
        self.engine = wasmtime.Engine(_config(dense=False))
        self.dense_engine = wasmtime.Engine(_config(dense=True))
        """For components of at most ``DENSE_MAX_COMPONENT_BYTES``."""
        self.cache_dir = cache_dir / "components"
        self.epoch_tick_ms = epoch_tick_ms
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self.compiled_from_cache = 0
        self.compiled_fresh = 0

    # -- epoch ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the ticker. It runs on real time (a thread), never on the trio clock,
        so a mocked clock cannot trap healthy turns."""
        if self._ticker is not None:
            return
        self._ticker = threading.Thread(target=self._tick, name="roost-epoch", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        interval = self.epoch_tick_ms / 1000
        while not self._stop.wait(interval):
            self.engine.increment_epoch()
            self.dense_engine.increment_epoch()

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None

    def deadline_ticks(self, cpu_deadline_ms: int) -> int:
        return -(-cpu_deadline_ms // self.epoch_tick_ms) + 1

    # -- compilation ------------------------------------------------------------------
    def engine_for(self, wasm: bytes) -> wasmtime.Engine:
        """The engine (memory profile) a component runs on: see the module docstring."""
        return self.dense_engine if len(wasm) <= DENSE_MAX_COMPONENT_BYTES else self.engine

    def compile(self, wasm: bytes) -> Component:
        """Compile a component, or load it from the cache when this exact wasm was compiled
        by this wasmtime version with this configuration before."""
        engine = self.engine_for(wasm)
        key = hashlib.sha256(wasm).hexdigest()
        version = importlib.metadata.version("wasmtime")
        config_key = self._config_key + (",dense" if engine is self.dense_engine else "")
        path = self.cache_dir / f"{key[:40]}-wasmtime{version}-{config_key}.cwasm"
        if path.is_file():
            try:
                component = Component.deserialize_file(engine, str(path))
                self.compiled_from_cache += 1
                return component
            except wasmtime.WasmtimeError:
                path.unlink(missing_ok=True)  # stale or corrupt: recompile below
        try:
            component = Component(engine, wasm)
        except wasmtime.WasmtimeError as exc:
            raise DeployError(f"not a valid WebAssembly component: {_first_line(exc)}") from None
        self.compiled_fresh += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
        partial.write_bytes(bytes(component.serialize()))
        os.replace(partial, path)
        return component

    # -- deploy -----------------------------------------------------------------------
    def load_kind(
        self, kind: str, wasm: bytes, host_functions: dict[str, list[HostFunction]]
    ) -> KindFactory:
        """Compile, check the component's imports against the granted interfaces (the keys
        of ``host_functions``), and link their host functions."""
        component = self.compile(wasm)
        engine = self.engine_for(wasm)
        imports = list(component.type.imports(engine))
        granted = {capability_of(name) for name in host_functions}
        _check_imports(kind, imports, granted)
        exports = set(component.type.exports(engine))
        missing = sorted(set(EXPORTS) - exports)
        if missing:
            raise DeployError(
                f"kind {kind!r}: the component does not export {', '.join(missing)}; "
                "build it against the roost:agent world (roost build)"
            )
        wasi = _ungranted_wasi(imports, granted)
        linker = self._link(engine, {**host_functions, **wasi})
        return KindFactory(self, engine, component, linker)

    def _link(
        self, engine: wasmtime.Engine, host_functions: dict[str, list[HostFunction]]
    ) -> Linker:
        linker = Linker(engine)
        linker.add_wasip2()
        linker.allow_shadowing = True  # the WASI functions that follow the grants
        with linker.root() as root:
            for interface, functions in host_functions.items():
                with root.add_instance(interface) as instance:
                    for function in functions:
                        add_host_function(instance, function.name, _lowered_errors(function))
        return linker


def _lowered_errors(function: HostFunction) -> Callable[..., Any]:
    """Adapt a host call to the runtime: errors become ``err`` (tagging both cases when
    ``ok`` is text too, as results whose cases are both strings need)."""
    call = function.call
    if function.ok_is_text:

        def tagged(*args: Any) -> Any:
            result = call(*args)
            if isinstance(result, HostCallError):
                return Variant("err", result.message)
            return Variant("ok", result)

        return tagged

    def plain(*args: Any) -> Any:
        result = call(*args)
        return result.message if isinstance(result, HostCallError) else result

    return plain


def _ungranted_wasi(imports: list[str], granted: set[str | None]) -> dict[str, list[HostFunction]]:
    """Stand-ins for the WASI clocks and random numbers a kind was not granted (see the
    module docstring), for each version of those interfaces the component imports."""
    stand_ins: dict[str, list[HostFunction]] = {}
    epoch = _Datetime(0, 0)
    for name in imports:
        if name.startswith(_WALL_CLOCK) and "clock" not in granted:
            stand_ins[name] = [
                HostFunction("now", lambda: epoch),
                HostFunction("resolution", lambda: _Datetime(0, 1)),
            ]
        elif name.startswith(_RANDOM) and "random" not in granted:
            stream = _FixedStream()
            bytes_call = "get-random-bytes" if "/random@" in name else "get-insecure-random-bytes"
            u64_call = "get-random-u64" if "/random@" in name else "get-insecure-random-u64"
            stand_ins[name] = [
                HostFunction(bytes_call, stream.take),
                HostFunction(u64_call, lambda s=stream: int.from_bytes(s.take(8), "little")),
            ]
        elif name.startswith(_INSECURE_SEED) and "random" not in granted:
            stand_ins[name] = [HostFunction("insecure-seed", lambda: (0, 0))]
    return stand_ins


class _Datetime:
    """WASI's ``datetime`` record, as the lowering reads it (by field name)."""

    __slots__ = ("nanoseconds", "seconds")

    def __init__(self, seconds: int, nanoseconds: int) -> None:
        self.seconds = seconds
        self.nanoseconds = nanoseconds


class _FixedStream:
    """A fixed, public stream of bytes (SHA-256 in counter mode over a constant)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counter = 0
        self._buffer = b""

    def take(self, count: int) -> bytes:
        if count > _MAX_STAND_IN_RANDOM_BYTES:  # traps the guest: it asked for too much
            raise ValueError(f"{count} random bytes asked for at once")
        with self._lock:
            while len(self._buffer) < count:
                self._counter += 1
                self._buffer += hashlib.sha256(
                    b"roost: random not granted" + self._counter.to_bytes(8, "little")
                ).digest()
            taken, self._buffer = self._buffer[:count], self._buffer[count:]
            return taken


def _check_imports(kind: str, imports: list[str], granted: set[str | None]) -> None:
    ungranted: list[str] = []
    foreign: list[str] = []
    for name in imports:
        if name.startswith(_WASI_PREFIX):
            continue
        capability = capability_of(name)
        if capability is None:
            foreign.append(name)
        elif capability != TYPES_INTERFACE and capability not in granted:
            ungranted.append(name)
    problems = []
    if ungranted:
        grants = ", ".join(f"[capabilities.{capability_of(n)}]" for n in ungranted)
        problems.append(
            f"imports not granted by the manifest: {', '.join(ungranted)} "
            f"(grant them with {grants}, or rebuild the agent without them)"
        )
    if foreign:
        problems.append(f"imports that are not roost:agent capabilities: {', '.join(foreign)}")
    if problems:
        raise DeployError(f"cannot deploy kind {kind!r}: " + "; ".join(problems))


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


class KindFactory:
    """Makes sandboxes of one deployed kind (implements ``protocol.SandboxFactory``)."""

    def __init__(
        self, engine: WasmEngine, wasm_engine: wasmtime.Engine, component: Component, linker: Linker
    ) -> None:
        self._engine = engine
        self._wasm_engine = wasm_engine
        self._component = component
        self._linker = linker
        self._exports = {name: component.get_export_index(name) for name in EXPORTS}
        self.light = wasm_engine is engine.dense_engine

    def instantiate(self, limits: Limits, *, slice_ms: int | None = None) -> WasmSandbox:
        try:
            return WasmSandbox.instantiate(
                engine=self._wasm_engine,
                component=self._component,
                linker=self._linker,
                exports=self._exports,
                limits=limits,
                deadline_ticks=self._engine.deadline_ticks(limits.cpu_deadline_ms),
                epoch_tick_ms=self._engine.epoch_tick_ms,
                slice_ms=slice_ms,
            )
        except TurnSliceExceeded:
            # Start functions run the same code for every agent of the kind: one that
            # outran the slice says they all will. Not light any more, so no other agent
            # of the kind spends a slice of the event loop finding it out again.
            self.light = False
            raise


def _config(*, dense: bool) -> wasmtime.Config:
    config = wasmtime.Config()
    config.wasm_component_model = True
    config.epoch_interruption = True
    config.cranelift_opt_level = "speed"
    if dense:
        config.memory_reservation = 0
        config.memory_guard_size = 0
        config.memory_reservation_for_growth = 0
        config.memory_init_cow = False
    return config
