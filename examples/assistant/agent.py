"""Chat with memory.

Shows: conversation history kept in ``ctx.state`` (so it survives hibernation and restarts),
replies streamed token by token (``stream=True``: tokens reach the user's SSE stream or
WebSocket as the model produces them), and summarisation: once the history grows past
``max_history`` messages, the older ones are folded into a running summary by the llm and
only the last ``keep_recent`` are kept verbatim.

Send a string (or ``{"text": ...}``); the reply is the assistant's answer. ``"/reset"``
forgets everything.
"""

from __future__ import annotations

from typing import Any

from roost_sdk import Agent, CapabilityError, Context, OpError

Message = dict[str, str]

SYSTEM_PROMPT = "You are a friendly, concise assistant."
SUMMARY_PROMPT = (
    "Summarise the conversation below in a few sentences. Keep names, facts and decisions "
    "the assistant will need later."
)


class Assistant(Agent):
    async def on_message(self, ctx: Context, msg: Any) -> None:
        text = str(msg.get("text", "") if isinstance(msg, dict) else msg).strip()
        if not text:
            ctx.reply("Say something and I will answer.")
            return
        if text == "/reset":
            ctx.state.clear()
            ctx.reply("Forgotten. Let's start over.")
            return

        history: list[Message] = ctx.state.setdefault("history", [])
        history.append({"role": "user", "content": text})
        try:
            answer = await ctx.llm.chat(self._prompt(ctx), stream=True)
        except (CapabilityError, OpError) as exc:
            history.pop()  # the question was not answered: do not remember it
            ctx.reply(f"Sorry, I cannot answer right now ({exc}).")
            return
        history.append({"role": "assistant", "content": answer["content"]})
        ctx.reply(answer["content"])

        if len(history) > int(ctx.config.get("max_history", 8)):
            await self._summarise(ctx)

    def _prompt(self, ctx: Context) -> list[Message]:
        prompt = [{"role": "system", "content": SYSTEM_PROMPT}]
        if summary := ctx.state.get("summary"):
            prompt.append(
                {"role": "system", "content": f"Summary of the conversation so far: {summary}"}
            )
        return prompt + ctx.state["history"]

    async def _summarise(self, ctx: Context) -> None:
        """Fold all but the last ``keep_recent`` messages into ``ctx.state["summary"]``."""
        history: list[Message] = ctx.state["history"]
        keep = int(ctx.config.get("keep_recent", 4))
        older, recent = history[:-keep], history[-keep:]
        lines = [f"Earlier summary: {ctx.state['summary']}"] if ctx.state.get("summary") else []
        lines += [f"{m['role']}: {m['content']}" for m in older]
        try:
            result = await ctx.llm.chat(  # not streamed: the user does not see the summary
                [
                    {"role": "system", "content": SUMMARY_PROMPT},
                    {"role": "user", "content": "\n".join(lines)},
                ]
            )
        except (CapabilityError, OpError) as exc:
            ctx.log.warn(f"summarising failed, keeping the full history: {exc}")
            return
        ctx.state["summary"] = result["content"]
        ctx.state["history"] = recent
        ctx.state["summaries"] = ctx.state.get("summaries", 0) + 1
