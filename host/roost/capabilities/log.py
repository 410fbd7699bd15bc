"""``log``: the guest's log lines, attributed to the agent, on the ``roost.guest`` logger.
With OpenTelemetry logs on, each line (debug lines only when the ``roost.guest`` logger is
enabled for debug) is also a log record carrying the turn's trace and span ids."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field

from ._base import BaseGrant, Capability, TurnView, host_call

logger = logging.getLogger("roost.guest")

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}


class LogGrant(BaseGrant):
    max_line_bytes: int = Field(4096, ge=64)
    """Longer lines are truncated."""


class Log(Capability[None]):
    """Structured log lines from the guest."""

    name = "log"
    Grant = LogGrant
    grant: LogGrant

    @host_call("write", fallback=None)
    def write(self, turn: TurnView, level: Any, message: str) -> None:
        name = getattr(level, "name", str(level)).lower()
        if len(message) > self.grant.max_line_bytes:
            message = message[: self.grant.max_line_bytes] + "…"
        logger.log(
            _LEVELS.get(name, logging.INFO),
            "%s: %s",
            turn.address,
            message,
            extra={"agent_kind": turn.address.kind, "agent_id": turn.address.id},
        )
        if turn.trace is not None and (name != "debug" or logger.isEnabledFor(logging.DEBUG)):
            # Debug lines are exported only when the roost.guest logger shows them too.
            turn.trace.log(name if name in _LEVELS else "info", message, turn.address)
