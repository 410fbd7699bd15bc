"""The approval capability with a real guest (tests/agents/caller): an agent asks a person,
the decision is the op's result, durable across hibernation, restarts and crashes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from roost import ApprovalDecided, HostConfig, Manifest, UnknownApproval, open_host
from roost.host import Host

from ..conftest import until
from .conftest import caller_host, caller_state, settle


async def _asked(host: Host, address: str, count: int = 1) -> list[Any]:
    """Wait until the agent has ``count`` approvals waiting; return them (bounded in real
    time: the clock may be a MockClock that never moves by itself)."""
    deadline = time.monotonic() + 20
    while len(waiting := list((await host.agent_status(address)).approvals)) < count:
        assert time.monotonic() < deadline, "no approval asked for in time"
    return waiting


async def test_an_awaited_approval_completes_with_the_decision(
    host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    async with caller_host(host_config, caller_manifest) as host, trio.open_nursery() as nursery:
        replies: list[Any] = []

        async def ask() -> None:
            replies.extend(
                await host.send(
                    "caller/a",
                    {"op": "approve", "action": "delete the archive", "details": {"files": 3}},
                )
            )

        nursery.start_soon(ask)
        [waiting] = await _asked(host, "caller/a")
        assert (waiting.action, waiting.details, waiting.decision) == (
            "delete the archive",
            {"files": 3},
            None,
        )
        assert waiting.expires_at - waiting.requested_at == 60  # the grant's max_wait_s
        assert host.residency("caller/a").pending_ops == 1
        decided = await host.decide_approval(
            "caller/a", waiting.id, approve=True, by="ops@example.com", note="go"
        )
        await until(lambda: bool(replies))
    [reply] = replies
    assert reply == decided
    assert reply["approved"] is True and reply["decision"] == "approved"
    assert (reply["by"], reply["note"], reply["action"]) == (
        "ops@example.com",
        "go",
        "delete the archive",
    )
    async with caller_host(host_config, caller_manifest) as host:
        assert (await host.agent_status("caller/a")).approvals == ()
        [kept] = await host.approvals("caller/a")  # decided ones are kept until pruned
        assert kept.decision == "approved" and kept.decided_by == "ops@example.com"
        # The first decision stands; deciding it again the same way is harmless.
        assert (await host.decide_approval("caller/a", kept.id, approve=True, by="x"))[
            "by"
        ] == "ops@example.com"
        with pytest.raises(ApprovalDecided, match="was approved already"):
            await host.decide_approval("caller/a", kept.id, approve=False, by="x")
        with pytest.raises(UnknownApproval):
            await host.decide_approval("caller/a", "ap-nope", approve=True, by="x")
        with pytest.raises(UnknownApproval):
            await host.decide_approval("caller/b", kept.id, approve=True, by="x")


async def test_nobody_deciding_expires_it(
    clock: MockClock, host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    async with caller_host(host_config, caller_manifest) as host, trio.open_nursery() as nursery:
        replies: list[Any] = []

        async def ask() -> None:
            replies.extend(
                await host.send("caller/a", {"op": "approve", "action": "x", "timeout": 30})
            )

        nursery.start_soon(ask)
        [waiting] = await _asked(host, "caller/a")
        await settle_waiting(host)
        clock.jump(31)
        await until(lambda: bool(replies))
    [reply] = replies
    assert reply["decision"] == "expired" and reply["approved"] is False
    assert reply["by"] == "roost" and reply["note"] == "nobody decided within 30 s"
    async with caller_host(host_config, caller_manifest) as host:
        with pytest.raises(ApprovalDecided, match="was expired already"):
            await host.decide_approval("caller/a", waiting.id, approve=True, by="late")


async def settle_waiting(host: Host) -> None:
    """Wait until every task is blocked (the op waits for its decision)."""
    await until(lambda: host.turns_running == 0)
    await trio.testing.wait_all_tasks_blocked()


async def test_the_awaited_form_is_capped_and_the_pending_count_too(
    host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    async with caller_host(host_config, caller_manifest) as host:
        [refused] = await host.send("caller/a", {"op": "approve", "action": "x", "timeout": 3600})
        assert refused["error"] == (
            "approval.request: timeout 3600 s is outside the approval grant's max_wait_s = "
            "60 s; use then= to wait longer"
        )
        for n in range(3):
            assert await host.send("caller/a", {"op": "approve_then", "action": f"a{n}"}) == [
                "asked"
            ]
        await _asked(host, "caller/a", 3)  # the continuation ops have recorded them
        [over] = await host.send("caller/a", {"op": "approve_then", "action": "one more"})
        assert (
            "has 3 approvals waiting; the approval grant allows max_pending = 3" in (over["error"])
        )
        [empty] = await host.send("caller/a", {"op": "approve", "action": " "})
        assert empty["error"] == "approval.request needs an action (a non-empty text)"


async def test_the_continuation_form_hibernates_and_survives_a_restart(
    host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    async with caller_host(host_config, caller_manifest) as host:
        assert await host.send(
            "caller/a", {"op": "approve_then", "action": "ship it", "tag": {"order": 7}}
        ) == ["asked"]
        [waiting] = await _asked(host, "caller/a")
        await settle(host)
        host.hibernate_idle()
        await until(lambda: not host.is_resident("caller/a"))
    # A restart: the waiting op is resumed from the store; the decision still arrives.
    async with caller_host(host_config, caller_manifest) as host:
        [still] = await _asked(host, "caller/a")
        assert still.id == waiting.id
        assert not host.is_resident("caller/a")  # nothing keeps it in memory while it waits
        await host.decide_approval("caller/a", waiting.id, approve=False, by="boss", note="no")
        await until(lambda: host._services.counters.turns >= 1)
        await settle(host)
        state = await caller_state(host, "a")
    assert state["decision_tag"] == {"order": 7}
    assert state["decision"]["decision"] == "rejected"
    assert state["decision"]["note"] == "no"
    assert state["decision"]["id"] == waiting.id


async def test_an_awaited_approval_survives_a_crash(
    host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    with trio.CancelScope() as crash:
        async with caller_host(host_config, caller_manifest) as host, trio.open_nursery() as n:
            n.start_soon(host.send, "caller/a", {"op": "approve", "action": "wire money"})
            [before] = await _asked(host, "caller/a")
            crash.cancel()  # the host dies where it stands
    async with open_host(host_config()) as host:
        await host.deploy(caller_manifest)
        # The message waits in the inbox; run again, its handler asks for the same approval.
        [after] = await _asked(host, "caller/a")
        assert after.id == before.id and after.requested_at == before.requested_at
        await host.decide_approval("caller/a", after.id, approve=True, by="boss")
        await until(lambda: host.residency("caller/a").pending_ops == 0)
        await settle(host)
        state = await caller_state(host, "a")
    assert state["decisions"] == 1  # handled once


async def test_a_decision_taken_through_another_host_reaches_the_op(
    clock: MockClock,
    host_config: Callable[..., HostConfig],
    caller_manifest: Manifest,
    postgres_server: str,
    tmp_path: Any,
) -> None:
    """Two hosts on one PostgreSQL store: the op waits on the first; a person decides
    through the second; the first finds the decision at its next look (approval_poll_s)."""
    shared = {"store_url": postgres_server, "approval_poll_s": 2.0}
    async with (
        caller_host(host_config, caller_manifest, host_id="h1", **shared) as first,
        caller_host(
            host_config, caller_manifest, host_id="h2", data_dir=tmp_path / "h2", **shared
        ) as second,
        trio.open_nursery() as nursery,
    ):
        replies: list[Any] = []

        async def ask() -> None:
            replies.extend(await first.send("caller/x", {"op": "approve", "action": "wire"}))

        nursery.start_soon(ask)
        [waiting] = await _asked(first, "caller/x")
        await settle_waiting(first)
        await second.decide_approval("caller/x", waiting.id, approve=False, by="dana")
        await settle_waiting(first)
        assert not replies  # this host learns of it only when it looks
        clock.jump(2.0)
        await until(lambda: bool(replies))
    [reply] = replies
    assert (reply["decision"], reply["by"]) == ("rejected", "dana")
