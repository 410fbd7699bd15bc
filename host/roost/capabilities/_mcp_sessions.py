"""The MCP sessions of agents, kept by the host (not the agent's instance) so that they
survive the agent's hibernation: a woken agent goes on with the session its server knows
instead of starting a new one."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ..address import AgentAddress

DEFAULT_MAX_SESSIONS = 10_000
"""Sessions kept (the least recently used go first): a few hundred bytes each."""


@dataclass(frozen=True, slots=True)
class McpSession:
    """What a new connection needs to go on with a session, without a handshake."""

    url: str
    """The server's URL when the session was made (a changed grant starts a new one)."""
    negotiated: dict[str, Any]
    """The server's ``InitializeResult`` (handshake era) or ``DiscoverResult`` (2026 era),
    as JSON."""
    era: str
    """``handshake`` or ``discover``."""
    session_id: str | None = None
    """The ``Mcp-Session-Id`` the server assigned (handshake era; None when stateless)."""


class McpSessions:
    """Sessions by agent and server name, least recently used first out."""

    def __init__(self, max_sessions: int = DEFAULT_MAX_SESSIONS) -> None:
        self._sessions: OrderedDict[tuple[AgentAddress, str], McpSession] = OrderedDict()
        self._max = max_sessions

    def get(self, address: AgentAddress, server: str) -> McpSession | None:
        key = (address, server)
        session = self._sessions.get(key)
        if session is not None:
            self._sessions.move_to_end(key)
        return session

    def put(self, address: AgentAddress, server: str, session: McpSession) -> None:
        key = (address, server)
        self._sessions[key] = session
        self._sessions.move_to_end(key)
        while len(self._sessions) > self._max:
            self._sessions.popitem(last=False)

    def drop(self, address: AgentAddress, server: str) -> None:
        self._sessions.pop((address, server), None)

    def __len__(self) -> int:
        return len(self._sessions)
