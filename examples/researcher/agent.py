"""Research a page: fetch an allow-listed URL, answer a question about it with the llm.

Shows: ``ctx.http.fetch`` under the kind's ``[capabilities.http] hosts`` allow-list (the
host refuses other hosts, and private or loopback addresses, before connecting), and the
fetched text placed in the llm prompt.

Send ``{"url": ..., "question": ...}``, or text whose first word is the URL and the rest
the question: ``https://en.wikipedia.org/wiki/Roost what is a roost?``.
"""

from __future__ import annotations

import re
from typing import Any

from roost_sdk import Agent, CapabilityError, Context, OpError

SYSTEM_PROMPT = (
    "Answer the user's question using the page they give you. Say so when the page does "
    "not contain the answer."
)
TAG = re.compile(r"<(script|style)\b.*?</\1\s*>|<[^>]+>", re.IGNORECASE | re.DOTALL)


class Researcher(Agent):
    async def on_message(self, ctx: Context, msg: Any) -> None:
        if isinstance(msg, dict):
            url, question = str(msg.get("url", "")), str(msg.get("question", ""))
        else:
            url, _, question = str(msg).strip().partition(" ")
        question = question.strip() or "What is this page about?"
        if not url:
            ctx.reply('Send {"url": ..., "question": ...} or "URL question".')
            return

        try:
            page = await ctx.http.fetch(url)
        except (CapabilityError, OpError) as exc:
            ctx.reply(f"I cannot read {url}: {exc}")
            return
        if page["status"] >= 400:
            ctx.reply(f"I cannot read {url}: the server answered {page['status']}.")
            return
        text = page_text(page["body"], int(ctx.config.get("max_page_chars", 6000)))

        prompt = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"Page {url}:\n{text}\n\nQuestion: {question}"},
        ]
        try:
            answer = await ctx.llm.chat(prompt)
        except (CapabilityError, OpError) as exc:
            ctx.reply(f"I read {url} but cannot answer right now ({exc}).")
            return
        ctx.reply({"answer": answer["content"], "source": page["url"]})


def page_text(body: bytes, limit: int) -> str:
    """The page as plain text (tags dropped, whitespace collapsed), at most ``limit`` chars."""
    text = TAG.sub(" ", body.decode("utf-8", errors="replace"))
    return " ".join(text.split())[:limit]
