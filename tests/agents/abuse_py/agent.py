"""An abusive agent (loadtests/neighbours.py): each op is one way a guest may try to take
more than its share of a host, and replies with what the host let it do.

The manifests beside it (loop.toml, storm.toml, flood.toml, hog.toml, budget.toml) deploy
it as several kinds with different limits, grants and budgets. They grant the same
capabilities, so one build serves them all.

What the host refused is counted by reason: the setting its error names (for example
``max_asks_per_turn``), else the error's first words.
"""

from __future__ import annotations

from typing import Any

from roost_sdk import Agent, CapabilityError, Context, OpError

REASONS = (
    "max_asks_per_turn",
    "max_sends_per_turn",
    "max_ops_per_turn",
    "max_pending_ops",
    "max_timers",
    "max_activations_per_s",
    "max_resident_agents",
    "max_host_memory_bytes",
    "queue_target_ms",
    "max_in_flight",
    "mailbox_size",
    "cpu_deadline_ms",
    "http_calls_per_day",
    "llm_tokens_per_day",
    "storage_bytes",
    "max_kv_bytes",
    "max_reply_bytes",
    "timed out",
)

_hoard: list[bytes] = []
"""What ``hog`` holds on to, for as long as the instance lives."""


def reason(error: BaseException | str) -> str:
    text = str(error)
    for marker in REASONS:
        if marker in text:
            return marker
    return " ".join(text.split()[:6])


def count(tally: dict[str, int], error: BaseException | str, times: int = 1) -> None:
    key = reason(error)
    tally[key] = tally.get(key, 0) + times


def merge(into: dict[str, int], tally: Any) -> None:
    if isinstance(tally, dict):
        for key, times in tally.items():
            into[str(key)] = into.get(str(key), 0) + int(times)


class Abuse(Agent):
    async def on_message(self, ctx: Context, msg: Any) -> None:
        op = msg["op"] if isinstance(msg, dict) else msg
        if op == "loop":
            while True:
                pass
        elif op == "ask_storm":
            ctx.reply(await self._ask_storm(ctx, msg))
        elif op == "send_storm":
            ctx.reply(self._send_storm(ctx, msg))
        elif op == "send_failing":
            ctx.reply(self._send_failing(ctx, msg["n"]))
        elif op == "timer_storm":
            ctx.state["fanout"] = msg["fanout"]
            ctx.reply(self._schedule(ctx, msg["fanout"]))
        elif op == "timer_stats":
            ctx.reply({k: ctx.state.get(k, 0) for k in ("fired", "scheduled", "refused")})
        elif op == "log_flood":
            for i in range(msg["lines"]):
                # A newline, then what a host line looks like: the host must keep it one line.
                ctx.log.info(f"flood {i}\nERROR roost.host: FORGED {i} " + "x" * msg["pad"])
            ctx.reply({"lines": msg["lines"]})
        elif op == "hog":
            ctx.reply(self._hog(msg["chunk"]))
        elif op == "budget":
            ctx.reply(await self._budget(ctx, msg))
        elif op == "budget_then_fail":
            report = await self._budget(ctx, msg)
            raise RuntimeError(f"failing on purpose after {report}")
        elif op == "store":
            stored = 0
            for i in range(msg["values"]):
                ctx.kv.set(f"k{i}", b"v" * msg["value_bytes"])
                stored += msg["value_bytes"]
            ctx.reply({"stored": stored})
        else:
            raise ValueError(f"unknown op {op!r}")

    async def on_agent_message(self, ctx: Context, sender: str, msg: Any) -> None:
        if msg.get("op") == "ask_storm":
            ctx.reply(await self._ask_storm(ctx, msg))
        elif msg.get("op") == "send_storm":
            ctx.state["received"] = ctx.state.get("received", 0) + 1
            self._send_storm(ctx, msg)
        elif msg.get("op") == "fail":
            # Every delivery of this message fails: the host must give up on it.
            raise RuntimeError("failing every delivery on purpose")

    async def on_timer(self, ctx: Context, payload: Any) -> None:
        ctx.state["fired"] = ctx.state.get("fired", 0) + 1
        self._schedule(ctx, ctx.state.get("fanout", 1))

    # -- storms ------------------------------------------------------------------------------
    async def _ask_storm(self, ctx: Context, msg: dict[str, Any]) -> dict[str, Any]:
        """Ask ``fanout`` new agents to do the same, ``depth`` levels down: how many agents
        the asks reached, and why the others were refused."""
        reached, refused = 1, {}
        if msg["depth"] > 0:
            below = {**msg, "depth": msg["depth"] - 1}
            started = []
            for i in range(msg["fanout"]):
                try:
                    started.append(
                        ctx.ask(ctx.kind, f"{ctx.agent_id}.{i}", below, timeout=msg["timeout"])
                    )
                except CapabilityError as exc:
                    count(refused, exc, msg["fanout"] - i)
                    break
            for pending in started:
                try:
                    replies = await pending
                except OpError as exc:
                    count(refused, exc)
                    continue
                for reply in replies:
                    if isinstance(reply, dict):
                        reached += int(reply.get("reached", 0))
                        merge(refused, reply.get("refused"))
        return {"reached": reached, "refused": refused}

    def _send_storm(self, ctx: Context, msg: dict[str, Any]) -> dict[str, Any]:
        """Send to ``fanout`` new agents, which do the same, ``depth`` levels down."""
        sent, refused = 0, {}
        if msg["depth"] > 0:
            below = {**msg, "depth": msg["depth"] - 1}
            for i in range(msg["fanout"]):
                try:
                    ctx.send(ctx.kind, f"{ctx.agent_id}.{i}", below)
                    sent += 1
                except CapabilityError as exc:
                    count(refused, exc, msg["fanout"] - i)
                    break
        return {"sent": sent, "refused": refused}

    def _send_failing(self, ctx: Context, n: int) -> dict[str, Any]:
        """Send ``n`` new agents a message whose every delivery fails."""
        sent, refused = 0, {}
        for i in range(n):
            try:
                ctx.send(ctx.kind, f"{ctx.agent_id}.{i}", {"op": "fail"})
                sent += 1
            except CapabilityError as exc:
                count(refused, exc, n - i)
                break
        return {"sent": sent, "refused": refused}

    def _schedule(self, ctx: Context, fanout: int) -> dict[str, Any]:
        """Schedule ``fanout`` timers due now, each of which schedules as many again."""
        scheduled, refused = 0, {}
        for i in range(fanout):
            n = ctx.state.get("next", 0)
            try:
                ctx.schedule(None, after=0, timer_id=f"t{n}")
            except CapabilityError as exc:
                count(refused, exc, fanout - i)
                ctx.state["refused"] = ctx.state.get("refused", 0) + fanout - i
                break
            ctx.state["next"] = n + 1
            ctx.state["scheduled"] = ctx.state.get("scheduled", 0) + 1
            scheduled += 1
        return {"scheduled": scheduled, "refused": refused}

    # -- memory --------------------------------------------------------------------------------
    def _hog(self, chunk: int) -> dict[str, Any]:
        """Take memory (touching every page) until the instance's limit says no."""
        try:
            while True:
                _hoard.append(b"\x01" * chunk)
        except MemoryError:
            pass
        return {"held": sum(len(block) for block in _hoard)}

    # -- budgets -------------------------------------------------------------------------------
    async def _budget(self, ctx: Context, msg: dict[str, Any]) -> dict[str, Any]:
        """Start ``fetches`` HTTP calls and ``chats`` LLM calls at once, then await the ones
        the host started: how many completed, and why the others were refused."""
        refused: dict[str, int] = {}
        fetches, chats = [], []
        for _ in range(msg["fetches"]):
            try:
                fetches.append(ctx.http.fetch(msg["url"]))
            except CapabilityError as exc:
                count(refused, exc)
        for _ in range(msg["chats"]):
            try:
                chats.append(
                    ctx.llm.chat([{"role": "user", "content": "spend"}], max_tokens=msg["tokens"])
                )
            except CapabilityError as exc:
                count(refused, exc)
        fetched = chatted = 0
        for fetch in fetches:
            try:
                await fetch
                fetched += 1
            except OpError as exc:
                count(refused, exc)
        for chat in chats:
            try:
                await chat
                chatted += 1
            except OpError as exc:
                count(refused, exc)
        return {"fetched": fetched, "chatted": chatted, "refused": refused}
