"""Agent addresses: ``kind/id``.

A kind name is lowercase letters, digits and ``-``/``_`` (1-64 chars, starting with a letter);
an agent id is letters, digits and ``-_.:@`` (1-128 chars). Both appear in URLs, log lines and
store keys, so anything else is refused with a message naming the bad part.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidAddress

_KIND_RE = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_ID_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")


def validate_kind_name(kind: str) -> str:
    """Return ``kind`` if it is a valid kind name, else raise :class:`InvalidAddress`."""
    if not _KIND_RE.fullmatch(kind):
        raise InvalidAddress(
            f"invalid kind name {kind!r}: use 1-64 lowercase letters, digits, '-' or '_', "
            "starting with a letter"
        )
    return kind


def validate_agent_id(agent_id: str) -> str:
    """Return ``agent_id`` if it is a valid agent id, else raise :class:`InvalidAddress`."""
    if not _ID_RE.fullmatch(agent_id):
        raise InvalidAddress(
            f"invalid agent id {agent_id!r}: use 1-128 letters, digits or any of '-_.:@'"
        )
    return agent_id


@dataclass(frozen=True, slots=True)
class AgentAddress:
    """The address of one agent: its kind and its id (usually the end user's id)."""

    kind: str
    id: str

    def __post_init__(self) -> None:
        validate_kind_name(self.kind)
        validate_agent_id(self.id)

    @classmethod
    def parse(cls, text: str) -> AgentAddress:
        """Parse ``"kind/id"``."""
        kind, sep, agent_id = text.partition("/")
        if not sep:
            raise InvalidAddress(f"invalid agent address {text!r}: expected 'kind/id'")
        return cls(kind, agent_id)

    def __str__(self) -> str:
        return f"{self.kind}/{self.id}"
