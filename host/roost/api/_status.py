"""The one place that maps Roost's errors to HTTP statuses and JSON error bodies."""

from __future__ import annotations

import math
from typing import Any

from .. import errors

_STATUS: list[tuple[type[BaseException], int]] = [
    (errors.AccessDenied, 403),
    (errors.AuthError, 401),
    (errors.AgentBusy, 429),
    (errors.Overloaded, 503),
    (errors.AgentUnavailable, 503),
    (errors.AlreadyHandled, 409),
    (errors.LeaseLost, 503),
    (errors.StorageError, 503),
    (errors.MessageTooLarge, 413),
    (errors.IdempotencyKeyReused, 422),
    (errors.ReplyTooDeep, 422),
    (errors.InvalidAddress, 400),
    (errors.InvalidMessage, 400),
    (errors.UnknownKind, 404),
    (errors.UnknownAgent, 404),
    (errors.UnknownApproval, 404),
    (errors.ApprovalDecided, 409),
    (errors.AgentExists, 409),
    (errors.CpuDeadlineExceeded, 500),
    (errors.GuestError, 500),
    (errors.CapabilityError, 403),
    (errors.ConfigError, 400),
    (errors.BuildError, 400),
]


def error_status(exc: BaseException) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_headers(exc: BaseException) -> dict[str, str]:
    if isinstance(exc, errors.AuthError):
        return {"WWW-Authenticate": "Bearer"}
    if isinstance(exc, errors.Overloaded | errors.AgentCoolingDown):
        return {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
    if isinstance(exc, errors.AgentBusy | errors.AgentUnavailable | errors.StorageError):
        return {"Retry-After": "1"}
    return {}


def error_body(exc: BaseException, *, include_traceback: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": type(exc).__name__,
        "message": str(exc),
        "retryable": bool(getattr(exc, "retryable", False)),
    }
    if include_traceback and isinstance(exc, errors.GuestError) and exc.guest_traceback:
        body["guest_traceback"] = exc.guest_traceback
    return {"error": body}
