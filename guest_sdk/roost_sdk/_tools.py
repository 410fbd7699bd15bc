"""Tools for the model: plain Python functions and MCP tools, and the loop that runs them.

A tool is a typed Python function; its JSON schema comes from its type hints and its
docstring (the first paragraph describes the tool, an ``Args:`` section or ``:param x:``
lines describe the parameters)::

    def add(a: int, b: int) -> int:
        \"\"\"Add two integers.

        Args:
            a: The first.
            b: The second.
        \"\"\"
        return a + b

    result = await run_tools(ctx, [{"role": "user", "content": "2 + 3?"}], tools=[add])
    ctx.reply(result.content)

A function may be ``async`` (and await ``ctx`` ops: ``ctx.http.fetch`` ...) and may take
the handler's ``Context`` as a parameter annotated ``Context`` (it is passed in, not shown
to the model). :func:`mcp_tools` makes the tools of a granted MCP server into tools of the
same loop. The loop is an ordinary handler coroutine: each model call and each op a tool
awaits is an async op, journaled like any other, so a handler re-run after a crash replays
the rounds already done.
"""

from __future__ import annotations

import enum
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._context import Context, OpError

_NAME = re.compile(r"[^A-Za-z0-9_-]")


@dataclass
class Tool:
    """A tool the model may call: its name, description and JSON schema, and what runs it
    (``call(ctx, arguments)``, which may return an awaitable)."""

    name: str
    description: str
    parameters: dict[str, Any]
    call: Callable[[Context, dict[str, Any]], Any]

    def spec(self) -> dict[str, Any]:
        """The tool as ``ctx.llm.chat(tools=[...])`` takes it (OpenAI's function tools)."""
        function: dict[str, Any] = {"name": self.name, "parameters": self.parameters}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}

    @classmethod
    def from_function(cls, function: Callable[..., Any], *, name: str | None = None) -> Tool:
        """A tool of a typed Python function (see the module docstring)."""
        description, documented = _docstring(inspect.getdoc(function) or "")
        hints = typing.get_type_hints(function)
        signature = inspect.signature(function)
        properties: dict[str, Any] = {}
        kinds: dict[str, Any] = {}
        required: list[str] = []
        context_parameter: str | None = None
        for parameter in signature.parameters.values():
            hint = hints.get(parameter.name, Any)
            if hint is Context:
                context_parameter = parameter.name
                continue
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                raise TypeError(f"tool {function.__name__}: *args and **kwargs are not tools")
            schema, optional = _schema(hint)
            if parameter.name in documented:
                schema["description"] = documented[parameter.name]
            if parameter.default is not parameter.empty:
                if parameter.default is not None:
                    default = parameter.default
                    schema["default"] = default.value if isinstance(default, enum.Enum) else default
            elif not optional:
                required.append(parameter.name)
            properties[parameter.name] = schema
            kinds[parameter.name] = hint
        parameters: dict[str, Any] = {"type": "object", "properties": properties}
        if required:
            parameters["required"] = required

        def call(ctx: Context, arguments: dict[str, Any]) -> Any:
            unknown = sorted(set(arguments) - set(properties))
            if unknown:
                raise TypeError(f"unknown arguments {', '.join(unknown)}")
            missing = [n for n in required if n not in arguments]
            if missing:
                raise TypeError(f"missing arguments {', '.join(missing)}")
            kwargs = {k: _coerce(v, kinds[k]) for k, v in arguments.items()}
            if context_parameter is not None:
                kwargs[context_parameter] = ctx
            return function(**kwargs)

        return cls(name or function.__name__, description, parameters, call)


def tool(function: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
    """``@tool`` (or ``@tool(name="...")``) makes a function a :class:`Tool`; plain
    functions passed to :func:`run_tools` are made tools the same way."""

    def make(f: Callable[..., Any]) -> Tool:
        return Tool.from_function(f, name=name)

    return make if function is None else make(function)


async def mcp_tools(ctx: Context, server: str, *, prefix: str = "") -> list[Tool]:
    """The tools of the granted MCP server ``server``, as tools of :func:`run_tools`
    (named ``prefix + name``, with characters the model's API refuses replaced by ``_``).
    A call's result is the text the server returned; a call the server marks as an error
    is an error the model sees."""
    listed = await ctx.mcp.list_tools(server)
    tools = []
    for spec in listed["tools"]:
        remote = str(spec["name"])

        def call(ctx: Context, arguments: dict[str, Any], remote: str = remote) -> Any:
            return _mcp_call(ctx, server, remote, arguments)

        schema = spec.get("input_schema") or {"type": "object", "properties": {}}
        local = _NAME.sub("_", prefix + remote)[:64]
        tools.append(Tool(local, str(spec.get("description") or ""), schema, call))
    return tools


async def _mcp_call(ctx: Context, server: str, name: str, arguments: dict[str, Any]) -> Any:
    result = await ctx.mcp.call_tool(server, name, arguments)
    if result.get("is_error"):
        raise RuntimeError(result.get("text") or "the tool failed")
    if result.get("structured") is not None:
        return result["structured"]
    return result.get("text", "")


@dataclass
class ToolCallRecord:
    """One tool call the loop ran."""

    id: str
    name: str
    arguments: Any
    result: Any = None
    error: str | None = None


@dataclass
class ToolRun:
    """What :func:`run_tools` did."""

    content: str
    """The model's last answer."""
    messages: list[dict[str, Any]]
    """The whole conversation: the messages given, then every assistant message and tool
    result (append the next user message to continue it)."""
    calls: list[ToolCallRecord] = field(default_factory=list)
    rounds: int = 0
    """Model calls made."""
    usage: dict[str, int] = field(default_factory=lambda: {"input_tokens": 0, "output_tokens": 0})
    stopped: str = "answered"
    """``answered`` (the model answered without calling tools), or the budget that ended
    the loop: ``max_rounds``, ``max_tool_calls``, ``max_total_tokens``."""


async def run_tools(
    ctx: Context,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[Tool | Callable[..., Any]],
    *,
    model: str | None = None,
    max_rounds: int = 8,
    max_tool_calls: int = 32,
    max_total_tokens: int | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    stream: bool = False,
    tool_choice: str | None = None,
) -> ToolRun:
    """Let the model call ``tools`` until it answers, within budgets: at most
    ``max_rounds`` model calls, ``max_tool_calls`` tool calls and ``max_total_tokens``
    tokens (input and output, over every round). A tool that raises (or gets arguments it
    cannot take) does not end the loop: the model sees the error and may try again.
    ``tool_choice`` applies to the first round (later rounds are ``auto``)."""
    offered = [t if isinstance(t, Tool) else Tool.from_function(t) for t in tools]
    by_name = {t.name: t for t in offered}
    if len(by_name) != len(offered):
        raise ValueError("tool names must be unique")
    specs = [t.spec() for t in offered]
    run = ToolRun(content="", messages=list(messages))
    choice = tool_choice
    while True:
        if run.rounds >= max_rounds:
            run.stopped = "max_rounds"
            return run
        answer = await ctx.llm.chat(
            run.messages,
            model=model,
            max_tokens=max_tokens,
            temperature=temperature,
            tools=specs or None,
            tool_choice=choice if specs else None,
            stream=stream,
        )
        choice = None
        run.rounds += 1
        run.usage["input_tokens"] += answer["usage"]["input_tokens"]
        run.usage["output_tokens"] += answer["usage"]["output_tokens"]
        run.messages.append(answer["message"])
        run.content = answer["content"]
        calls = answer.get("tool_calls") or []
        if not calls:
            run.stopped = "answered"
            return run
        for call in calls:
            if len(run.calls) >= max_tool_calls:
                run.stopped = "max_tool_calls"
                _answer_unrun(run, call)
                continue
            record = ToolCallRecord(call["id"], call["name"], call.get("arguments"))
            run.calls.append(record)
            await _run_call(ctx, by_name, call, record)
            run.messages.append(
                {
                    "role": "tool",
                    "tool_call_id": call["id"],
                    "content": _as_text(record.result)
                    if record.error is None
                    else f"error: {record.error}",
                }
            )
        if run.stopped == "max_tool_calls":
            return run
        total = run.usage["input_tokens"] + run.usage["output_tokens"]
        if max_total_tokens is not None and total >= max_total_tokens:
            run.stopped = "max_total_tokens"
            return run


async def _run_call(
    ctx: Context, tools: dict[str, Tool], call: dict[str, Any], record: ToolCallRecord
) -> None:
    found = tools.get(call["name"])
    if found is None:
        record.error = f"there is no tool {call['name']!r}; use one of {', '.join(tools)}"
        return
    arguments = call.get("arguments")
    if not isinstance(arguments, dict):
        record.error = call.get("arguments_error") or "the arguments must be a JSON object"
        return
    try:
        outcome = found.call(ctx, arguments)
        if inspect.isawaitable(outcome):
            outcome = await outcome
    except OpError as exc:
        record.error = str(exc)
    except Exception as exc:  # the model sees what went wrong and may try again
        record.error = f"{type(exc).__name__}: {exc}"
    else:
        record.result = outcome


def _answer_unrun(run: ToolRun, call: dict[str, Any]) -> None:
    """Every tool call an assistant message holds needs an answer before the next model
    call; one past the budget is answered as not run."""
    run.messages.append(
        {
            "role": "tool",
            "tool_call_id": call["id"],
            "content": "error: not run: the tool call budget is used up",
        }
    )


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return str(value)


# -- schemas of type hints -----------------------------------------------------------------------


def _schema(hint: Any) -> tuple[dict[str, Any], bool]:
    """The JSON schema of a type hint, and whether it admits None."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(members) < len(typing.get_args(hint))
        if len(members) == 1:
            return _schema(members[0])[0], optional
        return {"anyOf": [_schema(a)[0] for a in members]}, optional
    if hint is Any or hint is inspect.Parameter.empty:
        return {}, False
    if hint is type(None):
        return {"type": "null"}, True
    if origin is typing.Literal:
        values = list(typing.get_args(hint))
        return {"enum": values}, False
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {"enum": [member.value for member in hint]}, False
    simple = {str: "string", bool: "boolean", int: "integer", float: "number"}
    if hint in simple:
        return {"type": simple[hint]}, False
    if hint in (list, tuple, set) or origin in (list, tuple, set, Sequence):
        args = typing.get_args(hint)
        schema: dict[str, Any] = {"type": "array"}
        if args and args[0] is not Ellipsis:
            schema["items"] = _schema(args[0])[0]
        return schema, False
    if hint is dict or origin is dict:
        args = typing.get_args(hint)
        schema = {"type": "object"}
        if len(args) == 2:
            schema["additionalProperties"] = _schema(args[1])[0]
        return schema, False
    return {}, False


def _coerce(value: Any, hint: Any) -> Any:
    """The model sends JSON: a float parameter may get an integer (made a float), an enum
    parameter gets its value (made the member; a value it does not have raises)."""
    members = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(members) == 1 and typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = members[0]
    if value is None:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(hint, type) and issubclass(hint, enum.Enum) and not isinstance(value, hint):
        return hint(value)
    return value


def _docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The description (the first paragraph) and the parameters' descriptions (a Google
    style ``Args:`` section, or reST ``:param name:`` lines)."""
    paragraphs = doc.strip().split("\n\n")
    description = " ".join(paragraphs[0].split()) if paragraphs and paragraphs[0] else ""
    params: dict[str, str] = {}
    for match in re.finditer(r"^\s*:param\s+(?:\S+\s+)?(\w+):\s*(.+)$", doc, re.M):
        params[match.group(1)] = match.group(2).strip()
    section = re.search(r"^(?:Args|Arguments|Parameters):\s*\n((?:[ \t]+.*\n?)+)", doc, re.M)
    if section:
        current = None
        for line in section.group(1).splitlines():
            item = re.match(r"^\s*(\w+)(?:\s*\([^)]*\))?:\s*(.*)$", line)
            if item and (current is None or _indent(line) <= _indent_of(section, current)):
                current = item.group(1)
                params[current] = item.group(2).strip()
            elif current is not None and line.strip():
                params[current] = f"{params[current]} {line.strip()}".strip()
    return description, params


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _indent_of(section: re.Match[str], name: str) -> int:
    for line in section.group(1).splitlines():
        if re.match(rf"^\s*{re.escape(name)}\b", line):
            return _indent(line)
    return 0
