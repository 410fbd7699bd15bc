"""``random``: bytes from the host's CSPRNG."""

from __future__ import annotations

import os

from ..errors import QuotaExceeded
from ._base import BaseGrant, Capability, TurnView, host_call

MAX_BYTES_PER_CALL = 65_536


class RandomGrant(BaseGrant):
    pass


class Random(Capability[None]):
    """Cryptographically secure random bytes."""

    name = "random"
    Grant = RandomGrant

    @host_call("bytes", fallback=b"")
    def bytes(self, turn: TurnView, length: int) -> bytes:
        if length > MAX_BYTES_PER_CALL:
            raise QuotaExceeded(
                f"random.bytes asked for {length} bytes; at most {MAX_BYTES_PER_CALL} per call"
            )
        return os.urandom(length)
