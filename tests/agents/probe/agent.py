"""A test agent whose behaviour is chosen by the message: {"op": ..., ...}."""

from __future__ import annotations

import os
import time
from typing import Any

from roost_sdk import Agent, CapabilityError, Context


class Probe(Agent):
    async def on_message(self, ctx: Context, msg: Any) -> None:
        op = msg["op"] if isinstance(msg, dict) else msg
        if op == "count":
            ctx.state["count"] = ctx.state.get("count", 0) + 1
            ctx.reply(ctx.state["count"])
        elif op == "kv_set":
            value = msg["value"]
            ctx.kv.set(msg["key"], value.encode() if isinstance(value, str) else value)
            ctx.reply("ok")
        elif op == "kv_try_set":
            try:
                ctx.kv.set(msg["key"], msg["value"])
                ctx.reply("ok")
            except CapabilityError as exc:
                ctx.reply({"error": str(exc)})
        elif op == "kv_get":
            ctx.reply(ctx.kv.get(msg["key"]))
        elif op == "kv_delete":
            ctx.kv.delete(msg["key"])
            ctx.reply("ok")
        elif op == "kv_keys":
            ctx.reply(ctx.kv.keys(msg.get("prefix", "")))
        elif op == "kv_set_then_raise":
            ctx.kv.set(msg["key"], msg["value"])
            ctx.state["count"] = ctx.state.get("count", 0) + 1000
            raise ValueError("boom after writing")
        elif op == "raise":
            raise ValueError("the probe was asked to fail")
        elif op == "loop":
            while True:
                pass
        elif op == "bomb":
            hoard = []
            while True:
                hoard.append(bytearray(32 * 1024 * 1024))
        elif op == "big_state":
            ctx.state["blob"] = "x" * msg["size"]
            ctx.reply("ok")
        elif op == "big_reply":
            ctx.reply("y" * msg["size"])
        elif op == "sleep":
            ctx.reply("before")
            await ctx.sleep(msg["seconds"])
            ctx.state["slept"] = ctx.state.get("slept", 0) + 1
            ctx.reply({"after": ctx.state["slept"]})
        elif op == "sleep_twice":
            await ctx.sleep(msg["seconds"])
            await ctx.sleep(msg["seconds"])
            ctx.reply("twice")
        elif op == "sleep_bad":
            try:
                await ctx.sleep(-1)
            except CapabilityError as exc:
                ctx.reply({"error": str(exc)})
        elif op == "deep_reply":
            ctx.state["count"] = ctx.state.get("count", 0) + 1
            nested: Any = "bottom"
            for _ in range(msg["depth"]):
                nested = [nested]
            ctx.reply(nested)
        elif op == "nan_reply":
            ctx.reply({"nan": float("nan"), "inf": float("inf"), "ninf": float("-inf")})
        elif op == "wasi_env":  # the WASI clock and random numbers, past the SDK
            ctx.reply({"time": time.time(), "random": os.urandom(8).hex()})
        elif op == "env":
            ctx.reply(
                {
                    "now": ctx.now(),
                    "random": ctx.random.randint(1, 1_000_000),
                    "address": ctx.address,
                    "config": ctx.config,
                }
            )
            ctx.log.info("env asked")
        else:
            raise ValueError(f"unknown op {op!r}")
