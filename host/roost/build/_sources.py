"""What a Python agent is made of: its own modules, and the other modules it imports.

An agent's *own sources* are its module and the modules of its directory that it imports,
followed through their imports (``import prompts``, ``from .tools import x``, imports inside
functions included). Nothing else in the directory counts: a test file, a script or notes
beside the agent neither go into its component nor change its build's content hash. Modules
it finds some other way (``importlib.import_module(name)``) are not followed.

Every other module an agent's sources name is imported by the build's entry module, so that
componentize-py, which bundles only what was imported when it ran, bundles a module the
agent imports lazily too. Those outside the standard library come from installed
distributions, whose names and versions go into the content hash.
"""

from __future__ import annotations

import ast
import importlib.metadata
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ..errors import BuildError

_PROVIDED = frozenset({"roost_sdk", "msgpack", "wit_world", "componentize_py_types"})
"""Top-level modules every component has: the SDK, its codec and the generated bindings."""


@dataclass(frozen=True)
class AgentSources:
    root: Path
    """The agent's directory."""
    module: str
    """The agent's module name (its file's stem)."""
    files: tuple[Path, ...]
    """The agent's own source files (absolute), its module first."""
    imports: tuple[str, ...]
    """Other modules the sources name (standard library and installed packages), sorted."""
    packages: tuple[tuple[str, str], ...]
    """``(distribution, version)`` of every installed package among ``imports``, sorted;
    ``version`` is ``"missing"`` for a module no installed distribution provides."""

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def read(self) -> dict[str, str]:
        """The own sources' text by path relative to :attr:`root`."""
        return {self.relative(p): p.read_text(encoding="utf-8") for p in self.files}


def agent_sources(source: Path) -> AgentSources:
    """The own sources and imports of the agent whose module is ``source`` (absolute).
    Raises BuildError for a file that does not parse."""
    root = source.parent
    own: dict[Path, str] = {}
    external: set[str] = set()
    pending = [(source, source.stem)]
    while pending:
        path, name = pending.pop()
        if path in own:
            continue
        own[path] = name
        for imported in _imported_names(path, name):
            local = _local_files(root, imported)
            if local:
                pending.extend(local)
            elif imported.split(".")[0] not in _PROVIDED:
                external.add(imported)
    files = (source, *sorted(p for p in own if p != source))
    return AgentSources(
        root=root,
        module=source.stem,
        files=files,
        imports=tuple(sorted(external)),
        packages=_packages(external),
    )


def parse(path: Path) -> ast.Module:
    """The module's syntax tree, or BuildError naming ``file:line``."""
    try:
        return ast.parse(path.read_bytes(), filename=str(path))
    except SyntaxError as exc:
        raise BuildError(f"{path}:{exc.lineno}: {exc.msg}") from None
    except OSError as exc:
        raise BuildError(f"{path}: cannot read it: {exc.strerror}") from None


def _imported_names(path: Path, name: str) -> set[str]:
    """Absolute dotted names the module imports, relative imports resolved."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                base_parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join(base_parts)
                target = ".".join(p for p in (base, node.module or "") if p)
            else:
                target = node.module or ""
            if target:
                names.add(target)
            # ``from pkg import mod`` may name a submodule.
            names.update(
                ".".join(p for p in (target, alias.name) if p)
                for alias in node.names
                if alias.name != "*"
            )
    return names


def _local_files(root: Path, dotted: str) -> list[tuple[Path, str]]:
    """The files of the agent's directory that importing ``dotted`` runs (each package on
    the way, and the module), or none when its top level is not in the directory."""
    found: list[tuple[Path, str]] = []
    directory = root
    parts = dotted.split(".")
    for index, part in enumerate(parts):
        name = ".".join(parts[: index + 1])
        package = directory / part / "__init__.py"
        module = directory / f"{part}.py"
        if package.is_file():
            found.append((package, name))
            directory = directory / part
        elif module.is_file():
            found.append((module, name))
            break
        else:
            break
    return found


def _packages(imports: set[str]) -> tuple[tuple[str, str], ...]:
    distributions = _distributions()
    found: set[tuple[str, str]] = set()
    for name in imports:
        top = name.split(".")[0]
        if top in sys.stdlib_module_names:
            continue
        names = distributions.get(top)
        if not names:
            found.add((top, "missing"))
            continue
        for dist in names:
            try:
                found.add((dist, importlib.metadata.version(dist)))
            except importlib.metadata.PackageNotFoundError:
                found.add((dist, "missing"))
    return tuple(sorted(found))


@cache
def _distributions() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())
