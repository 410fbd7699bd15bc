"""The HTTP API (ASGI, served by hypercorn's trio worker)."""

from __future__ import annotations

from .app import create_app as create_app
from .auth import Credentials as Credentials
from .auth import load_credentials as load_credentials
from .auth import mint_agent_token as mint_agent_token
