"""Operator actions shared by the API and its console: deploying an uploaded kind, and an
agent's export as a JSON document."""

from __future__ import annotations

import tomllib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import trio
from starlette.requests import Request
from starlette.types import Message

from ..address import AgentAddress
from ..core.kind import KindInfo
from ..errors import ManifestError, MessageTooLarge
from ..host import Host
from ..manifest import parse_manifest
from ..payload import unpack
from ..store.protocol import INBOX_KINDS
from ._saved_kinds import save_deployment

DEPLOY_BODY_FACTOR = 64
"""Deploy uploads (a component) may be this many times ``max_body_bytes``."""


async def deploy_upload(host: Host, manifest_text: str, wasm: bytes) -> KindInfo:
    """Deploy an uploaded manifest (TOML text) and component, then keep them for restarts.
    Nothing is saved unless the host deployed it: a rejected upload (bad manifest, bad
    component, ungranted imports) leaves nothing behind."""
    try:
        data = tomllib.loads(manifest_text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"manifest is not valid TOML: {exc}") from None
    data.pop("component", None)
    data.pop("source", None)
    manifest = parse_manifest(data, base_dir=Path("."), origin="uploaded manifest")
    info = await host.deploy(manifest, wasm=wasm)
    await trio.to_thread.run_sync(
        save_deployment, host.config.data_dir, manifest.name, manifest_text, wasm
    )
    return info


def limited_request(request: Request, limit: int) -> Request:
    """``request`` with its body cut off at ``limit`` bytes (MessageTooLarge past it),
    whether the client declared a length or streams it in chunks."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    received = 0

    async def receive() -> Message:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise too_large(limit)
        return message

    return Request(request.scope, receive)


def too_large(limit: int) -> MessageTooLarge:
    return MessageTooLarge(f"request body is larger than the {limit}-byte limit (max_body_bytes)")


async def export_document(host: Host, address: AgentAddress) -> dict[str, Any]:
    """Everything the host keeps for one agent, as JSON-ready values (state decoded from
    msgpack; kv values stay bytes)."""
    exported = await host.export(address)
    approvals = [asdict(a) for a in await host.approvals(address)]
    if exported is None:
        return {
            "agent": str(address),
            "exists": False,
            "state": None,
            "kv": {},
            "approvals": approvals,
        }
    record = exported.record
    return {
        "agent": str(address),
        "exists": True,
        "approvals": approvals,
        "state": unpack_state(record.state),
        "kv": exported.kv,
        "usage": {
            "turns": record.turns,
            "kv_bytes": record.kv_bytes,
            "state_bytes": len(record.state or b""),
        },
        "recorded_responses": exported.responses,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "timers": [
            {
                "id": d.delivery_id,
                "kind": d.event_kind,
                "due_at": d.due_at,
                "every_s": d.every_s,
                "catch_up": d.catch_up,
                "attempts": d.attempts,
                "last_error": d.last_error,
                "payload": _decoded(d.payload),
            }
            for d in exported.deliveries
            if d.event_kind not in INBOX_KINDS
        ],
        "inbox": [
            {
                "id": d.delivery_id,
                "kind": d.event_kind,
                "accepted_at": d.due_at,
                "idempotency_key": d.idempotency_key,
                "attempts": d.attempts,
                "message": _decoded(d.payload),
            }
            for d in exported.deliveries
            if d.event_kind in INBOX_KINDS
        ],
        "dead_letters": [
            {
                "id": d.delivery_id,
                "kind": d.event_kind,
                "attempts": d.attempts,
                "last_error": d.last_error,
                "failed_at": d.failed_at,
                "payload": _decoded(d.payload),
            }
            for d in exported.dead_letters
        ],
        "pending_ops": [
            {"id": op.op_key, "capability": op.capability, "call": op.call, "then": op.handler}
            for op in exported.pending_ops
        ],
    }


def unpack_state(state: bytes | None) -> Any:
    """An agent's committed state (msgpack) as a value, or None if it has none."""
    return _decoded(state) if state else None


def _decoded(payload: bytes) -> Any:
    """A stored msgpack payload for JSON (its bytes in hex if it does not decode)."""
    try:
        return unpack(payload)
    except Exception:
        return {"undecodable": payload.hex()}
