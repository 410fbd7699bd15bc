"""The base class agents derive from."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._context import Context


class Agent:
    """Base class of a Roost agent. Override the hooks you need; each may be async.

    One instance of the class lives as long as the agent is resident. Anything that must
    survive hibernation or a host restart belongs in ``ctx.state`` or ``ctx.kv``.
    """

    async def on_start(self, ctx: Context) -> None:
        """Called when the agent is instantiated (first event, or wake from hibernation),
        after ``ctx.state`` holds the last committed state. Keep it fast."""

    async def on_message(self, ctx: Context, msg: Any) -> None:
        """Called for each message from the user."""
        raise NotImplementedError(f"{type(self).__name__} does not handle messages")

    async def on_timer(self, ctx: Context, payload: Any) -> None:
        """Called when a timer the agent scheduled fires."""
        raise NotImplementedError(f"{type(self).__name__} does not handle timers")

    async def on_agent_message(self, ctx: Context, sender: str, msg: Any) -> None:
        """Called when another agent (``sender`` is its ``kind/id``) sends a message."""
        raise NotImplementedError(f"{type(self).__name__} does not handle agent messages")
