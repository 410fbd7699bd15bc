"""Dev mode: the agent's sources arrive with ``init`` instead of being built into the component.

``roost dev`` and ``roost.testing`` run Python agents on a *dev runtime*: a component built
once per set of granted capabilities (and third-party packages), holding the interpreter,
this SDK and the whole standard library, already imported. The host hands the agent's
sources to ``init`` in its config under :data:`DEV_KEY`::

    {"module": "agent", "root": "/home/me/hello", "deadline_ms": 1000,
     "files": {"agent.py": "...", "prompts/__init__.py": "..."}}

and this module imports them from there, with their real paths as file names, so an edit
needs no new build and no new native compilation, and tracebacks name the developer's files
with their source lines.

A dev turn also has a watchdog: it stops a turn shortly before the kind's CPU deadline with
:class:`DeadlineExceeded`, raised at the agent's line it was running (``sys.monitoring``
line and jump events, on the agent's own code only). A component built for production has
no watchdog: there the host's deadline stops the turn in compiled code, where no Python line
is known.

Only imported inside a component (Python 3.12+ for ``sys.monitoring``).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import linecache
import sys
import time
import types
from dataclasses import dataclass
from typing import Any

from ._agent import Agent

DEV_KEY = "roost.dev"
"""The key of the agent's config that carries its sources (removed before ``ctx.config``)."""
WATCHDOG_SHARE = 0.9
"""A dev turn is stopped after this share of the kind's CPU deadline."""
_TOOL_NAME = "roost-dev-watchdog"


class DeadlineExceeded(BaseException):
    """A dev turn ran past its CPU deadline. A BaseException, so that ``except Exception``
    in the agent does not swallow it."""


DeadlineExceeded.__module__ = "roost_sdk"


@dataclass
class DevAgent:
    """The agent loaded from its sources, and the watchdog of its turns."""

    agent_class: type[Agent]
    watchdog: _Watchdog

    def turn_starts(self) -> None:
        self.watchdog.start()


def load(spec: Any) -> DevAgent:
    """Import the agent from ``spec`` (see the module docstring) and find its class."""
    if not isinstance(spec, dict) or not isinstance(spec.get("files"), dict):
        raise RuntimeError(
            "this is Roost's dev runtime: it runs an agent whose sources come with init "
            "(roost dev, roost.testing); build the agent with `roost build` to run it alone"
        )
    from ._exports import _find_agent_class

    deadline_ms = float(spec.get("deadline_ms") or 0)
    watchdog = _Watchdog(deadline_ms * WATCHDOG_SHARE / 1000.0)
    finder = _SourceFinder(str(spec.get("root") or "/agent"), spec["files"], watchdog)
    sys.meta_path.insert(0, finder)
    watchdog.start()
    module = importlib.import_module(str(spec.get("module") or "agent"))
    return DevAgent(_find_agent_class(module), watchdog)


class _SourceFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports the agent's own modules from the sources ``init`` brought."""

    def __init__(self, root: str, files: dict[str, str], watchdog: _Watchdog) -> None:
        self._root = root.rstrip("/")
        self._files = files
        self._watchdog = watchdog
        self._modules: dict[str, tuple[str, bool]] = {}
        """Module name -> (file, is a package)."""
        for rel in files:
            parts = rel.removesuffix(".py").split("/")
            package = parts[-1] == "__init__"
            if package:
                parts = parts[:-1]
            if parts and all(p.isidentifier() for p in parts):
                self._modules[".".join(parts)] = (rel, package)

    def find_spec(
        self,
        fullname: str,
        path: Any = None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        found = self._modules.get(fullname)
        if found is None:
            return None
        rel, package = found
        spec = importlib.machinery.ModuleSpec(
            fullname, self, origin=f"{self._root}/{rel}", is_package=package
        )
        spec.has_location = True
        if package:
            spec.submodule_search_locations = [f"{self._root}/{rel.rsplit('/', 1)[0]}"]
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        rel, _ = self._modules[module.__name__]
        filename = f"{self._root}/{rel}"
        source = self._files[rel]
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        code = compile(source, filename, "exec", dont_inherit=True)
        self._watchdog.watch(code)
        module.__file__ = filename
        exec(code, module.__dict__)


class _Watchdog:
    """Raises :class:`DeadlineExceeded` in the agent's code once a turn has run ``budget_s``."""

    def __init__(self, budget_s: float) -> None:
        self._budget_s = budget_s
        self._deadline = float("inf")
        self._monitoring: Any = getattr(sys, "monitoring", None)
        self._tool: int | None = None
        if budget_s > 0 and self._monitoring is not None:
            self._tool = self._claim_tool()

    def _claim_tool(self) -> int | None:
        monitoring = self._monitoring
        for tool in range(5, 0, -1):
            if monitoring.get_tool(tool) is None:
                monitoring.use_tool_id(tool, _TOOL_NAME)
                events = monitoring.events
                monitoring.register_callback(tool, events.LINE, self._tick)
                monitoring.register_callback(tool, events.JUMP, self._tick)
                return tool
        return None

    def start(self) -> None:
        self._deadline = time.monotonic() + self._budget_s if self._tool is not None else 1e300

    def watch(self, code: types.CodeType) -> None:
        """Check the time on every line and backward jump of ``code`` and the code in it."""
        if self._tool is None:
            return
        events = self._monitoring.events
        pending = [code]
        while pending:
            current = pending.pop()
            self._monitoring.set_local_events(self._tool, current, events.LINE | events.JUMP)
            pending.extend(c for c in current.co_consts if isinstance(c, types.CodeType))

    def _tick(self, *_args: Any) -> None:
        if time.monotonic() <= self._deadline:
            return
        self._deadline = 1e300  # once per turn: the agent may still be unwinding
        frame = sys._getframe(1)
        raise DeadlineExceeded(
            f"ran past the kind's CPU deadline at {frame.f_code.co_filename}:"
            f"{frame.f_lineno} (in {frame.f_code.co_name}); dev mode stops a turn at "
            f"{WATCHDOG_SHARE:.0%} of limits.cpu_deadline_ms to show where it was"
        )
