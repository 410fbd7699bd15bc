"""``/openapi.json``: the API described as OpenAPI 3.1, schemas from pydantic models."""

from __future__ import annotations

from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_package = "roost"


class MessageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: Any = Field(description="Any JSON value; the agent receives it as msgpack.")


class ForkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    new_id: str = Field(description="Id of the new agent (same kind).")


class AgentInfo(BaseModel):
    address: str
    resident: bool
    turns: int
    state_bytes: int
    kv_bytes: int
    created_at: float | None
    last_active_at: float | None
    usage_today: dict[str, Any] | None = None
    held_resident_by: list[str] = Field(
        default_factory=list,
        description="Why the agent is resident past its idle timeout: pending_op, "
        "turn_running, mailbox_not_empty.",
    )
    pending_ops: int = 0
    mailbox_depth: int = 0
    open_sockets: int = 0
    approvals: list[ApprovalInfo] = Field(
        default_factory=list, description="Approvals the agent asked for, waiting for a decision."
    )


class ApprovalDecisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decision: Literal["approve", "reject"]
    note: str | None = Field(None, max_length=2000, description="The decider's comment.")
    by: str | None = Field(
        None,
        max_length=200,
        description="Who decides (free text); default: `admin`, or the agent token's agent.",
    )


class ApprovalInfo(BaseModel):
    id: str
    action: str
    details: Any = None
    requested_at: float
    expires_at: float | None
    decision: Literal["approved", "rejected", "expired"] | None = Field(
        description="None while it waits."
    )
    decided_at: float | None = None
    decided_by: str | None = None
    note: str | None = None


class ApprovalDecision(BaseModel):
    """What the agent's waiting op completes with."""

    id: str
    action: str
    approved: bool
    decision: Literal["approved", "rejected", "expired"]
    by: str | None
    note: str | None
    decided_at: float | None


class MessageResponse(BaseModel):
    replies: list[Any]
    agent: AgentInfo


class ErrorDetail(BaseModel):
    type: str
    message: str
    retryable: bool
    guest_traceback: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class StreamError(ErrorResponse):
    status: int = Field(description="The HTTP status a JSON request would have got.")


class StreamDone(BaseModel):
    agent: AgentInfo


class SseTokenEvent(BaseModel):
    """``event: token``: a token of an llm answer the agent streams (``stream=True``), as
    the model produces it, before the turn commits."""

    event: Literal["token"]
    data: str = Field(description="The token's text.")


class SseReplyEvent(BaseModel):
    """``event: reply``: a reply, once the turn that produced it committed."""

    event: Literal["reply"]
    data: Any


class SseDoneEvent(BaseModel):
    """``event: done``: the handler finished; the stream ends."""

    event: Literal["done"]
    data: StreamDone


class SseErrorEvent(BaseModel):
    """``event: error``: the event failed; the stream ends."""

    event: Literal["error"]
    data: StreamError


class WsMessageFrame(BaseModel):
    """Sent by the client: one message to the agent."""

    message: Any


class WsTokenFrame(BaseModel):
    """A streamed llm token of the message being handled."""

    type: Literal["token"]
    text: str


class WsReplyFrame(BaseModel):
    """A reply to the message being handled, once its turn committed."""

    type: Literal["reply"]
    message: Any


class WsPushFrame(BaseModel):
    """A reply to an event nobody was waiting on (a durable timer, another agent's message,
    a continuation), at any time."""

    type: Literal["push"]
    message: Any


class WsDoneFrame(BaseModel):
    """The message's handler finished."""

    type: Literal["done"]


class WsErrorFrame(StreamError):
    """The message failed."""

    type: Literal["error"]


_SSE_EVENTS: list[type[BaseModel]] = [SseTokenEvent, SseReplyEvent, SseDoneEvent, SseErrorEvent]
_WS_FRAMES: list[type[BaseModel]] = [
    WsTokenFrame,
    WsReplyFrame,
    WsPushFrame,
    WsDoneFrame,
    WsErrorFrame,
]
_MODELS: list[type[BaseModel]] = [
    MessageRequest,
    ForkRequest,
    ApprovalDecisionRequest,
    ApprovalInfo,
    ApprovalDecision,
    AgentInfo,
    MessageResponse,
    ErrorDetail,
    ErrorResponse,
    WsMessageFrame,
    *_SSE_EVENTS,
    *_WS_FRAMES,
]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(model)}}}


def _ok(description: str, model: type[BaseModel] | None = None) -> dict[str, Any]:
    schema = _ref(model) if model else {"type": "object"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "4XX": {
        "description": "Bad input, auth, or backpressure (429 with Retry-After)",
        "content": {"application/json": {"schema": _ref(ErrorResponse)}},
    },
    "5XX": {
        "description": "Guest failure, or overload (503 with Retry-After)",
        "content": {"application/json": {"schema": _ref(ErrorResponse)}},
    },
}
_AGENT = [
    {"name": "kind", "in": "path", "required": True, "schema": {"type": "string"}},
    {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
]
_ADMIN: list[dict[str, list[str]]] = [{"admin": []}]
_AGENT_OR_ADMIN: list[dict[str, list[str]]] = [{"agent": []}, {"admin": []}]


@cache
def openapi_document() -> dict[str, Any]:
    schemas = {}
    for model in _MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    paths: dict[str, Any] = {
        "/v1/agents/{kind}/{id}/messages": {
            "post": {
                "summary": "Send a message; replies once the turn committed (SSE with "
                "Accept: text/event-stream)",
                "parameters": [
                    *_AGENT,
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                ],
                "requestBody": _json_body(MessageRequest),
                "responses": {
                    "200": {
                        "description": "Replies (JSON), or with Accept: text/event-stream a "
                        "stream of server-sent events: each an `event:` line naming its type "
                        "(token, reply, done, error) and a `data:` line of JSON, as the "
                        "schemas Sse*Event describe (`event` is the line's name, `data` its "
                        "data); while the handler waits with nothing to send, a comment line "
                        "`: keep-alive` every sse_keepalive_s (default 15 s)",
                        "content": {
                            "application/json": {"schema": _ref(MessageResponse)},
                            "text/event-stream": {
                                "schema": {"oneOf": [_ref(m) for m in _SSE_EVENTS]}
                            },
                        },
                    },
                    **_ERRORS,
                },
                "security": _AGENT_OR_ADMIN,
            }
        },
        "/v1/agents/{kind}/{id}": {
            "get": {
                "summary": "Agent status",
                "parameters": _AGENT,
                "responses": {"200": _ok("Status"), **_ERRORS},
                "security": _AGENT_OR_ADMIN,
            },
            "delete": {
                "summary": "Erase the agent's state, kv and timers",
                "parameters": _AGENT,
                "responses": {"200": _ok("Erased"), **_ERRORS},
                "security": _ADMIN,
            },
        },
        "/v1/agents/{kind}/{id}/fork": {
            "post": {
                "summary": "Copy the agent's committed state and kv into a new agent",
                "parameters": _AGENT,
                "requestBody": _json_body(ForkRequest),
                "responses": {"201": _ok("The new agent"), **_ERRORS},
                "security": _ADMIN,
            }
        },
        "/v1/agents/{kind}/{id}/export": {
            "get": {
                "summary": "Everything the host keeps for the agent",
                "parameters": _AGENT,
                "responses": {"200": _ok("Export"), **_ERRORS},
                "security": _ADMIN,
            }
        },
        "/v1/agents/{kind}/{id}/approvals": {
            "get": {
                "summary": "The approvals the agent asked for, waiting and decided",
                "parameters": _AGENT,
                "responses": {
                    "200": {
                        "description": '{"approvals": [ApprovalInfo]}, oldest first',
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "approvals": {"type": "array", "items": _ref(ApprovalInfo)}
                                    },
                                }
                            }
                        },
                    },
                    **_ERRORS,
                },
                "security": _AGENT_OR_ADMIN,
            }
        },
        "/v1/agents/{kind}/{id}/approvals/{approval_id}": {
            "post": {
                "summary": "Approve or reject what the agent asked for: its waiting op "
                "completes with the decision (409 if it was decided otherwise or expired)",
                "parameters": [
                    *_AGENT,
                    {
                        "name": "approval_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                ],
                "requestBody": _json_body(ApprovalDecisionRequest),
                "responses": {
                    "200": {
                        "description": '{"approval": ApprovalDecision}',
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"approval": _ref(ApprovalDecision)},
                                }
                            }
                        },
                    },
                    **_ERRORS,
                },
                "security": _AGENT_OR_ADMIN,
            }
        },
        "/v1/agents/{kind}/{id}/ws": {
            "get": {
                "summary": 'WebSocket: send {"message": ...} frames, receive token, reply, '
                "done, error and push frames; the agent may hibernate while the socket "
                "stays open",
                "parameters": _AGENT,
                "responses": {
                    "101": {
                        "description": "Switching protocols. The client sends WsMessageFrame "
                        "text frames; the server sends JSON text frames told apart by `type`: "
                        "token, reply, done and error for the message being handled, push at "
                        "any time (x-roost-frames lists their schemas)."
                    }
                },
                "x-roost-frames": {
                    "client": [_ref(WsMessageFrame)],
                    "server": [_ref(m) for m in _WS_FRAMES],
                },
                "security": _AGENT_OR_ADMIN,
            }
        },
        "/v1/agents/{kind}": {
            "get": {
                "summary": "List agents of a kind (paged by id)",
                "parameters": [
                    {"name": "kind", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "after", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "maximum": 1000},
                    },
                ],
                "responses": {"200": _ok("A page of agents"), **_ERRORS},
                "security": _ADMIN,
            }
        },
        "/v1/kinds": {
            "get": {
                "summary": "Deployed kinds",
                "responses": {"200": _ok("Kinds")},
                "security": _ADMIN,
            },
            "post": {
                "summary": "Deploy a kind: multipart manifest (TOML) + component (.wasm)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "manifest": {"type": "string"},
                                    "component": {"type": "string", "format": "binary"},
                                },
                            }
                        }
                    },
                },
                "responses": {"201": _ok("Deployed"), **_ERRORS},
                "security": _ADMIN,
            },
        },
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _ok("Alive")}}},
        "/readyz": {
            "get": {
                "summary": "Readiness (503 while shutting down)",
                "responses": {"200": _ok("Ready")},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "Prometheus text"}},
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Roost", "version": "v1", "description": f"{_package} HTTP API"},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "admin": {"type": "http", "scheme": "bearer", "description": "ROOST_ADMIN_TOKEN"},
                "agent": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "Per-agent token from `roost token KIND ID`",
                },
            },
        },
    }
