"""Write Roost agents in Python.

An agent is a class with async handlers::

    from roost_sdk import Agent, Context

    class Echo(Agent):
        async def on_message(self, ctx: Context, msg: object) -> None:
            ctx.state["count"] = ctx.state.get("count", 0) + 1
            ctx.reply({"echo": msg, "count": ctx.state["count"]})

``roost build agent.py -o agent.wasm`` compiles the module to a WebAssembly component.
Inside the component this package talks to the host through the ``roost:agent`` WIT world;
outside one (on a developer's machine) it can be imported for type checking and tests.
"""

from __future__ import annotations

from ._agent import Agent as Agent
from ._context import CapabilityError as CapabilityError
from ._context import Context as Context
from ._context import OpError as OpError
from ._tools import Tool as Tool
from ._tools import ToolCallRecord as ToolCallRecord
from ._tools import ToolRun as ToolRun
from ._tools import mcp_tools as mcp_tools
from ._tools import run_tools as run_tools
from ._tools import tool as tool

__all__ = [
    "Agent",
    "CapabilityError",
    "Context",
    "OpError",
    "Tool",
    "ToolCallRecord",
    "ToolRun",
    "mcp_tools",
    "run_tools",
    "tool",
]
