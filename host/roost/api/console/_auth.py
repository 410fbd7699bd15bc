"""Who may use the console: an operator who signed in with the admin token.

Signing in checks the admin token once and sets a session cookie (``HttpOnly``,
``SameSite=Strict``, ``Path=/console``): a random id that names a session the server keeps
in memory, so the token itself is never stored in the browser, signing out ends the session
for good, and a restart signs everyone out. A request that changes something must also come
from the console's own origin (``Origin``/``Sec-Fetch-Site``), on top of the cookie's
SameSite rule. Scripts may send ``Authorization: Bearer <admin token>`` instead of a cookie.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from ...errors import AccessDenied, AuthError
from ..auth import Credentials, bearer, require_admin

COOKIE = "roost_console"
SESSION_TTL_S = 12 * 3600.0
"""A session ends this long after sign-in."""
MAX_SESSIONS = 1_000
"""Sessions kept at once; past it, the oldest ends."""
PREFIX = "/console"


class Sessions:
    """Signed-in console sessions, in memory."""

    def __init__(
        self,
        *,
        ttl_s: float = SESSION_TTL_S,
        max_sessions: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl_s = ttl_s
        self._max = max_sessions
        self._clock = clock
        self._expiry: OrderedDict[str, float] = OrderedDict()

    def start(self) -> str:
        """A new session's id."""
        while len(self._expiry) >= self._max:
            self._expiry.popitem(last=False)
        session = secrets.token_urlsafe(32)
        self._expiry[session] = self._clock() + self._ttl_s
        return session

    def valid(self, session: str | None) -> bool:
        if not session:
            return False
        expiry = self._expiry.get(session)
        if expiry is None:
            return False
        if expiry <= self._clock():
            del self._expiry[session]
            return False
        return True

    def end(self, session: str | None) -> None:
        if session:
            self._expiry.pop(session, None)


def authorize(request: Request, credentials: Credentials, sessions: Sessions) -> None:
    """Allow a signed-in session or the admin token; raise AuthError otherwise."""
    token = bearer(request.headers.get("authorization"))
    if token is not None or credentials.dev:
        require_admin(credentials, token)
        return
    if not sessions.valid(request.cookies.get(COOKIE)):
        raise AuthError("sign in to the console with the admin token")


def check_same_origin(request: Request) -> None:
    """Refuse a state-changing request sent from another site (cross-site request
    forgery), unless it carries the admin token itself."""
    if request.headers.get("authorization"):
        return
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise AccessDenied("the console refuses requests from other sites")
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        raise AccessDenied("the console refuses requests from other origins")


def set_session_cookie(response: Response, request: Request, session: str) -> None:
    response.set_cookie(
        COOKIE,
        session,
        max_age=int(SESSION_TTL_S),
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_session_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        COOKIE,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a console path, never another site."""
    if not target or (not target.startswith(PREFIX + "/") and target != PREFIX):
        return PREFIX
    if target.startswith("//") or "\\" in target or urlsplit(target).netloc:
        return PREFIX
    return target
