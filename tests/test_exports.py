"""The embedding API is exactly what ``host/__init__.py`` re-exports."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import roost
from roost import errors

EXPECTED = {
    "AgentAddress",
    "AgentStatus",
    "EventTiming",
    "Host",
    "HostConfig",
    "HostStatistics",
    "KindInfo",
    "Limits",
    "Manifest",
    "load_config",
    "load_manifest",
    "open_host",
}


def test_exports_are_the_embedding_api_and_every_error() -> None:
    public = {name for name in vars(roost) if not name.startswith("_")} - {"annotations"}
    error_names = {
        name
        for name, obj in vars(errors).items()
        if inspect.isclass(obj) and issubclass(obj, errors.RoostError)
    }
    modules = {name for name, obj in vars(roost).items() if inspect.ismodule(obj)}
    assert public - modules == EXPECTED | error_names


def test_only_the_runtime_imports_wasmtime() -> None:
    root = Path(roost.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if "sandbox" in path.relative_to(root).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "wasmtime" or n.startswith("wasmtime.") for n in names):
                offenders.append(str(path.relative_to(root)))
    assert offenders == []
