"""An assistant with tools: one calls an allow-listed HTTP API, one is plain Python.

Shows: ``run_tools`` letting the model call typed Python functions (their JSON schemas come
from the type hints and docstrings), within budgets (model rounds, tool calls, tokens); a
tool that awaits ``ctx.http.fetch`` under the kind's ``[capabilities.http] hosts``
allow-list; a tool that is pure Python; and the conversation kept in ``ctx.state``.

Send a question: ``How many US dollars are 250 euros?``. ``"/reset"`` forgets the
conversation.
"""

from __future__ import annotations

import ast
import json
import operator
from typing import Any

from roost_sdk import Agent, CapabilityError, Context, OpError, run_tools

SYSTEM_PROMPT = (
    "You are a concise assistant. Use exchange_rate for currency rates and calculate for "
    "arithmetic; never guess a rate."
)
MAX_KEPT = 20
"""Messages of the conversation kept in state."""


async def exchange_rate(ctx: Context, base: str, quote: str) -> float:
    """The current exchange rate from one currency to another (ECB reference rates).

    Args:
        base: Three-letter code of the currency to convert from, such as EUR.
        quote: Three-letter code of the currency to convert to, such as USD.
    """
    api = str(ctx.config.get("rates_api", "https://api.frankfurter.app"))
    base, quote = base.strip().upper(), quote.strip().upper()
    page = await ctx.http.fetch(f"{api}/latest?from={base}&to={quote}")
    if page["status"] != 200:
        raise RuntimeError(f"the rates service answered {page['status']}")
    return float(json.loads(page["body"])["rates"][quote])


_OPERATORS: dict[type[ast.AST], Any] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def calculate(expression: str) -> float:
    """Evaluate an arithmetic expression: numbers, + - * / ** and parentheses.

    Args:
        expression: The expression, such as "250 * 1.08".
    """

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            if isinstance(node.op, ast.Pow) and abs(value(node.right)) > 64:
                raise ValueError("exponent too large")
            return float(_OPERATORS[type(node.op)](value(node.left), value(node.right)))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return float(_OPERATORS[type(node.op)](value(node.operand)))
        raise ValueError(f"not arithmetic: {ast.unparse(node)}")

    return round(value(ast.parse(expression, mode="eval").body), 10)


class Toolbox(Agent):
    async def on_message(self, ctx: Context, msg: Any) -> None:
        text = str(msg.get("text", "") if isinstance(msg, dict) else msg).strip()
        if text == "/reset":
            ctx.state.clear()
            ctx.reply("Forgotten.")
            return
        if not text:
            ctx.reply("Ask me about exchange rates or arithmetic.")
            return
        history: list[dict[str, Any]] = ctx.state.get("history", [])
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            *history,
            {"role": "user", "content": text},
        ]
        try:
            run = await run_tools(
                ctx,
                messages,
                tools=[exchange_rate, calculate],
                max_rounds=int(ctx.config.get("max_rounds", 4)),
                max_tool_calls=int(ctx.config.get("max_tool_calls", 8)),
                max_total_tokens=int(ctx.config.get("max_total_tokens", 20000)),
            )
        except (CapabilityError, OpError) as exc:
            ctx.reply(f"Sorry, I cannot answer right now ({exc}).")
            return
        ctx.state["history"] = run.messages[1:][-MAX_KEPT:]
        ctx.state["tool_calls"] = ctx.state.get("tool_calls", 0) + len(run.calls)
        ctx.reply(
            {
                "answer": run.content,
                "tools": [
                    {"name": c.name, "arguments": c.arguments, "result": c.result, "error": c.error}
                    for c in run.calls
                ],
                "stopped": run.stopped,
            }
        )
