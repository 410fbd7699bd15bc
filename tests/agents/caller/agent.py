"""A test agent for timers, agent messages, the llm, http, logs, usage, approvals and MCP:
{"op": ...}."""

from __future__ import annotations

from typing import Any

from roost_sdk import Agent, CapabilityError, Context, OpError


class Caller(Agent):
    async def on_message(self, ctx: Context, msg: Any) -> None:
        op = msg["op"] if isinstance(msg, dict) else msg
        try:
            await self._handle(ctx, op, msg)
        except (CapabilityError, OpError) as exc:
            ctx.reply({"error": str(exc)})

    async def _handle(self, ctx: Context, op: str, msg: Any) -> None:
        if op == "schedule":
            ctx.reply(
                ctx.schedule(
                    msg.get("payload"),
                    after=msg.get("after"),
                    at=msg.get("at"),
                    every=msg.get("every"),
                    catch_up=msg.get("catch_up", "once"),
                    timer_id=msg.get("id"),
                )
            )
        elif op == "cancel":
            ctx.reply(ctx.cancel_timer(msg["id"]))
        elif op == "state":
            ctx.reply(ctx.state)
        elif op == "remember":
            ctx.state["notes"] = msg["text"]
            ctx.reply("ok")
        elif op == "send":
            ctx.send(msg["kind"], msg["id"], msg["message"])
            ctx.reply("sent")
        elif op == "send_then_raise":
            ctx.send(msg["kind"], msg["id"], msg["message"])
            raise ValueError("failing after send")
        elif op == "ask":
            ctx.reply(
                await ctx.ask(
                    msg["kind"], msg["id"], msg["message"], timeout=msg.get("timeout", 30.0)
                )
            )
        elif op == "ask_two":
            slow = ctx.ask("caller", "slow", {"sleep": 0.5})
            fast = ctx.ask("caller", "fast", "quick")
            ctx.reply([await slow, await fast])  # fast completes first
        elif op == "chat":
            result = await ctx.llm.chat(
                [{"role": "user", "content": msg["text"]}],
                max_tokens=msg.get("max_tokens"),
                stream=msg.get("stream", False),
            )
            ctx.state["tokens"] = ctx.state.get("tokens", 0) + result["usage"]["output_tokens"]
            ctx.reply(result["content"])
        elif op == "chat_tools":
            result = await ctx.llm.chat(
                [{"role": "user", "content": msg["text"]}],
                tools=msg["tools"],
                stream=msg.get("stream", False),
                model=msg.get("model"),
            )
            ctx.reply({k: result[k] for k in ("content", "tool_calls", "finish_reason", "usage")})
        elif op == "chat_error":
            try:
                await ctx.llm.chat(
                    [{"role": "user", "content": msg["text"]}],
                    model=msg.get("model"),
                    stream=msg.get("stream", False),
                )
            except OpError as exc:
                ctx.reply(
                    {
                        "message": str(exc),
                        "status": exc.status,
                        "code": exc.code,
                        "retryable": exc.retryable,
                        "type": exc.type,
                        "provider": exc.provider,
                    }
                )
            else:
                ctx.reply("no error")
        elif op == "embed":
            ctx.reply(await ctx.llm.embed(msg["input"]))
        elif op == "approve":
            decision = await ctx.approval(
                msg["action"], msg.get("details"), timeout=msg.get("timeout")
            )
            ctx.state["decisions"] = ctx.state.get("decisions", 0) + 1
            ctx.reply(decision)
        elif op == "approve_then":
            ctx.approval(
                msg["action"],
                msg.get("details"),
                timeout=msg.get("timeout"),
                then="on_decision",
                tag=msg.get("tag"),
            )
            ctx.reply("asked")
        elif op == "mcp":
            call = getattr(ctx.mcp, msg["call"])
            ctx.reply(await call(*msg.get("args", [])))
        elif op == "chat_then":
            ctx.llm.chat(
                [{"role": "user", "content": msg["text"]}], then="on_answer", tag=msg.get("tag")
            )
            ctx.reply("started")
        elif op == "fetch":
            result = await ctx.http.fetch(msg["url"])
            ctx.reply({"status": result["status"], "body": result["body"]})
        elif op == "spend_then_fail":  # start calls, await them, then fail the handler
            fetches = [ctx.http.fetch(msg["url"]) for _ in range(msg["fetches"])]
            chats = [
                ctx.llm.chat([{"role": "user", "content": "hi"}], max_tokens=msg["max_tokens"])
                for _ in range(msg["chats"])
            ]
            for call in [*fetches, *chats]:
                await call
            raise RuntimeError("failing after spending")
        elif op == "usage":
            ctx.reply(ctx.usage())
        elif op == "log":
            ctx.log.info(msg["text"])
            ctx.reply("logged")
        elif op == "ask_many":  # start asks without awaiting them: how many may start?
            started = 0
            try:
                for i in range(msg["n"]):
                    ctx.ask("caller", f"peer-{i}", "hi")
                    started += 1
            except CapabilityError as exc:
                ctx.reply({"started": started, "error": str(exc)})
                return
            ctx.reply({"started": started})
        elif op == "refused_many":  # calls outside the grant, again and again
            refused = 0
            for i in range(msg["n"]):
                try:
                    ctx.ask("echo", f"e{i}", "hi")
                except CapabilityError:
                    refused += 1
            ctx.reply({"refused": refused})
        elif op == "ask_all":  # ask n peers at once, each relaying to a peer of its own
            asks = [
                ctx.ask(
                    "caller",
                    f"{ctx.agent_id}-peer-{i}",
                    {"relay": f"{ctx.agent_id}-leaf-{i}"},
                    timeout=msg["timeout"],
                )
                for i in range(msg["n"])
            ]
            ctx.reply([await ask for ask in asks])
        elif op == "schedule_many":
            scheduled = 0
            try:
                for i in range(msg["n"]):
                    ctx.schedule(i, after=3600, timer_id=f"{msg.get('prefix', 'm')}{i}")
                    scheduled += 1
            except CapabilityError as exc:
                ctx.reply({"scheduled": scheduled, "error": str(exc)})
                return
            ctx.reply({"scheduled": scheduled})
        elif op == "log_many":
            for _ in range(msg["n"]):
                ctx.log.info(msg["text"])
            ctx.reply("logged")
        elif op == "chat_then_fetch":
            # One event, three turns: an llm call, then a fetch that may be refused.
            result = await ctx.llm.chat([{"role": "user", "content": msg["text"]}])
            ctx.log.info(f"answered with {result['usage']['output_tokens']} tokens")
            try:
                fetched = await ctx.http.fetch(msg["url"])
                ctx.reply({"content": result["content"], "status": fetched["status"]})
            except CapabilityError as exc:
                ctx.reply({"content": result["content"], "refused": str(exc)})
        else:
            raise ValueError(f"unknown op {op!r}")

    async def on_timer(self, ctx: Context, payload: Any) -> None:
        ctx.state["fired"] = ctx.state.get("fired", 0) + 1
        ctx.state.setdefault("timer_payloads", []).append(payload)
        ctx.reply({"timer": payload})  # nobody waits on a timer: pushed to open sockets

    async def on_agent_message(self, ctx: Context, sender: str, msg: Any) -> None:
        ctx.state["received"] = ctx.state.get("received", [])
        ctx.state["received"].append([sender, msg])
        if isinstance(msg, dict) and "sleep" in msg:
            await ctx.sleep(msg["sleep"])
            ctx.reply("slept")
        elif isinstance(msg, dict) and "relay" in msg:
            ctx.reply(await ctx.ask("caller", msg["relay"], {"sleep": 0.2}))
        elif isinstance(msg, dict) and msg.get("ask_back"):
            kind, agent_id = sender.split("/")
            try:
                ctx.reply(await ctx.ask(kind, agent_id, "back"))
            except (CapabilityError, OpError) as exc:
                ctx.reply({"error": str(exc)})
        else:
            ctx.reply({"from": sender, "got": msg})

    async def on_decision(self, ctx: Context, decision: Any, tag: Any) -> None:
        ctx.state["decision"] = str(decision) if isinstance(decision, OpError) else decision
        ctx.state["decision_tag"] = tag
        ctx.reply({"decided": ctx.state["decision"]})

    async def on_answer(self, ctx: Context, result: Any, tag: Any) -> None:
        ctx.state["answer"] = str(result) if isinstance(result, OpError) else result["content"]
        ctx.state["tag"] = tag
