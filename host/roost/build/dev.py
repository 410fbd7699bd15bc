"""The dev runtime: Python agents that reload in a fraction of a second.

A production build (:func:`roost.build.build_agent`) runs componentize-py on the agent
(seconds to tens of seconds), and the host then compiles the new component to native code
(as long again). ``roost dev`` and ``roost.testing`` skip both on every edit: they deploy a
*dev runtime*, a component built once per set of granted capabilities (and of third-party
packages the agent imports) and cached like any build, that holds the interpreter, the SDK
and the whole standard library, already imported. The agent's own sources travel in the
kind's config (:data:`DEV_KEY`) and the runtime imports them at ``init``
(:mod:`roost_sdk._dev`). Deploying an edit is a redeploy of the same component with new
config: no componentize-py run, and the host's compiled-component cache answers at once.

What differs from production: every standard-library module is importable (a production
component has the modules its agent names); a turn is stopped at 90 % of its CPU deadline
by a watchdog that names the agent's line; agent files appear in tracebacks by their real
paths with their source lines. The SDK, the host, the capabilities and the limits are the
same.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from roost_sdk._dev import DEV_KEY

from ..errors import BuildError
from ..manifest import Manifest
from . import (
    _build_world,
    _resolve_capabilities,
    _stage,
    capability_bindings,
    preload,
    run_componentize,
    toolchain_digest,
)
from ._files import copy_atomically
from ._sources import AgentSources, agent_sources

__all__ = ["DEV_KEY", "DevBuild", "dev_build", "dev_runtime_path"]

_STDLIB_SKIP = (
    "antigravity",
    "this",
    "idlelib",
    "tkinter",
    "turtle",
    "turtledemo",
    "ensurepip",
    "venv",
    "lib2to3",
    "pydoc",
    "pydoc_data",
    "test",
)
"""Standard-library modules not preloaded: they print or open things when imported, or are
tools and tests rather than libraries."""

_PRELOAD_STDLIB = f"""\
def _preload_stdlib():
    import importlib, pkgutil, sys
    skip = {_STDLIB_SKIP!r}
    for name in sorted(sys.stdlib_module_names):
        if name in skip or name.startswith("_"):
            continue
        try:
            module = importlib.import_module(name)
        except Exception:
            continue
        for info in pkgutil.walk_packages(getattr(module, "__path__", []), name + "."):
            parts = info.name.split(".")[1:]
            if any(p in ("test", "tests", "idle_test") or p.startswith("_") for p in parts):
                continue
            try:
                importlib.import_module(info.name)
            except Exception:
                pass
_preload_stdlib()
"""


@dataclass(frozen=True)
class DevBuild:
    """An agent ready to deploy on the dev runtime."""

    manifest: Manifest
    """The agent's manifest with the runtime as its component and its sources in its
    config."""
    runtime: Path
    sources: AgentSources


def dev_runtime_path(manifest: Manifest, sources: AgentSources, *, cache_dir: Path) -> Path:
    """Where the dev runtime this agent needs is cached (it exists once built)."""
    caps = _capabilities(manifest)
    return cache_dir / "build" / f"dev-{_runtime_digest(caps, sources)}.wasm"


def dev_build(manifest: Manifest, *, cache_dir: Path) -> DevBuild:
    """The agent of ``manifest`` (whose ``source`` is a Python file) on the dev runtime,
    building the runtime first if this set of capabilities and packages has none yet."""
    source = manifest.source
    if source is None or source.suffix != ".py":
        raise BuildError(
            f"kind {manifest.name!r}: the dev runtime runs Python agents; the manifest's "
            "`source` must name the agent's .py file"
        )
    sources = agent_sources(source.resolve())
    runtime = dev_runtime_path(manifest, sources, cache_dir=cache_dir)
    if not runtime.is_file():
        _build_runtime(_capabilities(manifest), sources, runtime)
    spec = {
        "module": sources.module,
        "root": str(sources.root),
        "files": sources.read(),
        "deadline_ms": manifest.limits.cpu_deadline_ms,
    }
    dev_manifest = manifest.model_copy(
        update={"component": runtime, "config": {**manifest.config, DEV_KEY: spec}}
    )
    return DevBuild(dev_manifest, runtime, sources)


def _capabilities(manifest: Manifest) -> tuple[str, ...]:
    assert manifest.source is not None
    return _resolve_capabilities(manifest.source, None, tuple(manifest.capabilities))


def _packages(sources: AgentSources) -> tuple[str, ...]:
    """The third-party modules the agent imports: the runtime imports them too."""
    return tuple(m for m in sources.imports if m.split(".")[0] not in sys.stdlib_module_names)


def _entry_source(caps: tuple[str, ...], packages: tuple[str, ...]) -> str:
    return (
        capability_bindings(caps)
        + preload(packages)
        + _PRELOAD_STDLIB
        + "from roost_sdk._exports import make_dev_world, warm_up\n"
        "WitWorld = make_dev_world()\n"
        "warm_up()\n"
    )


def _runtime_digest(caps: tuple[str, ...], sources: AgentSources) -> str:
    h = hashlib.sha256()
    h.update(b"roost dev runtime 1\n")
    toolchain_digest(h)
    h.update(_entry_source(caps, _packages(sources)).encode())
    h.update(_build_world(caps).encode())
    for name, version in sources.packages:
        h.update(f"package {name}=={version}\n".encode())
    return h.hexdigest()[:32]


def _build_runtime(caps: tuple[str, ...], sources: AgentSources, cached_path: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="roost-dev-runtime-") as tmp:
        staged = _stage(Path(tmp), _entry_source(caps, _packages(sources)), caps)
        output = Path(tmp) / "out.wasm"
        run_componentize(staged, [], output, sources.root)
        copy_atomically(output, cached_path)
