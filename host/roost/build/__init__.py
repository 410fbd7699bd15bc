"""``roost build``: compile an agent to a WebAssembly component.

Python agents (``.py``) are built here; C and Zig agents (``.c``, ``.zig``) by
:mod:`roost.build.native`, under the same capability rule and the same cache. The dev
runtime that ``roost dev`` and ``roost.testing`` run Python agents on is built by
:mod:`roost.build.dev`.

The build runs componentize-py on a small staging tree: a generated entry module, the
agent's own sources (:mod:`roost.build._sources`: its module and the modules of its
directory it imports, not the tests beside it), and copies of ``roost_sdk`` and ``msgpack``
(its pure-Python fallback). The component imports only the capabilities the agent's manifest
grants (``--manifest``, or ``agent.toml`` beside the source), so it deploys under that
manifest.

Outputs are cached by a content hash of everything that goes in: the agent's own sources,
the names and versions of the packages it imports, the SDK, the WIT, the granted
capabilities and the componentize-py version.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import msgpack

import roost_sdk

from ..abi import WIT_DIR
from ..capabilities import registry
from ..errors import BuildError
from ..manifest import Manifest, load_manifest
from ._files import copy_atomically
from ._sources import AgentSources, agent_sources
from .native import NATIVE_SUFFIXES, build_native

ENTRY_MODULE = "_roost_entry"
BUILD_WORLD = "roost-build"


@dataclass(frozen=True)
class BuildResult:
    output: Path
    cached: bool
    digest: str
    capabilities: tuple[str, ...]


def build_agent(
    source: Path,
    output: Path,
    *,
    cache_dir: Path,
    manifest: Path | None = None,
    capabilities: tuple[str, ...] | None = None,
) -> BuildResult:
    """Compile ``source``: a Python module defining one ``roost_sdk.Agent`` subclass, or a
    C or Zig agent written against the SDK's ``c/roost.h`` or ``zig/roost.zig``."""
    source = source.resolve()
    if not source.is_file():
        raise BuildError(f"{source}: no such file; pass the path of the agent's source file")
    if source.suffix in NATIVE_SUFFIXES:
        caps = _resolve_capabilities(source, manifest, capabilities)
        native = build_native(source, output, cache_dir=cache_dir, capabilities=caps)
        return BuildResult(output, native.cached, native.digest, caps)
    if source.suffix != ".py":
        raise BuildError(
            f"{source}: roost build compiles Python (.py), C (.c) and Zig (.zig) agents"
        )
    caps = _resolve_capabilities(source, manifest, capabilities)
    sources = agent_sources(source)
    digest = _digest(sources, caps)
    cached_path = cache_dir / "build" / f"{digest}.wasm"
    if cached_path.is_file():
        copy_atomically(cached_path, output)
        return BuildResult(output, True, digest, caps)

    with tempfile.TemporaryDirectory(prefix="roost-build-") as tmp:
        staged = _stage(Path(tmp), _entry_source(sources, caps), caps)
        agent_dir = stage_sources(Path(tmp) / "agent", sources)
        tmp_out = Path(tmp) / "out.wasm"
        run_componentize(staged, [agent_dir], tmp_out, sources.root)
        copy_atomically(tmp_out, cached_path)
    copy_atomically(cached_path, output)
    return BuildResult(output, False, digest, caps)


def ensure_component(manifest: Manifest, *, cache_dir: Path) -> Manifest:
    """Build the manifest's ``source`` into its ``component`` (cached); manifests without a
    source are returned as they are."""
    if manifest.source is None:
        return manifest
    component = manifest.component or manifest.source.with_suffix(".wasm")
    build_agent(
        manifest.source,
        component,
        cache_dir=cache_dir,
        capabilities=tuple(manifest.capabilities),
    )
    return manifest.with_component(component)


def _resolve_capabilities(
    source: Path, manifest: Path | None, capabilities: tuple[str, ...] | None
) -> tuple[str, ...]:
    if capabilities is not None:
        chosen = capabilities
    else:
        manifest_path = manifest or source.with_name("agent.toml")
        if manifest is not None or manifest_path.is_file():
            chosen = tuple(load_manifest(manifest_path).capabilities)
        else:
            chosen = tuple(registry())
    known = tuple(registry())
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise BuildError(
            f"unknown capabilities {', '.join(unknown)}; agents can use {', '.join(known)}"
        )
    return tuple(c for c in known if c in chosen)


def _sdk_files() -> list[Path]:
    sdk = Path(roost_sdk.__file__).parent
    return sorted(p for p in sdk.rglob("*") if p.is_file() and p.suffix in {".py", ".wit"})


def _msgpack_dir() -> Path:
    return Path(msgpack.__file__).parent


def toolchain_digest(h: hashlib._Hash) -> None:
    """Feed ``h`` what every Python build depends on besides the agent: the tool versions
    and the SDK's files."""
    h.update(f"componentize-py {importlib.metadata.version('componentize-py')}\n".encode())
    h.update(f"msgpack {importlib.metadata.version('msgpack')}\n".encode())
    sdk_root = Path(roost_sdk.__file__).parent
    for path in _sdk_files():
        h.update(f"sdk {path.relative_to(sdk_root)}\n".encode())
        h.update(path.read_bytes())


def _digest(sources: AgentSources, caps: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    toolchain_digest(h)
    h.update(_entry_source(sources, caps).encode())
    h.update(_build_world(caps).encode())
    for path in sources.files:
        h.update(f"agent {sources.relative(path)}\n".encode())
        h.update(path.read_bytes())
    for name, version in sources.packages:
        h.update(f"package {name}=={version}\n".encode())
    return h.hexdigest()[:32]


def _stage(tmp: Path, entry: str, caps: tuple[str, ...]) -> Path:
    wit = tmp / "wit"
    shutil.copytree(WIT_DIR, wit)
    app = tmp / "app"
    app.mkdir()
    shutil.copytree(
        Path(roost_sdk.__file__).parent,
        app / "roost_sdk",
        ignore=shutil.ignore_patterns("__pycache__", "wit", "*.pyi", "c", "zig"),
    )
    shutil.copytree(
        _msgpack_dir(), app / "msgpack", ignore=shutil.ignore_patterns("__pycache__", "*.so")
    )
    (app / f"{ENTRY_MODULE}.py").write_text(entry, encoding="utf-8")
    (wit / "build.wit").write_text(_build_world(caps), encoding="utf-8")
    return tmp


def stage_sources(directory: Path, sources: AgentSources) -> Path:
    """Copy the agent's own sources into ``directory``, keeping their relative paths."""
    for path in sources.files:
        target = directory / sources.relative(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def capability_bindings(caps: Iterable[str]) -> str:
    """Entry-module lines importing the binding of every granted capability:
    componentize-py bundles only the modules imported at build time, and the SDK looks
    them up lazily."""
    return "".join(f"import wit_world.imports.{cap}\n" for cap in caps)


def preload(modules: Iterable[str]) -> str:
    """Entry-module lines importing ``modules`` if they can be (so that componentize-py
    bundles the ones the agent imports lazily); failures are left to the agent's own
    import to report."""
    names = ", ".join(repr(m) for m in modules)
    return (
        "def _preload(names):\n"
        "    import importlib\n"
        "    for name in names:\n"
        "        try:\n"
        "            importlib.import_module(name)\n"
        "        except Exception:\n"
        "            pass\n"
        f"_preload(({names}{',' if names else ''}))\n"
    )


def _entry_source(sources: AgentSources, caps: tuple[str, ...]) -> str:
    own = [
        ".".join(sources.relative(p).removesuffix(".py").removesuffix("/__init__").split("/"))
        for p in sources.files[1:]
    ]
    return (
        capability_bindings(caps)
        + preload(sources.imports)
        + f"import {sources.module} as _agent_module\n"
        + "".join(f"import {name}\n" for name in own)
        + "from roost_sdk._exports import make_world, warm_up\n"
        "WitWorld = make_world(_agent_module)\n"
        "warm_up()\n"
    )


def _build_world(caps: tuple[str, ...]) -> str:
    imports = "".join(f"  import {cap};\n" for cap in caps)
    return f"world {BUILD_WORLD} {{\n  include agent-core;\n{imports}}}\n"


def run_componentize(staged: Path, paths: list[Path], output: Path, agent_root: Path) -> None:
    """componentize-py on the staging tree (``staged/wit``, ``staged/app``) and ``paths``
    (mounted in the component as ``/1``, ``/2``, ...); a failure is a BuildError that names
    the agent's file and line under ``agent_root``."""
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    cmd = [
        sys.executable,
        "-c",
        "import sys; from componentize_py import script; "
        "sys.argv[0] = 'componentize-py'; sys.exit(script())",
        "-d",
        str(staged / "wit"),
        "-w",
        BUILD_WORLD,
        "componentize",
        "-p",
        str(staged / "app"),
        *[arg for path in paths for arg in ("-p", str(path))],
        ENTRY_MODULE,
        "-o",
        str(output),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0 or not output.is_file():
        raise BuildError(explain_failure(proc.stdout + proc.stderr, agent_root))


_FRAME_RE = re.compile(r'^\s*File "([^"]+)", line (\d+)')
_EXC_LINE_RE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)\b.*")
_AGENT_MOUNT_RE = re.compile(r"(?<![\w/.])/1/")
_SDK_MOUNT_RE = re.compile(r"(?<![\w/.])/0/(?=roost_sdk/)")


def explain_failure(output: str, agent_root: Path) -> str:
    """componentize-py's output as ``file:line: error`` and the agent's traceback, with the
    agent's files named by their real paths and componentize-py's own frames and report
    left out."""
    text = _AGENT_MOUNT_RE.sub(f"{agent_root}/", output)
    text = _SDK_MOUNT_RE.sub("", text)
    lines = text.strip().splitlines()
    starts = [
        i
        for i, line in enumerate(lines)
        if line.lstrip().endswith("Traceback (most recent call last):")
    ]
    if not starts:
        return "componentize-py failed:\n" + "\n".join(lines[-40:])
    tb = lines[starts[-1] :]
    tb[0] = "Traceback (most recent call last):"
    for marker in ("Caused by:", "Stack backtrace:"):
        cut = next((i for i, line in enumerate(tb) if line.strip() == marker), None)
        tb = tb[:cut] if cut is not None else tb
    tb = _without_entry_frames(tb)
    while tb and not tb[-1].strip():
        tb.pop()
    location = ""
    for line in tb:
        match = _FRAME_RE.match(line)
        if match and Path(match.group(1)).is_relative_to(agent_root):
            location = f"{match.group(1)}:{match.group(2)}"
    message = next(
        (m.group(0).strip() for line in reversed(tb) if (m := _EXC_LINE_RE.match(line))),
        tb[-1].strip() if tb else "",
    )
    head = f"{location}: {message}" if location else message
    return f"{head}\n\n" + "\n".join(tb)


def _without_entry_frames(tb: list[str]) -> list[str]:
    """``tb`` without the frames of the generated entry module (each frame's ``File`` line
    and the indented source lines under it)."""
    kept: list[str] = []
    skipping = False
    for line in tb:
        match = _FRAME_RE.match(line)
        if match:
            skipping = match.group(1).endswith(f"{ENTRY_MODULE}.py")
        elif skipping and not line.startswith("    "):
            skipping = False
        if not skipping:
            kept.append(line)
    return kept
