"""``ctx``: what a handler can see and do."""

from __future__ import annotations

import json as _json
import random as _pyrandom
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar, overload

import msgpack


class CapabilityError(Exception):
    """A host call failed: not granted, over quota, or refused by the host."""


class OpError(Exception):
    """An async op (sleep, llm, http, ...) completed with an error.

    ``str(error)`` is the message. When a provider failed (an LLM provider, an MCP server)
    the error says more: ``status`` (its HTTP status, None when there was no answer),
    ``code`` (its error code), ``retryable`` (whether the same call may succeed later:
    429, 5xx, timeouts, broken connections), ``provider``, ``type`` (``http_error``,
    ``timeout``, ``unreachable``, ``stream_error``, ``truncated``, ``malformed``) and
    ``retry_after_s``; ``details`` holds all of them."""

    def __init__(self, text: str) -> None:
        details = _error_details(text)
        super().__init__(details.pop("message") if details else text)
        self.details: dict[str, Any] = details or {}
        self.type: str | None = self.details.get("type")
        self.status: int | None = self.details.get("status")
        self.code: str | None = self.details.get("code")
        self.provider: str | None = self.details.get("provider")
        self.retryable: bool = bool(self.details.get("retryable", False))
        self.retry_after_s: float | None = self.details.get("retry_after_s")


def _error_details(text: str) -> dict[str, Any] | None:
    """The JSON object an op error with details is (see the WIT's ``llm`` interface)."""
    if not text.startswith("{"):
        return None
    try:
        details = _json.loads(text)
    except ValueError:
        return None
    if not isinstance(details, dict) or not isinstance(details.get("message"), str):
        return None
    return details


def _imports(name: str) -> Any:
    """The generated binding module of one capability, or a clear error if not granted."""
    try:
        module = __import__(f"wit_world.imports.{name}", fromlist=[name])
    except ImportError as exc:
        raise CapabilityError(
            f"capability {name!r} is not available to this agent: grant it in the manifest "
            f"([capabilities.{name}]) and rebuild the agent ({exc})"
        ) from None
    return module


def pack(value: Any, what: str = "value") -> bytes:
    """msgpack-encode ``value`` the way the host decodes it. ``what`` names the value in the
    error raised when it cannot be encoded (``state['tags'] is a set; use a list``)."""
    try:
        return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        problem = unencodable(value, what) or (
            f"{what} cannot be encoded as msgpack ({exc}); use None, bool, int, float, str, "
            "bytes, list and dict"
        )
        raise TypeError(problem) from None


_MAX_DEPTH = 512
"""msgpack's nesting limit."""
_INT_RANGE = (-(2**63), 2**64 - 1)
_ADVICE = {
    "set": "use a list",
    "frozenset": "use a list",
    "datetime": "use a unix time (float) or an ISO 8601 string",
    "date": "use an ISO 8601 string",
    "time": "use an ISO 8601 string",
    "timedelta": "use seconds (float)",
    "Decimal": "use a str or a float",
    "UUID": "use str(value)",
    "complex": "use a [real, imaginary] list",
    "memoryview": "use bytes(value)",
}


def unencodable(value: Any, what: str = "value") -> str | None:
    """Where in ``value`` msgpack fails and why, as ``what['key'][0] is a set; use a list``;
    None when every part of it can be encoded."""
    stack: list[tuple[Any, str, int]] = [(value, what, 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > _MAX_DEPTH:
            return f"{path} is nested more than {_MAX_DEPTH} levels deep"
        if item is None or isinstance(item, bool | float | str | bytes | bytearray):
            continue
        if isinstance(item, int):
            if not _INT_RANGE[0] <= item <= _INT_RANGE[1]:
                return f"{path} is an int too large for msgpack (64 bits); use a str"
            continue
        if isinstance(item, list | tuple):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in reversed(list(enumerate(item))))
            continue
        if isinstance(item, dict):
            children = []
            for key, v in item.items():
                if key is not None and not isinstance(key, str | int | float | bytes | tuple):
                    return f"{path} has a key {key!r} of type {type(key).__name__}; use str keys"
                children.append((v, f"{path}[{key!r}]", depth + 1))
            stack.extend(reversed(children))
            continue
        name = type(item).__name__
        advice = _ADVICE.get(name, "convert it to one of those types")
        return f"{path} is {_article(name)} {name}; {advice}"
    return None


def _article(name: str) -> str:
    return "an" if name[:1].lower() in "aeiou" else "a"


def unpack(data: bytes) -> Any:
    """Decode msgpack bytes from the host."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


T = TypeVar("T")


class PendingOp(Generic[T]):
    """Awaited by handlers: yields to the runtime, which resumes it on ``on-complete``
    with the op's result (a ``T``)."""

    __slots__ = ("op_id",)

    def __init__(self, op_id: int) -> None:
        self.op_id = op_id

    def __await__(self) -> Generator[PendingOp[T], Any, T]:
        result: T = yield self
        return result


class Kv:
    """Per-agent key/value storage. Values are bytes; writes commit with the turn."""

    def get(self, key: str) -> bytes | None:
        return _imports("kv").get(key)  # type: ignore[no-any-return]

    def set(self, key: str, value: bytes) -> None:
        if not isinstance(value, bytes | bytearray):
            raise TypeError(f"kv values are bytes, got {type(value).__name__}")
        try:
            _imports("kv").set(key, bytes(value))
        except Exception as exc:
            raise CapabilityError(_err_text(exc)) from None

    def delete(self, key: str) -> None:
        _imports("kv").delete(key)

    def keys(self, prefix: str = "", limit: int = 1000) -> list[str]:
        return _imports("kv").keys(prefix, limit)  # type: ignore[no-any-return]


class Log:
    """Log lines attributed to this agent."""

    def _write(self, level_name: str, message: str) -> None:
        types = _imports("types")
        log = _imports("log")
        log.write(getattr(types.Level, level_name), str(message))

    def debug(self, message: str) -> None:
        self._write("DEBUG", message)

    def info(self, message: str) -> None:
        self._write("INFO", message)

    def warn(self, message: str) -> None:
        self._write("WARN", message)

    def error(self, message: str) -> None:
        self._write("ERROR", message)


class HostRandom(_pyrandom.Random):
    """``random.Random`` drawing from the host's CSPRNG: ``ctx.random.randint(1, 6)``."""

    def random(self) -> float:
        return (int.from_bytes(self.randbytes(7), "big") >> 3) * (2.0**-53)

    def getrandbits(self, k: int) -> int:
        if k < 0:
            raise ValueError("number of bits must be non-negative")
        numbytes = (k + 7) // 8
        value = int.from_bytes(self.randbytes(numbytes), "big")
        return value >> (numbytes * 8 - k)

    def randbytes(self, n: int) -> bytes:
        out = bytearray()
        rnd = _imports("random")
        while len(out) < n:
            out += rnd.bytes(min(n - len(out), 65536))
        return bytes(out)

    def seed(self, *args: Any, **kwargs: Any) -> None:
        return None

    def getstate(self) -> Any:
        raise NotImplementedError("the host random source has no state")

    def setstate(self, state: Any) -> None:
        raise NotImplementedError("the host random source has no state")


class Llm:
    """Chat completions (with tools) and embeddings through the host's model providers."""

    @overload
    def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        parallel_tool_calls: bool | None = None,
        response_format: dict[str, Any] | None = None,
        stream: bool = False,
        then: None = None,
        tag: Any = None,
    ) -> PendingOp[dict[str, Any]]: ...

    @overload
    def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        parallel_tool_calls: bool | None = None,
        response_format: dict[str, Any] | None = None,
        stream: bool = False,
        then: str,
        tag: Any = None,
    ) -> None: ...

    def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        parallel_tool_calls: bool | None = None,
        response_format: dict[str, Any] | None = None,
        stream: bool = False,
        then: str | None = None,
        tag: Any = None,
    ) -> PendingOp[dict[str, Any]] | None:
        """``await ctx.llm.chat(messages)`` returns ``{"content", "tool_calls",
        "finish_reason", "message", "model", "provider", "usage"}``.

        ``tools`` are OpenAI function tools (``{"type": "function", "function": {"name",
        "description", "parameters"}}``); the model's calls come back in ``tool_calls`` as
        ``{"id", "name", "arguments"}`` with the arguments parsed, and ``message`` is the
        assistant message to append before the tool results (``roost_sdk.run_tools`` runs
        the whole loop). ``tool_choice`` is ``"auto"``, ``"none"``, ``"required"`` or a
        tool's name. ``usage`` is ``{"input_tokens", "output_tokens", "estimated"}``
        (estimated from the text when the provider reported none).

        With ``stream=True`` tokens also reach the user as they arrive. With
        ``then="handler"`` the call returns at once and ``handler(ctx, result, tag)`` is
        called later as a new turn (the agent may hibernate meanwhile). A failure raises
        :class:`OpError` (``status``, ``code``, ``retryable``)."""
        request = {
            "messages": messages,
            "model": model,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "tools": tools,
            "tool_choice": tool_choice,
            "parallel_tool_calls": parallel_tool_calls,
            "response_format": response_format,
            "stream": stream,
            "then": then,
            "tag": tag,
        }
        return _start("llm", "chat", request, then)

    @overload
    def embed(
        self,
        input: str | list[str],
        *,
        model: str | None = None,
        then: None = None,
        tag: Any = None,
    ) -> PendingOp[dict[str, Any]]: ...

    @overload
    def embed(
        self, input: str | list[str], *, model: str | None = None, then: str, tag: Any = None
    ) -> None: ...

    def embed(
        self,
        input: str | list[str],
        *,
        model: str | None = None,
        then: str | None = None,
        tag: Any = None,
    ) -> PendingOp[dict[str, Any]] | None:
        """``await ctx.llm.embed(["a", "b"])`` returns ``{"embeddings": [[...], [...]],
        "model", "provider", "usage"}``, one vector per text, through the grant's
        ``embedding_models``."""
        request = {"input": input, "model": model, "then": then, "tag": tag}
        return _start("llm", "embed", request, then)


class Mcp:
    """Tools and resources of the remote MCP servers the kind's grant names
    (``[capabilities.mcp] servers``). Every call is an async op; each also has the
    continuation form (``then="handler"``: it returns None and the result arrives as
    ``handler(ctx, result, tag)``)."""

    @overload
    def list_tools(
        self, server: str, *, then: None = None, tag: Any = None
    ) -> PendingOp[dict[str, Any]]: ...
    @overload
    def list_tools(self, server: str, *, then: str, tag: Any = None) -> None: ...
    def list_tools(
        self, server: str, *, then: str | None = None, tag: Any = None
    ) -> PendingOp[dict[str, Any]] | None:
        """``{"tools": [{"name", "description", "input_schema"}]}``."""
        return _start("mcp", "list_tools", {"server": server, "then": then, "tag": tag}, then)

    @overload
    def call_tool(
        self,
        server: str,
        name: str,
        arguments: dict[str, Any] | None = None,
        *,
        then: None = None,
        tag: Any = None,
    ) -> PendingOp[dict[str, Any]]: ...
    @overload
    def call_tool(
        self,
        server: str,
        name: str,
        arguments: dict[str, Any] | None = None,
        *,
        then: str,
        tag: Any = None,
    ) -> None: ...
    def call_tool(
        self,
        server: str,
        name: str,
        arguments: dict[str, Any] | None = None,
        *,
        then: str | None = None,
        tag: Any = None,
    ) -> PendingOp[dict[str, Any]] | None:
        """``{"content": [...], "text", "structured", "is_error"}``: ``text`` joins the
        text parts of ``content``; ``is_error`` is the tool's own failure (the call
        itself worked)."""
        request = {
            "server": server,
            "name": name,
            "arguments": arguments or {},
            "then": then,
            "tag": tag,
        }
        return _start("mcp", "call_tool", request, then)

    @overload
    def list_resources(
        self, server: str, *, then: None = None, tag: Any = None
    ) -> PendingOp[dict[str, Any]]: ...
    @overload
    def list_resources(self, server: str, *, then: str, tag: Any = None) -> None: ...
    def list_resources(
        self, server: str, *, then: str | None = None, tag: Any = None
    ) -> PendingOp[dict[str, Any]] | None:
        """``{"resources": [{"uri", "name", "description", "mime_type"}]}``."""
        request = {"server": server, "then": then, "tag": tag}
        return _start("mcp", "list_resources", request, then)

    @overload
    def read_resource(
        self, server: str, uri: str, *, then: None = None, tag: Any = None
    ) -> PendingOp[dict[str, Any]]: ...
    @overload
    def read_resource(self, server: str, uri: str, *, then: str, tag: Any = None) -> None: ...
    def read_resource(
        self, server: str, uri: str, *, then: str | None = None, tag: Any = None
    ) -> PendingOp[dict[str, Any]] | None:
        """``{"contents": [{"uri", "mime_type", "text" or "blob"}]}``."""
        request = {"server": server, "uri": uri, "then": then, "tag": tag}
        return _start("mcp", "read_resource", request, then)


class Http:
    """Outbound HTTP to the hosts the kind's grant allows."""

    @overload
    def fetch(
        self,
        url: str,
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        then: None = None,
        tag: Any = None,
    ) -> PendingOp[dict[str, Any]]: ...

    @overload
    def fetch(
        self,
        url: str,
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        then: str,
        tag: Any = None,
    ) -> None: ...

    def fetch(
        self,
        url: str,
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        then: str | None = None,
        tag: Any = None,
    ) -> PendingOp[dict[str, Any]] | None:
        """``await ctx.http.fetch(url)`` returns ``{"status", "headers", "body"}``."""
        request = {
            "url": url,
            "method": method,
            "headers": headers or {},
            "body": body,
            "then": then,
            "tag": tag,
        }
        return _start("http", "fetch", request, then)


def _start(
    capability: str, call: str, request: dict[str, Any], then: str | None
) -> PendingOp[Any] | None:
    payload = pack(request, f"{capability}.{call} request")
    try:
        op_id = getattr(_imports(capability), call)(payload)
    except CapabilityError:
        raise
    except Exception as exc:
        raise CapabilityError(_err_text(exc)) from None
    return None if then is not None else PendingOp(op_id)


def _err_text(exc: BaseException) -> str:
    value = getattr(exc, "value", None)
    return value if isinstance(value, str) else str(exc)


class Context:
    """Handed to every handler. ``ctx.state`` is persisted at the end of each turn that
    changed it; everything else is a host capability."""

    def __init__(
        self, *, kind: str, agent_id: str, config: dict[str, Any], state: dict[str, Any]
    ) -> None:
        self.kind = kind
        self.agent_id = agent_id
        self.config = config
        self._state = state
        self.kv = Kv()
        self.log = Log()
        self.random = HostRandom()
        self.llm = Llm()
        self.http = Http()
        self.mcp = Mcp()
        self._reply_sink: Callable[[Any], None] | None = None

    @property
    def address(self) -> str:
        return f"{self.kind}/{self.agent_id}"

    @property
    def state(self) -> dict[str, Any]:
        return self._state

    @state.setter
    def state(self, value: dict[str, Any]) -> None:
        if not isinstance(value, dict):
            raise TypeError(f"ctx.state must be a dict, got {type(value).__name__}")
        self._state = value

    def now(self) -> float:
        """Wall-clock seconds since the epoch, as of the start of this turn."""
        return _imports("clock").now()  # type: ignore[no-any-return]

    def reply(self, message: Any) -> None:
        """Send ``message`` (anything msgpack can carry) to whoever sent the current event."""
        if self._reply_sink is None:
            raise RuntimeError("ctx.reply() may only be called while handling an event")
        self._reply_sink(message)

    def schedule(
        self,
        payload: Any = None,
        *,
        after: float | None = None,
        at: float | None = None,
        every: float | None = None,
        catch_up: str = "once",
        timer_id: str | None = None,
    ) -> str:
        """Set a durable timer (committed with this turn); ``on_timer(ctx, payload)`` runs
        when it fires, waking the agent if it hibernated. ``every`` repeats it; ``catch_up``
        ("once", "all" or "skip") says what happens to occurrences missed while the host
        was down. Returns the timer's id (reuse ``timer_id`` to replace a timer)."""
        timers = _imports("timers")
        packed = pack(payload, "timer payload")
        spec = timers.TimerSpec(timer_id, after, at, every, catch_up, packed)
        try:
            return timers.schedule(spec)  # type: ignore[no-any-return]
        except Exception as exc:
            raise CapabilityError(_err_text(exc)) from None

    def cancel_timer(self, timer_id: str) -> bool:
        """Cancel one of this agent's timers (with this turn); False if there was none."""
        return _imports("timers").cancel(timer_id)  # type: ignore[no-any-return]

    def send(self, kind: str, agent_id: str, message: Any) -> None:
        """Send ``message`` to another agent once this turn commits (never if it fails)."""
        packed = pack(message, "message")
        try:
            _imports("agents").send(kind, agent_id, packed)
        except Exception as exc:
            raise CapabilityError(_err_text(exc)) from None

    @overload
    def ask(
        self,
        kind: str,
        agent_id: str,
        message: Any,
        *,
        timeout: float = 30.0,
        then: None = None,
        tag: Any = None,
    ) -> PendingOp[list[Any]]: ...

    @overload
    def ask(
        self,
        kind: str,
        agent_id: str,
        message: Any,
        *,
        timeout: float = 30.0,
        then: str,
        tag: Any = None,
    ) -> None: ...

    def ask(
        self,
        kind: str,
        agent_id: str,
        message: Any,
        *,
        timeout: float = 30.0,
        then: str | None = None,
        tag: Any = None,
    ) -> PendingOp[list[Any]] | None:
        """``await ctx.ask(kind, id, message)`` returns the other agent's replies."""
        request = {
            "kind": kind,
            "id": agent_id,
            "message": message,
            "timeout_s": timeout,
            "then": then,
            "tag": tag,
        }
        return _start("agents", "ask", request, then)

    @overload
    def approval(
        self,
        action: str,
        details: Any = None,
        *,
        timeout: float | None = None,
        then: None = None,
        tag: Any = None,
    ) -> PendingOp[dict[str, Any]]: ...

    @overload
    def approval(
        self,
        action: str,
        details: Any = None,
        *,
        timeout: float | None = None,
        then: str,
        tag: Any = None,
    ) -> None: ...

    def approval(
        self,
        action: str,
        details: Any = None,
        *,
        timeout: float | None = None,
        then: str | None = None,
        tag: Any = None,
    ) -> PendingOp[dict[str, Any]] | None:
        """Ask a person before acting: ``decision = await ctx.approval("send the invoice",
        {"to": ...})`` waits until an authorised caller approves or rejects it
        (``POST /v1/agents/{kind}/{id}/approvals/{id}``) and returns ``{"id", "approved",
        "decision", "by", "note", "decided_at"}``; ``decision`` is ``"approved"``,
        ``"rejected"`` or ``"expired"`` (nobody decided within ``timeout`` seconds).

        The awaited form keeps the agent resident while it waits, so its timeout is capped
        by the grant's ``max_wait_s``. ``then="handler"`` (the continuation form) lets the
        agent hibernate until the decision arrives as ``handler(ctx, decision, tag)``, for
        up to the grant's ``max_continuation_wait_s``. Needs ``[capabilities.approval]``."""
        request = {
            "action": action,
            "details": details,
            "timeout_s": timeout,
            "then": then,
            "tag": tag,
        }
        return _start("approval", "request", request, then)

    def usage(self) -> dict[str, Any]:
        """This agent's usage today (UTC), as committed before this turn: ``turns``,
        ``cpu_ms``, ``llm_input_tokens``, ``llm_output_tokens``, ``llm_tokens``,
        ``http_calls``, ``errors`` (failed turns), and the kind's daily ``budgets``
        (None: unlimited). Needs ``[capabilities.usage]``."""
        try:
            data = _imports("usage").today()
        except CapabilityError:
            raise
        except Exception as exc:
            raise CapabilityError(_err_text(exc)) from None
        return unpack(data)  # type: ignore[no-any-return]

    async def sleep(self, seconds: float) -> None:
        """Suspend this handler for ``seconds``; the agent's turn ends meanwhile."""
        try:
            op_id = _imports("timers").sleep(float(seconds))
        except CapabilityError:
            raise
        except Exception as exc:
            raise CapabilityError(_err_text(exc)) from None
        pending: PendingOp[None] = PendingOp(op_id)
        await pending
