"""Who may call what: an admin token, and per-agent bearer tokens.

An agent token is a JWT (HS256) signed with the host's secret, naming one agent
(``sub = "kind/id"``) with an expiry. An app backend mints one per user session
(``roost token KIND ID`` or :func:`mint_agent_token`), so one user's token never reaches
another user's agent. The secret and the admin token come from settings, or are generated
once and kept in the data directory.
"""

from __future__ import annotations

import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import jwt

from ..address import AgentAddress
from ..config import ServerConfig
from ..errors import AccessDenied, AuthError

_ALGORITHM = "HS256"
_ISSUER = "roost"


@dataclass(frozen=True)
class Credentials:
    secret: str
    admin_token: str
    dev: bool = False


def load_credentials(settings: ServerConfig, data_dir: Path) -> Credentials:
    """The signing secret and admin token: from settings, else from (or newly written to)
    ``data_dir``, readable only by the owner."""
    return Credentials(
        secret=settings.secret or _kept_secret(data_dir / "secret"),
        admin_token=settings.admin_token or _kept_secret(data_dir / "admin_token"),
        dev=settings.dev,
    )


def _kept_secret(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(value + "\n")
    return value


def mint_agent_token(secret: str, address: AgentAddress, *, ttl_s: int) -> str:
    """A bearer token for one agent, valid for ``ttl_s`` seconds."""
    now = int(time.time())
    claims = {"sub": str(address), "iat": now, "exp": now + ttl_s, "iss": _ISSUER}
    return jwt.encode(claims, secret, algorithm=_ALGORITHM)


def bearer(authorization: str | None, query_token: str | None = None) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header (or a ``?token=`` parameter,
    which browsers need for WebSockets)."""
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("malformed Authorization header; use 'Bearer <token>'")
        return token.strip()
    return query_token


def require_admin(credentials: Credentials, token: str | None) -> None:
    if credentials.dev:
        return
    if token is None:
        raise AuthError("this call needs the admin token (Authorization: Bearer ...)")
    if not hmac.compare_digest(token.encode(), credentials.admin_token.encode()):
        raise AccessDenied("this call needs the admin token")


def require_agent(credentials: Credentials, token: str | None, address: AgentAddress) -> None:
    """Allow the admin token, or an unexpired agent token naming exactly ``address``."""
    if credentials.dev:
        return
    if token is None:
        raise AuthError(f"a bearer token for agent {address} is required")
    if hmac.compare_digest(token.encode(), credentials.admin_token.encode()):
        return
    try:
        claims = jwt.decode(
            token,
            credentials.secret,
            algorithms=[_ALGORITHM],
            issuer=_ISSUER,
            options={"require": ["exp", "sub", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("the agent token has expired; mint a new one") from None
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"invalid agent token: {exc}") from None
    if claims.get("sub") != str(address):
        raise AccessDenied(f"this token is not valid for agent {address}")
