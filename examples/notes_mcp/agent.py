"""A notebook assistant whose tools live on a remote MCP server.

Shows: ``[capabilities.mcp]`` naming a server, ``mcp_tools`` turning the server's tools into
tools of ``run_tools`` (mixed here with a plain Python one), and ``ctx.mcp.read_resource``.
The host keeps the agent's MCP session, so after the agent hibernates it goes on with the
same session (the server keeps notes per session).

Run the server (``python examples/notes_mcp/server.py``), then send ``remember to buy
milk``, ``what are my notes?``; ``/help`` reads the server's readme resource.
"""

from __future__ import annotations

from typing import Any

from roost_sdk import Agent, CapabilityError, Context, OpError, mcp_tools, run_tools

SYSTEM_PROMPT = "You keep the user's notes with the notebook tools. Answer briefly."
SERVER = "notes"


def word_count(text: str) -> int:
    """How many words a text has.

    Args:
        text: The text to count.
    """
    return len(text.split())


class Notebook(Agent):
    async def on_message(self, ctx: Context, msg: Any) -> None:
        text = str(msg.get("text", "") if isinstance(msg, dict) else msg).strip()
        try:
            if text == "/help":
                readme = await ctx.mcp.read_resource(SERVER, "notes://readme")
                ctx.reply(readme["contents"][0].get("text", ""))
                return
            tools = await mcp_tools(ctx, SERVER)
            run = await run_tools(
                ctx,
                [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}],
                tools=[*tools, word_count],
                max_rounds=3,
            )
        except (CapabilityError, OpError) as exc:
            ctx.reply(f"The notebook is not available right now ({exc}).")
            return
        ctx.state["turns"] = ctx.state.get("turns", 0) + 1
        ctx.reply(
            {
                "answer": run.content,
                "tools": [
                    {"name": c.name, "result": c.result, "error": c.error} for c in run.calls
                ],
            }
        )
