"""A probe for the dev runtime and roost.testing. Messages are commands: a string, or
``{"do": command, ...}``."""

from __future__ import annotations

from typing import Any

import helper

from roost_sdk import Agent, CapabilityError, Context, OpError


class DevProbe(Agent):
    async def on_message(self, ctx: Context, msg: Any) -> None:
        command = msg.get("do") if isinstance(msg, dict) else msg
        if command == "count":
            count = ctx.state.get("count", 0) + 1
            ctx.state["count"] = count
            ctx.log.info(f"count {count}")
            ctx.reply(count)
        elif command == "kv":
            ctx.kv.set(msg["key"], msg["value"].encode())
            ctx.reply("stored")
        elif command == "sleep":
            before = ctx.now()
            await ctx.sleep(msg["seconds"])
            ctx.reply(round(ctx.now() - before, 3))
        elif command == "remind":
            ctx.schedule({"text": msg["text"]}, after=msg["after"], timer_id="reminder")
            ctx.reply("set")
        elif command == "ask":
            try:
                answer = await ctx.llm.chat([{"role": "user", "content": msg["text"]}], stream=True)
            except (CapabilityError, OpError) as exc:
                ctx.reply(f"failed: {exc}")
                return
            ctx.reply(answer["content"])
        elif command == "tell":
            ctx.send("elsewhere", "bob", {"hello": msg.get("n", 1)})
            ctx.reply("sent")
        elif command == "config":
            ctx.reply(ctx.config)
        elif command == "boom":
            helper.boom()
        elif command == "spin":
            helper.spin()
        elif command == "tags":
            ctx.state["tags"] = {"a", "b"}
        else:
            ctx.reply(helper.VERSION)

    async def on_timer(self, ctx: Context, payload: Any) -> None:
        ctx.reply(f"Reminder: {payload['text']}")
