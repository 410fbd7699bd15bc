"""Several hosts on one PostgreSQL store: one owner per agent, forwarding, fencing,
failover. Every test starts its own hosts (``roost serve`` processes), a new database on
the session's throwaway PostgreSQL server and, where it says so, HAProxy in front."""

from __future__ import annotations

import json
import signal
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from loadtests.crash import ADMIN_TOKEN, CrashSettings, run_crash
from loadtests.failover import FailoverSettings, run_failover

from .conftest import Cluster, ClusterFactory

# A kill cuts the client's requests short: httpx then leaves their body generators to the
# garbage collector, which Python reports as unraisable.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


async def _until(check: Callable[[], Awaitable[bool]], timeout_s: float = 30.0) -> None:
    """Poll ``check`` (what other processes did) until it holds."""
    with trio.fail_after(timeout_s):
        while True:
            if await check():
                return
            await trio.sleep(0.1)


async def _marks(c: Cluster, url: str, agent: str, field: str) -> list[Any]:
    state = (await c.export(url, "ledger", agent))["state"] or {}
    marks: list[Any] = state.get(field, [])
    return marks


async def _post(client: httpx.AsyncClient, url: str, agent: str, message: Any) -> httpx.Response:
    return await client.post(f"{url}/v1/agents/{agent}/messages", json={"message": message})


async def test_two_hosts_and_a_proxy_never_split_an_agent(cluster: ClusterFactory) -> None:
    """Messages to the same agents through either host and the proxy, concurrently: each
    agent's counter goes 1, 2, 3, ... with no gap and no repeat."""
    async with cluster(hosts=2, proxy=True) as c:
        assert c.proxy_url is not None
        entries = [c.proxy_url, *(h.url for h in c.hosts)]
        counts: dict[str, list[int]] = {f"u{i}": [] for i in range(4)}
        per_sender = 6

        async def sender(client: httpx.AsyncClient, agent: str, entry: str) -> None:
            for _ in range(per_sender):
                response = await _post(client, entry, f"echo/{agent}", "hi")
                assert response.status_code == 200, response.text
                [reply] = response.json()["replies"]
                counts[agent].append(reply["count"])

        async with c.client() as client, trio.open_nursery() as nursery:
            for agent in counts:
                for entry in entries:
                    nursery.start_soon(sender, client, agent, entry)
        for agent, seen in counts.items():
            assert sorted(seen) == list(range(1, per_sender * len(entries) + 1)), (agent, seen)
        # The agents are spread over both hosts, each served by one.
        owners = {c.owner("echo", agent) for agent in counts}
        assert owners <= {"h1", "h2"} and None not in owners


async def test_the_proxy_sheds_what_a_host_cannot_take_in_the_json_error_shape(
    cluster: ClusterFactory,
) -> None:
    """One request at a time per host (no agent check to raise it), and at most 200 ms in
    the proxy's queue: of four requests that each hold the host for a second, the proxy
    answers three with 503, Retry-After and the API's error shape, without the host seeing
    them."""
    async with cluster(
        hosts=1, proxy=True, proxy_maxconn=1, proxy_queue_ms=200, proxy_agent=False
    ) as c:
        assert c.proxy_url is not None
        proxy_url = c.proxy_url
        responses: list[httpx.Response] = []

        async def hold(client: httpx.AsyncClient, n: int) -> None:
            message = {"id": n, "via": "sleep", "seconds": 1.0}
            responses.append(await _post(client, proxy_url, f"ledger/held-{n}", message))

        async with c.client() as client:
            async with trio.open_nursery() as nursery:
                for n in range(4):
                    nursery.start_soon(hold, client, n)
            statuses = sorted(r.status_code for r in responses)
            assert statuses == [200, 503, 503, 503], [r.text for r in responses]
            for refused in (r for r in responses if r.status_code == 503):
                assert refused.headers["retry-after"] == "1"
                assert refused.json()["error"]["type"] == "Overloaded"
                assert refused.json()["error"]["retryable"] is True
            # The host never saw the refused ones: only the answered agent exists.
            [answered] = [r for r in responses if r.status_code == 200]
            listed = await client.get(f"{c.hosts[0].url}/v1/agents/ledger")
            ids = [a["id"] for a in listed.json()["agents"]]
            assert [f"/v1/agents/ledger/{i}/messages" for i in ids] == [answered.url.path]
            # Once the host is free, the proxy passes requests again.
            assert (await _post(client, proxy_url, "echo/after", "hi")).status_code == 200


async def test_requests_waiting_on_ops_do_not_hold_the_hosts_slots_at_the_proxy(
    cluster: ClusterFactory,
) -> None:
    """The host's agent check tells the proxy to let in one more request for each handler
    waiting on its ops: four messages that each wait a second on a sleep all get through a
    proxy that starts with one slot for the host; without the agent check they pass one
    at a time, and the last waits past the proxy's queue timeout and is answered 503."""
    async with cluster(hosts=1, proxy=True, proxy_maxconn=1, proxy_queue_ms=2500) as c:
        assert c.proxy_url is not None
        proxy_url = c.proxy_url
        statuses: list[int] = []

        async def wait_a_second(client: httpx.AsyncClient, n: int) -> None:
            message = {"id": n, "via": "sleep", "seconds": 1.0}
            statuses.append((await _post(client, proxy_url, f"ledger/w-{n}", message)).status_code)

        async with c.client() as client, trio.open_nursery() as nursery:
            for n in range(4):
                nursery.start_soon(wait_a_second, client, n)
        assert statuses == [200, 200, 200, 200]


async def test_open_streams_through_the_proxy_take_none_of_a_hosts_request_slots(
    cluster: ClusterFactory,
) -> None:
    """With one request slot per host, an open WebSocket and a message answered as
    server-sent events, still running, leave the slot to a plain message: a stream is a
    wait, not work, and routed past the host's ``maxconn``."""
    async with cluster(hosts=1, proxy=True, proxy_maxconn=1, proxy_queue_ms=200) as c:
        assert c.proxy_url is not None
        proxy_url = c.proxy_url
        ws_url = proxy_url.replace("http://", "ws://") + "/v1/agents/echo/streamer/ws"
        async with (
            c.client() as client,
            open_websocket_url(f"{ws_url}?token={ADMIN_TOKEN}") as ws,
        ):
            await ws.send_message(json.dumps({"message": "over the socket"}))
            assert json.loads(await ws.get_message())["type"] == "reply"
            held = {"id": 1, "via": "sleep", "seconds": 2.0}
            async with client.stream(
                "POST",
                f"{proxy_url}/v1/agents/ledger/streamed/messages",
                json={"message": held},
                headers={"Accept": "text/event-stream"},
            ) as streamed:
                assert streamed.status_code == 200
                plain = await _post(client, proxy_url, "echo/plain", "hi")
                assert plain.status_code == 200, plain.text
                events = (await streamed.aread()).decode()
            assert "event: done" in events  # the stream was still open while the post ran
            assert ws.closed is None


async def test_a_paused_host_loses_its_lease_and_its_late_commit_is_refused(
    cluster: ClusterFactory,
) -> None:
    async with cluster(hosts=2, lease_ttl_s=2.0) as c:
        h1, h2 = c.hosts
        outcome: dict[str, Any] = {}
        async with c.client() as client:

            async def first() -> None:  # handled on h1: it sleeps 3 s between two turns
                response = await _post(
                    client, h1.url, "ledger/p", {"id": 1, "via": "sleep", "seconds": 3}
                )
                outcome["status"] = response.status_code
                outcome["body"] = response.json()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(first)

                async def handling_on_h1() -> bool:  # h1 holds the lease; the inbox has it
                    return c.owner("ledger", "p") == "h1" and c.deliveries("ledger", "p") > 0

                await _until(handling_on_h1)
                assert h1.process is not None
                h1.process.send_signal(signal.SIGSTOP)  # paused past its lease
                await trio.sleep(2.5)
                # h2 takes the lease over: it serves the agent, and resumes the message h1
                # was handling from the inbox.
                response = await _post(client, h2.url, "ledger/p", {"id": 2, "via": "none"})
                assert response.status_code == 200, response.text
                assert c.owner("ledger", "p") == "h2"
                h1.process.send_signal(signal.SIGCONT)  # h1 wakes up and commits late
        assert outcome["status"] == 503, outcome
        assert outcome["body"]["error"]["type"] == "LeaseLost"

        async def resumed_on_h2() -> bool:  # h2's delivery loop runs message 1 again, once
            return 1 in await _marks(c, h2.url, "p", "after")

        await _until(resumed_on_h2)
        exported = await c.export(h2.url, "ledger", "p")
        state = exported["state"]
        assert Counter(state["before"]) == Counter({1: 1, 2: 1}), state
        assert Counter(state["after"]) == Counter({1: 1, 2: 1}), state
        assert sorted(exported["kv"]) == ["n:1", "n:2"]


async def test_a_message_whose_host_died_is_answered_502_and_applied_once(
    cluster: ClusterFactory,
) -> None:
    """A host dies while it handles two messages: the proxy answers both 502 in the API's
    error shape instead of sending them to another host (which would apply one sent
    without an Idempotency-Key a second time). Each, accepted before the host died, is
    applied once: the other host resumes it from the inbox, and a retry with the key gets
    its outcome."""
    async with cluster(hosts=2, proxy=True, lease_ttl_s=2.0) as c:
        assert c.proxy_url is not None
        proxy_url = c.proxy_url
        responses: dict[int, httpx.Response] = {}
        async with c.client() as client:

            async def send(agent: str, n: int, headers: dict[str, str]) -> httpx.Response:
                # Each on a new connection: a request on one the proxy had used for another
                # (and on a server connection it reused) has its connection closed instead.
                message = {"id": n, "via": "sleep", "seconds": 3}
                async with c.client() as own:
                    responses[n] = await own.post(
                        f"{proxy_url}/v1/agents/ledger/{agent}/messages",
                        json={"message": message},
                        headers=headers,
                    )
                return responses[n]

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send, "keyless", 1, {})

                async def handled() -> bool:
                    return c.deliveries("ledger", "keyless") > 0

                await _until(handled)
                owner = c.owner("ledger", "keyless")
                keyed = await _agent_served_by(c, client, proxy_url, owner)
                nursery.start_soon(send, keyed, 2, {"Idempotency-Key": "k2"})

                async def keyed_handled() -> bool:
                    return c.deliveries("ledger", keyed) > 0

                await _until(keyed_handled)
                [dying] = [h for h in c.hosts if h.name == owner]
                assert dying.process is not None
                dying.process.kill()
            for refused in responses.values():
                assert refused.status_code == 502, refused.text
                assert refused.json()["error"]["type"] == "HostFailed"
                assert refused.json()["error"]["retryable"] is False

            async def retried() -> bool:  # 502/503 until the other host took the agent over
                return (await send(keyed, 2, {"Idempotency-Key": "k2"})).status_code == 200

            await _until(retried)
            assert responses[2].json()["replies"] == [{"id": 2}]
        [survivor] = [h for h in c.hosts if h is not dying]
        for agent, n in (("keyless", 1), (keyed, 2)):

            async def applied(agent: str = agent, n: int = n) -> bool:
                return n in await _marks(c, survivor.url, agent, "after")

            await _until(applied)
            state = (await c.export(survivor.url, "ledger", agent))["state"]
            assert Counter(state["before"])[n] == 1, state
            assert Counter(state["after"])[n] == 1, state


async def _agent_served_by(
    c: Cluster, client: httpx.AsyncClient, proxy_url: str, host: str | None
) -> str:
    """An agent the proxy sends to ``host`` (it hashes kind/id): found by trying."""
    for i in range(64):
        agent = f"probe-{i}"
        response = await _post(client, proxy_url, f"ledger/{agent}", {"id": 0, "via": "none"})
        assert response.status_code == 200, response.text
        if c.owner("ledger", agent) == host:
            return agent
    raise AssertionError(f"no agent of 64 went to {host}")


async def test_an_ask_and_a_timer_cross_hosts(cluster: ClusterFactory) -> None:
    async with cluster(hosts=2, lease_ttl_s=3.0) as c:
        h1, h2 = c.hosts
        async with c.client() as client:
            # h2 serves the peer; h1 serves the agent that asks it.
            response = await _post(client, h2.url, "ledger/peer-x", {"id": 100, "via": "none"})
            assert response.status_code == 200
            response = await _post(client, h1.url, "ledger/x", {"id": 1, "via": "ask"})
            assert response.status_code == 200, response.text
            assert c.owner("ledger", "x") == "h1" and c.owner("ledger", "peer-x") == "h2"
            peer = await c.export(h2.url, "ledger", "peer-x")
            assert peer["state"]["asked"] == [1]
            # A timer set on h1, which then stops: h2 fires it.
            response = await _post(
                client, h1.url, "ledger/x", {"id": 2, "via": "timer", "seconds": 1.5}
            )
            assert response.status_code == 200
        assert h1.process is not None
        h1.process.send_signal(signal.SIGTERM)
        await h1.process.wait()

        async def fired_on_h2() -> bool:
            return 2 in await _marks(c, h2.url, "x", "fired")

        await _until(fired_on_h2)
        assert c.owner("ledger", "x") in ("h2", None)
        assert (await c.export(h2.url, "ledger", "x"))["state"]["fired"] == [2]


@pytest.mark.slow
async def test_failover_under_load_loses_nothing(store_url: str, cache_dir: Path) -> None:
    verdict = await run_failover(
        FailoverSettings(
            hosts=3,
            agents=12,
            seed=3,
            lease_ttl_s=5.0,
            load_before_kill_s=6.0,
            load_after_kill_s=12.0,
            store_url=store_url,
            cache_dir=cache_dir,
        ),
        report=lambda _line: None,
    )
    assert verdict["affected_agents"] > 0, verdict
    assert verdict["not_failed_over"] == [], verdict
    assert verdict["failover_max_s"] <= 5.0 + 3.0, verdict  # the lease TTL, plus a look
    assert (verdict["lost"], verdict["applied_twice"]) == (0, 0), verdict
    assert verdict["rejoined"] is True


@pytest.mark.slow
async def test_the_crash_harness_on_postgres(store_url: str, cache_dir: Path) -> None:
    verdict = await run_crash(
        CrashSettings(
            kills=10, messages_per_round=10, seed=7, cache_dir=cache_dir, store_url=store_url
        ),
        report=lambda _line: None,
    )
    assert verdict["kills"] == 10
    assert (verdict["lost"], verdict["applied_twice"]) == (0, 0), verdict
