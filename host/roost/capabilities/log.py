"""``log``: the guest's log lines, attributed to the agent, on the ``roost.guest`` logger.
With OpenTelemetry logs on, each line (debug lines only when the ``roost.guest`` logger is
enabled for debug) is also a log record carrying the turn's trace and span ids.

A line is one line: control characters (newlines among them) are written escaped, so a
guest cannot forge a line of the host's. A handler may log ``max_bytes_per_turn``; past it
its lines are dropped, and one warning, at the first line dropped, says so."""

from __future__ import annotations

import logging
from dataclasses import dataclass
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


_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)} | {
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
    ord("\\"): "\\\\",
}
"""Control characters, written escaped (and the backslash, so an escape is unambiguous)."""


class LogGrant(BaseGrant):
    max_line_bytes: int = Field(4096, ge=64)
    """Longer lines are truncated."""
    max_bytes_per_turn: int = Field(64 * 1024, ge=64)
    """Bytes one handler may log; its lines past that are dropped."""


@dataclass(slots=True)
class LogTurn:
    written: int = 0
    dropped: int = 0


class Log(Capability[LogTurn]):
    """Structured log lines from the guest."""

    name = "log"
    Grant = LogGrant
    grant: LogGrant

    def begin_turn(self, turn: TurnView) -> LogTurn:
        return LogTurn()

    @host_call("write", fallback=None)
    def write(self, turn: TurnView, level: Any, message: str) -> None:
        name = getattr(level, "name", str(level)).lower()
        if len(message) > self.grant.max_line_bytes:
            message = message[: self.grant.max_line_bytes] + "…"
        message = message.translate(_ESCAPES)
        state = self.state(turn)
        state.written += len(message)
        if state.written > self.grant.max_bytes_per_turn:
            state.dropped += 1
            if state.dropped == 1:  # said at once: a turn that fails later has no commit
                logger.warning(
                    "%s: agent log lines dropped: past the log grant's max_bytes_per_turn = "
                    "%d, the rest of this turn's lines are not written",
                    turn.address,
                    self.grant.max_bytes_per_turn,
                )
            return
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
