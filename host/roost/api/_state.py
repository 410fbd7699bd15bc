"""What every request handler of the API (and its console) shares."""

from __future__ import annotations

import trio

from ..config import ServerConfig
from ..host import Host
from .auth import Credentials
from .metrics import MetricsRecorder
from .proxy_agent import WorkSlots


class ApiState:
    """What every request handler shares."""

    def __init__(
        self,
        host: Host,
        settings: ServerConfig,
        credentials: Credentials,
        work_slots: WorkSlots | None = None,
    ) -> None:
        self.host = host
        self.settings = settings
        self.credentials = credentials
        self.metrics = MetricsRecorder(host.metrics())
        self.work_slots = work_slots
        """What the proxy's agent check offers for requests doing work, if it is served."""
        self.shutting_down = trio.Event()
        """Set on the first shutdown signal: sockets close with 1001, readiness fails."""
        self._requests: set[trio.CancelScope] = set()
        """The HTTP requests being served, to cut short when the grace period ends."""

    def expire_requests(self) -> int:
        """End every request still running (the graceful timeout passed): each answers 503
        with Retry-After if it has not started its response. Returns how many there were."""
        for scope in self._requests:
            scope.cancel()
        return len(self._requests)
