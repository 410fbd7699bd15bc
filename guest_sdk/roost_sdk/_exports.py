"""The guest side of the roost:agent world: drives an ``Agent`` from the host's calls.

Only imported inside a component built by ``roost build``, where ``wit_world`` exists.
Handlers are coroutines. Each ``on-event`` starts one and runs it until it finishes or
awaits an async op; the op's ``on-complete`` resumes it. The coroutine lives in guest memory
between calls, which is what lets ``await ctx.sleep(...)`` span several turns.

A component built for one agent (:func:`make_world`) has the agent's module baked in. The
dev runtime (:func:`make_dev_world`, used by ``roost dev`` and ``roost.testing``) is built
once and gets the agent's sources with ``init`` instead (:mod:`roost_sdk._dev`).

Guest tracebacks are tidied before they reach the host: the SDK's own driver frames are
dropped, and the agent's files are named relative to its directory (``agent.py``) instead
of by the path the component mounts them at (``/1/agent.py``); the host names them by their
real path when it knows where the agent's source is.
"""

from __future__ import annotations

import inspect
import os
import traceback
import types as _pytypes
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import wit_world
from componentize_py_types import Err
from wit_world.imports import types as wit

from . import _dev
from ._agent import Agent
from ._context import Context, OpError, PendingOp, pack, unpack


@dataclass
class _Handler:
    event_id: int
    coro: Coroutine[Any, Any, Any]


class _Runtime:
    def __init__(self, agent_class: type[Agent] | None, agent_root: str | None) -> None:
        self.agent_class = agent_class
        """None in the dev runtime until ``init`` loads the agent's sources."""
        self.agent_root = agent_root
        """Where the component mounts the agent's directory (``/1``), to name its files
        relative to it in tracebacks; None when they carry their real paths (dev)."""
        self.dev: _dev.DevAgent | None = None
        self.agent: Agent | None = None
        self.ctx: Context | None = None
        self.committed_state = b""
        self.waiting: dict[int, _Handler] = {}
        self.finished: dict[int, Any] = {}
        """Results of ops that completed before their handler awaited them."""
        self.replies: list[wit.Reply] = []
        self.done: list[int] = []

    # -- exports -----------------------------------------------------------------------
    def init(self, config: bytes, state: bytes | None) -> None:
        try:
            cfg = unpack(config) if config else {}
            agent_config = cfg.get("config", {})
            spec = agent_config.pop(_dev.DEV_KEY, None) if isinstance(agent_config, dict) else None
            if self.agent_class is None:
                self.dev = _dev.load(spec)
                self.agent_class = self.dev.agent_class
            self._turn_starts()
            restored = unpack(state) if state else {}
            if not isinstance(restored, dict):
                raise TypeError(f"committed state is a {type(restored).__name__}, not a map")
            self.committed_state = state or pack({})
            self.ctx = Context(
                kind=cfg.get("kind", ""),
                agent_id=cfg.get("id", ""),
                config=agent_config,
                state=restored,
            )
            self.agent = self.agent_class()
            self._run_to_end(self.agent.on_start(self.ctx))
        except BaseException as exc:
            raise Err(self._traceback(exc)) from None

    def on_event(self, event: wit.Event) -> wit.TurnOutput:
        try:
            self._turn_starts()
            agent, ctx = self._ready()
            payload = unpack(event.payload)
            if event.kind == "message":
                coro = agent.on_message(ctx, payload)
            elif event.kind == "timer":
                coro = agent.on_timer(ctx, payload)
            elif event.kind == "agent":
                coro = agent.on_agent_message(ctx, payload["sender"], payload["message"])
            elif event.kind == "continuation":
                coro = _continue(agent, ctx, payload)
            else:
                raise ValueError(f"unknown event kind {event.kind!r}")
            self._step(_Handler(event.id, _as_coroutine(coro)), None, None)
            return self._output()
        except BaseException as exc:
            raise Err(self._traceback(exc)) from None

    def on_complete(self, op: int, outcome: Any) -> wit.TurnOutput:
        try:
            self._turn_starts()
            handler = self.waiting.pop(op, None)
            if handler is None:
                # Started but not awaited yet (a handler awaits several ops in turn):
                # keep the result until the handler gets to it.
                self.finished[op] = outcome
                return self._output()
            self._resume(handler, outcome)
            return self._output()
        except BaseException as exc:
            raise Err(self._traceback(exc)) from None

    def _turn_starts(self) -> None:
        if self.dev is not None:
            self.dev.turn_starts()

    def _traceback(self, exc: BaseException) -> str:
        return format_guest_traceback(exc, self.agent_root)

    # -- driving handlers --------------------------------------------------------------
    def _resume(self, handler: _Handler, outcome: Any) -> None:
        if isinstance(outcome, wit.OpResult_Ok):
            self._step(handler, unpack(outcome.value), None)
        else:
            self._step(handler, None, OpError(outcome.value))

    def _ready(self) -> tuple[Agent, Context]:
        if self.agent is None or self.ctx is None:
            raise RuntimeError("the host called on-event before init")
        return self.agent, self.ctx

    def _step(self, handler: _Handler, value: Any, exc: BaseException | None) -> None:
        _, ctx = self._ready()
        ctx._reply_sink = lambda message: self.replies.append(
            wit.Reply(handler.event_id, pack(message, "reply"))
        )
        try:
            yielded = handler.coro.throw(exc) if exc is not None else handler.coro.send(value)
        except StopIteration:
            self.done.append(handler.event_id)
            return
        finally:
            ctx._reply_sink = None
        if not isinstance(yielded, PendingOp):
            handler.coro.close()
            raise TypeError(
                f"handlers may only await ctx operations (ctx.sleep, ...), not {yielded!r}"
            )
        if yielded.op_id in self.finished:
            self._resume(handler, self.finished.pop(yielded.op_id))
        else:
            self.waiting[yielded.op_id] = handler

    def _run_to_end(self, coro: Any) -> None:
        coro = _as_coroutine(coro)
        try:
            coro.send(None)
        except StopIteration:
            return
        coro.close()
        raise RuntimeError("on_start must not await async ops; start them from a handler")

    def _output(self) -> wit.TurnOutput:
        _, ctx = self._ready()
        try:
            packed = pack(ctx.state, "state")
        except TypeError as exc:
            raise TypeError(
                f"{exc} (ctx.state is saved as msgpack at the end of every turn)"
            ) from None
        state = None
        if packed != self.committed_state:
            state = packed
            self.committed_state = packed
        out = wit.TurnOutput(self.replies, self.done, state)
        self.replies = []
        self.done = []
        return out


def _continue(agent: Agent, ctx: Context, payload: dict[str, Any]) -> Any:
    """Call the handler an op named with ``then=``: ``handler(ctx, result, tag)``, where
    ``result`` is an OpError when the op failed."""
    handler = getattr(agent, payload["handler"], None)
    if handler is None or payload["handler"].startswith("_"):
        raise AttributeError(f"{type(agent).__name__} has no handler {payload['handler']!r}")
    result = payload["value"] if payload["ok"] else OpError(payload["value"])
    return handler(ctx, result, payload["tag"])


def _as_coroutine(value: Any) -> Coroutine[Any, Any, Any]:
    if inspect.iscoroutine(value):
        return value
    return _completed(value)


@_pytypes.coroutine
def _completed(value: Any) -> Any:
    return value
    yield  # pragma: no cover - makes this a generator-based coroutine


def _find_agent_class(module: _pytypes.ModuleType) -> type[Agent]:
    found = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, Agent)
        and obj is not Agent
        and obj.__module__ == module.__name__
    ]
    if len(found) != 1:
        names = ", ".join(cls.__name__ for cls in found) or "none"
        raise TypeError(
            f"{module.__file__}: expected exactly one subclass of roost_sdk.Agent, found {names}"
        )
    return found[0]


def make_world(module: _pytypes.ModuleType) -> type:
    """Build the ``WitWorld`` export class for the agent defined in ``module``."""
    root = os.path.dirname(module.__file__) if module.__file__ else None
    return _world(_Runtime(_find_agent_class(module), root))


def make_dev_world() -> type:
    """Build the ``WitWorld`` export class of the dev runtime: the agent comes with ``init``."""
    return _world(_Runtime(None, None))


def _world(runtime: _Runtime) -> type:
    class WitWorld(wit_world.WitWorld):  # type: ignore[misc]
        def init(self, config: bytes, state: bytes | None) -> None:
            runtime.init(config, state)

        def on_event(self, event: wit.Event) -> wit.TurnOutput:
            return runtime.on_event(event)

        def on_complete(self, op: int, outcome: Any) -> wit.TurnOutput:
            return runtime.on_complete(op, outcome)

    return WitWorld


_DRIVER_FILES = ("_roost_entry.py", "roost_sdk/_exports.py", "roost_sdk/_dev.py")
"""Frames of the code that calls the agent, not of the agent: left out of tracebacks, with
those of the import machinery that loads it."""


def format_guest_traceback(exc: BaseException, agent_root: str | None) -> str:
    """``exc``'s traceback as the host shows it: the driver's frames left out, the agent's
    files named relative to its directory (see the module docstring)."""
    try:
        tidy = traceback.TracebackException.from_exception(exc)
        _tidy(tidy, agent_root, set())
        return "".join(tidy.format())
    except Exception:  # never hide the error behind a formatting problem
        return "".join(traceback.format_exception(exc))


def _tidy(te: traceback.TracebackException, agent_root: str | None, seen: set[int]) -> None:
    if id(te) in seen:
        return
    seen.add(id(te))
    frames = [f for f in te.stack if not _is_driver(f.filename)]
    if any(not _in_sdk(f.filename) for f in frames):
        # The SDK's frames under the agent's last one say how the SDK noticed the
        # problem, not where it is.
        while frames and _in_sdk(frames[-1].filename):
            frames.pop()
    for frame in frames:
        frame.filename = _display_path(frame.filename, agent_root)
    te.stack = traceback.StackSummary.from_list(frames)
    for chained in (te.__cause__, te.__context__, *(getattr(te, "exceptions", None) or ())):
        if chained is not None:
            _tidy(chained, agent_root, seen)


def _is_driver(filename: str) -> bool:
    return filename.endswith(_DRIVER_FILES) or _is_import_machinery(filename)


def _is_import_machinery(filename: str) -> bool:
    return filename.startswith("<frozen importlib") or filename.endswith("importlib/__init__.py")


def _in_sdk(filename: str) -> bool:
    return "roost_sdk/" in filename


def _display_path(filename: str, agent_root: str | None) -> str:
    if agent_root and filename.startswith(agent_root.rstrip("/") + "/"):
        return filename[len(agent_root.rstrip("/")) + 1 :]
    sdk = filename.rfind("/roost_sdk/")
    if sdk >= 0 and filename.startswith("/0/"):
        return filename[sdk + 1 :]
    return filename


def warm_up() -> None:
    """Run the SDK's per-turn paths at build time, so the interpreter's warmed-up state
    (specialised bytecode, caches) is part of the component's memory image that every
    instance shares, instead of being rebuilt by each instance on its first turn."""
    sample = {"count": 1, "echo": "hello", "items": [1, 2.5, None, True], "blob": b"x"}
    for _ in range(64):
        unpack(pack(sample))
        unpack(pack("hello"))
        ctx = Context(kind="k", agent_id="a", config={}, state=dict(sample))
        ctx.state["count"] = ctx.state.get("count", 0) + 1
        pack(ctx.state)
        wit.Reply(1, pack(sample))
        wit.TurnOutput([], [1], None)
