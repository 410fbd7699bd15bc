"""The operator console: server-rendered pages under ``/console`` (see docs/console.md)."""

from __future__ import annotations

from .routes import ConsoleState as ConsoleState
from .routes import console_routes as console_routes
