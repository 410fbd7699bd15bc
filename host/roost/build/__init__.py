"""``roost build``: compile an agent to a WebAssembly component.

Python agents (``.py``) are built here; C and Zig agents (``.c``, ``.zig``) by
:mod:`roost.build.native`, under the same capability rule and the same cache.

The build runs componentize-py on a small staging tree: a generated entry module, the
agent's own directory, and copies of ``roost_sdk`` and ``msgpack`` (its pure-Python
fallback). The component imports only the capabilities the agent's manifest grants
(``--manifest``, or ``agent.toml`` beside the source), so it deploys under that manifest.

Outputs are cached by a content hash of everything that goes in: the agent's Python files,
the SDK, the WIT, the granted capabilities and the componentize-py version.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import msgpack

import roost_sdk

from ..abi import WIT_DIR
from ..capabilities import registry
from ..errors import BuildError
from ..manifest import Manifest, load_manifest
from .native import NATIVE_SUFFIXES, build_native

_ENTRY_MODULE = "_roost_entry"
_BUILD_WORLD = "roost-build"


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
    agent_files = _agent_files(source.parent)
    for path in agent_files:
        _check_syntax(path)

    digest = _digest(source, agent_files, caps)
    cached_path = cache_dir / "build" / f"{digest}.wasm"
    output.parent.mkdir(parents=True, exist_ok=True)
    if cached_path.is_file():
        shutil.copyfile(cached_path, output)
        return BuildResult(output, True, digest, caps)

    with tempfile.TemporaryDirectory(prefix="roost-build-") as tmp:
        staged = _stage(Path(tmp), source, caps)
        tmp_out = Path(tmp) / "out.wasm"
        _run_componentize(staged, source, tmp_out)
        cached_path.parent.mkdir(parents=True, exist_ok=True)
        partial = cached_path.with_suffix(f".{os.getpid()}.partial")
        shutil.copyfile(tmp_out, partial)
        os.replace(partial, cached_path)
    shutil.copyfile(cached_path, output)
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


def _agent_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*.py") if "__pycache__" not in p.parts)


def _check_syntax(path: Path) -> None:
    try:
        ast.parse(path.read_bytes(), filename=str(path))
    except SyntaxError as exc:
        raise BuildError(f"{path}:{exc.lineno}: {exc.msg}") from None


def _sdk_files() -> list[Path]:
    sdk = Path(roost_sdk.__file__).parent
    return sorted(p for p in sdk.rglob("*") if p.is_file() and p.suffix in {".py", ".wit"})


def _msgpack_dir() -> Path:
    return Path(msgpack.__file__).parent


def _digest(source: Path, agent_files: list[Path], caps: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    h.update(f"componentize-py {importlib.metadata.version('componentize-py')}\n".encode())
    h.update(f"msgpack {importlib.metadata.version('msgpack')}\n".encode())
    h.update(_entry_source(source, caps).encode())
    h.update(_build_world(caps).encode())
    root = source.parent
    for path in agent_files:
        h.update(f"agent {path.relative_to(root)}\n".encode())
        h.update(path.read_bytes())
    sdk_root = Path(roost_sdk.__file__).parent
    for path in _sdk_files():
        h.update(f"sdk {path.relative_to(sdk_root)}\n".encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:32]


def _stage(tmp: Path, source: Path, caps: tuple[str, ...]) -> Path:
    wit = tmp / "wit"
    shutil.copytree(WIT_DIR, wit)
    app = tmp / "app"
    app.mkdir()
    shutil.copytree(
        Path(roost_sdk.__file__).parent,
        app / "roost_sdk",
        ignore=shutil.ignore_patterns("__pycache__", "wit", "*.pyi"),
    )
    shutil.copytree(
        _msgpack_dir(), app / "msgpack", ignore=shutil.ignore_patterns("__pycache__", "*.so")
    )
    (app / f"{_ENTRY_MODULE}.py").write_text(_entry_source(source, caps), encoding="utf-8")
    (wit / "build.wit").write_text(_build_world(caps), encoding="utf-8")
    return tmp


def _entry_source(source: Path, caps: tuple[str, ...]) -> str:
    # componentize-py bundles only the modules imported at build time, so import the
    # binding of every granted capability here; the SDK looks them up lazily.
    bindings = "".join(f"import wit_world.imports.{cap}\n" for cap in caps)
    return (
        bindings + f"import {source.stem} as _agent_module\n"
        "from roost_sdk._exports import make_world, warm_up\n"
        "WitWorld = make_world(_agent_module)\n"
        "warm_up()\n"
    )


def _build_world(caps: tuple[str, ...]) -> str:
    imports = "".join(f"  import {cap};\n" for cap in caps)
    return f"world {_BUILD_WORLD} {{\n  include agent-core;\n{imports}}}\n"


def _run_componentize(staged: Path, source: Path, output: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    cmd = [
        sys.executable,
        "-c",
        "import sys; from componentize_py import script; "
        "sys.argv[0] = 'componentize-py'; sys.exit(script())",
        "-d",
        str(staged / "wit"),
        "-w",
        _BUILD_WORLD,
        "componentize",
        "-p",
        str(staged / "app"),
        "-p",
        str(source.parent),
        _ENTRY_MODULE,
        "-o",
        str(output),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0 or not output.is_file():
        raise BuildError(_explain_failure(proc.stdout + proc.stderr, source))


_FRAME_RE = re.compile(r'File "([^"]+)", line (\d+)')
_EXC_LINE_RE = re.compile(r"^\s*[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*")


def _explain_failure(output: str, source: Path) -> str:
    """Turn componentize-py's output into ``file:line: error`` pointing at the agent."""
    lines = output.strip().splitlines()
    python_tb = [i for i, line in enumerate(lines) if line.startswith("Traceback")]
    if python_tb:
        tb = lines[python_tb[-1] :]
        cut = next((i for i, line in enumerate(tb) if line.startswith("Stack backtrace")), None)
        tb = tb[:cut] if cut is not None else tb
        location = ""
        for line in tb:
            match = _FRAME_RE.search(line)
            if match and Path(match.group(1)).name in _names_in(source.parent):
                location = f"{source.parent / Path(match.group(1)).name}:{match.group(2)}"
        message = next(
            (m.group(0).strip() for line in reversed(tb) if (m := _EXC_LINE_RE.match(line))),
            tb[-1].strip() if tb else "",
        )
        head = f"{location}: {message}" if location else message
        return f"{head}\n\n" + "\n".join(tb)
    return "componentize-py failed:\n" + "\n".join(lines[-40:])


def _names_in(directory: Path) -> set[str]:
    return {p.name for p in _agent_files(directory)}
