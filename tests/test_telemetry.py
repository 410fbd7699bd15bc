"""OpenTelemetry: spans, metrics and logs of real guest turns, with in-memory exporters."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from opentelemetry.sdk.metrics.export import HistogramDataPoint, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode
from trio.testing import MockClock, wait_all_tasks_blocked

from loadtests.bench import DEFAULT_MANIFEST
from loadtests.bench_telemetry import MODES, measure_telemetry
from loadtests.http_sink import run_http_sink
from roost import Host, HostConfig, Manifest, open_host
from roost.api import Credentials, create_app
from roost.config import ServerConfig, TelemetryConfig, load_telemetry_config
from roost.telemetry import InMemoryTelemetry, JsonLogFormatter, Telemetry, in_memory_telemetry

from .conftest import sim_llm, until, with_limits

ADMIN = "telemetry-admin-token"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"


@pytest.fixture
def otel() -> Any:
    memory = in_memory_telemetry()
    yield memory
    memory.shutdown()


@asynccontextmanager
async def traced_host(
    host_config: Callable[..., HostConfig],
    manifest: Manifest,
    memory: InMemoryTelemetry,
    **settings: Any,
) -> AsyncIterator[Host]:
    async with open_host(host_config(**settings), telemetry=memory.telemetry) as host:
        await host.deploy(manifest)
        yield host


@asynccontextmanager
async def api_client(host: Host) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        host,
        ServerConfig(admin_token=ADMIN, secret="s" * 32),
        Credentials(secret="s" * 32, admin_token=ADMIN),
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://roost.test") as client:
        yield client


def _by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def _parent(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _points(memory: InMemoryTelemetry) -> dict[str, list[Any]]:
    data = memory.metrics.get_metrics_data()
    assert data is not None
    points: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    return points


def _value(points: list[Any], **attributes: Any) -> Any:
    for point in points:
        if all(point.attributes.get(k) == v for k, v in attributes.items()):
            if isinstance(point, HistogramDataPoint):
                return point.count
            assert isinstance(point, NumberDataPoint)
            return point.value
    raise AssertionError(f"no point with {attributes} in {points}")


def _point(points: list[Any], **attributes: Any) -> dict[str, Any]:
    """The attributes of the one point that has ``attributes``."""
    [found] = [
        dict(p.attributes)
        for p in points
        if all(p.attributes.get(k) == v for k, v in attributes.items())
    ]
    return found


async def test_an_http_request_traces_its_turns_host_calls_and_llm_op(
    otel: InMemoryTelemetry,
    host_config: Callable[..., HostConfig],
    caller_manifest: Manifest,
) -> None:
    outbound: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        outbound.append(request)

    async with (
        sim_llm(completion_tokens=5) as server,
        traced_host(host_config, caller_manifest, otel, llm_base_url=server.url) as host,
        api_client(host) as client,
    ):
        host._capability_services.http_client.event_hooks["request"].append(record)
        response = await client.post(
            "/v1/agents/caller/a/messages",
            json={"message": {"op": "chat_then_fetch", "text": "hi", "url": "https://x.test/"}},
            headers={"Authorization": f"Bearer {ADMIN}", "traceparent": TRACEPARENT},
        )
        assert response.status_code == 200
        [reply] = response.json()["replies"]
        assert "not on the http grant's hosts" in reply["refused"]
        prometheus = (await client.get("/metrics")).text
        points = _points(otel)

    spans = tuple(s for s in otel.spans.get_finished_spans() if s.name != "GET /metrics")
    assert {s.context.trace_id for s in spans} == {int(TRACE_ID, 16)}

    # The request is a server span under the caller's traceparent...
    [request] = _by_name(spans, "POST /v1/agents/{kind}/{id}/messages")
    assert request.kind == SpanKind.SERVER
    assert _parent(request) == int(PARENT_SPAN_ID, 16)
    assert request.attributes is not None
    assert request.attributes["http.response.status_code"] == 200

    # ...and the parent of the event's two turns: the first calls the llm, the second
    # (resumed with its answer) logs and is refused a fetch.
    turns = sorted(_by_name(spans, "roost.turn"), key=lambda s: s.start_time or 0)
    assert [_parent(t) for t in turns] == [request.context.span_id] * 2
    first, second = turns
    for turn in turns:
        attributes = dict(turn.attributes or {})
        assert attributes["agent.kind"] == "caller"
        assert attributes["agent.id"] == "a"
        assert attributes["roost.event.type"] == "message"
        assert attributes["roost.outcome"] == "ok"
        assert attributes["roost.turn.cpu_ms"] > 0
        assert attributes["roost.turn.epoch_deadline_ticks"] > 0
        assert attributes["roost.state.bytes"] >= 0
    assert first.attributes is not None and second.attributes is not None
    assert first.attributes["roost.turn.export"] == "on-event"
    assert first.attributes["roost.turn.ops_started"] == 1
    assert second.attributes["roost.turn.export"] == "on-complete"

    # Activation and host calls are children of their turn, although they ran on a worker
    # thread; the refused call is marked.
    [activate] = _by_name(spans, "roost.activate")
    assert _parent(activate) == first.context.span_id
    [chat_call] = _by_name(spans, "llm.chat")
    assert _parent(chat_call) == first.context.span_id
    [log_call] = _by_name(spans, "log.write")
    assert _parent(log_call) == second.context.span_id
    [fetch_call] = _by_name(spans, "http.fetch")
    assert _parent(fetch_call) == second.context.span_id
    assert fetch_call.status.status_code == StatusCode.ERROR
    assert fetch_call.attributes is not None
    assert fetch_call.attributes["roost.capability.denied"] is True
    assert fetch_call.attributes["error.type"] == "CapabilityDenied"

    # The llm op is a GenAI client span under the turn that started it, and the request
    # to the provider carried its traceparent.
    [llm] = _by_name(spans, "chat roost-sim")
    assert llm.kind == SpanKind.CLIENT
    assert _parent(llm) == first.context.span_id
    gen_ai = dict(llm.attributes or {})
    assert gen_ai["gen_ai.operation.name"] == "chat"
    assert gen_ai["gen_ai.provider.name"] == "default"  # the host's name for its provider
    assert "gen_ai.system" not in gen_ai  # deprecated by the GenAI conventions
    assert gen_ai["gen_ai.response.finish_reasons"] == ("stop",)
    assert gen_ai["gen_ai.request.model"] == "roost-sim"
    assert gen_ai["gen_ai.usage.output_tokens"] == 5
    assert gen_ai["gen_ai.usage.input_tokens"] > 0
    [provider_request] = [r for r in outbound if r.url.path.endswith("/chat/completions")]
    assert provider_request.headers["traceparent"] == (
        f"00-{TRACE_ID}-{llm.context.span_id:016x}-01"
    )

    # The guest's log line is a log record of the turn that wrote it; so is the host's
    # warning about the refused call.
    records = [r.log_record for r in otel.logs.get_finished_logs()]
    [guest_line] = [r for r in records if r.body == "answered with 5 tokens"]
    assert guest_line.span_id == second.context.span_id
    assert guest_line.trace_id == int(TRACE_ID, 16)
    assert guest_line.attributes is not None
    assert guest_line.attributes["agent.id"] == "a"
    [refusal] = [r for r in records if "http.fetch refused" in str(r.body)]
    assert refusal.span_id == second.context.span_id
    assert refusal.attributes is not None
    assert refusal.attributes["agent_kind"] == "caller"

    # Metrics, over OpenTelemetry...
    input_tokens = gen_ai["gen_ai.usage.input_tokens"]
    assert _value(points["roost.turns"]) == 2
    assert _value(points["roost.activations"]) == 1
    assert _value(points["roost.agents.resident"]) == 1
    assert _value(points["roost.turn.duration"], **{"agent.kind": "caller"}) == 2
    assert _value(points["roost.wake.duration"], **{"agent.kind": "caller"}) == 1
    denials = points["roost.capability.denials"]
    assert _value(denials, **{"agent.kind": "caller", "roost.capability": "http"}) == 1
    assert _value(denials, **{"agent.kind": "caller", "roost.capability": "llm"}) == 0
    tokens = points["roost.llm.tokens"]
    assert _value(tokens, **{"gen_ai.token.type": "output"}) == 5
    assert _value(tokens, **{"gen_ai.token.type": "input"}) == input_tokens
    assert _value(points["gen_ai.client.token.usage"], **{"gen_ai.token.type": "output"}) == 1
    usage_point = _point(points["gen_ai.client.token.usage"], **{"gen_ai.token.type": "output"})
    assert usage_point["gen_ai.provider.name"] == "default"
    assert usage_point["gen_ai.request.model"] == "roost-sim"
    assert usage_point["gen_ai.response.model"] == "roost-sim"
    duration = _point(
        points["gen_ai.client.operation.duration"], **{"gen_ai.provider.name": "default"}
    )
    assert duration["gen_ai.operation.name"] == "chat"
    assert "error.type" not in duration
    assert _value(points["gen_ai.client.operation.duration"]) == 1
    # ...and at /metrics.
    assert 'roost_llm_calls_total{model="roost-sim",outcome="ok",provider="default"} 1.0' in (
        prometheus
    )
    assert 'roost_llm_call_seconds_count{model="roost-sim",provider="default"} 1.0' in prometheus
    assert 'roost_capability_denials_total{capability="http",kind="caller"} 1.0' in prometheus
    assert 'roost_llm_tokens_total{kind="caller",type="output"} 5.0' in prometheus
    assert f'roost_llm_tokens_total{{kind="caller",type="input"}} {input_tokens}.0' in prometheus
    assert 'roost_turn_seconds_count{kind="caller"} 2.0' in prometheus
    assert 'roost_wake_seconds_count{kind="caller"} 1.0' in prometheus
    assert "roost_turns_total 2.0" in prometheus


async def test_http_fetch_is_a_client_span_and_carries_traceparent(
    otel: InMemoryTelemetry, host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    with run_http_sink() as sink:
        async with traced_host(host_config, caller_manifest, otel, http_allow_private=True) as host:
            [reply] = await host.send("caller/a", {"op": "fetch", "url": sink.url + "/x?q=1"})
            assert reply["status"] == 200
    spans = otel.spans.get_finished_spans()
    [turn, _resumed] = sorted(_by_name(spans, "roost.turn"), key=lambda s: s.start_time or 0)
    assert turn.parent is None  # sent from no trace: a root span
    [fetch] = _by_name(spans, "GET")
    assert fetch.kind == SpanKind.CLIENT
    assert _parent(fetch) == turn.context.span_id
    assert fetch.attributes is not None
    assert fetch.attributes["http.response.status_code"] == 200
    assert fetch.attributes["url.full"] == sink.url + "/x"
    [seen] = sink.requests
    trace_id = f"{fetch.context.trace_id:032x}"
    assert seen.headers["traceparent"].startswith(f"00-{trace_id}-{fetch.context.span_id:016x}-")


async def test_traps_count_by_kind_and_the_agent_reads_its_usage(
    otel: InMemoryTelemetry, host_config: Callable[..., HostConfig], caller_manifest: Manifest
) -> None:
    async with traced_host(host_config, caller_manifest, otel) as host:
        await host.send("caller/a", {"op": "remember", "text": "x"})
        with pytest.raises(Exception, match="unknown op"):
            await host.send("caller/a", {"op": "no-such-op"})
        [usage] = await host.send("caller/a", {"op": "usage"})
        stats = await host.statistics()
        points = _points(otel)
    assert usage["turns"] == 1  # committed before this turn
    assert usage["errors"] == 1
    assert usage["cpu_ms"] > 0
    assert usage["llm_tokens"] == 0
    assert usage["budgets"]["llm_tokens_per_day"] is None
    assert stats.traps == {"caller/guest_trap": 1}
    assert _value(points["roost.traps"], **{"roost.trap": "guest_trap"}) == 1
    failed = [
        s
        for s in _by_name(otel.spans.get_finished_spans(), "roost.turn")
        if (s.attributes or {}).get("roost.outcome") == "error"
    ]
    assert [(s.attributes or {}).get("error.type") for s in failed] == ["GuestTrap"]
    assert failed[0].status.status_code == StatusCode.ERROR


@pytest.fixture
def clock() -> MockClock:
    return MockClock()


async def test_status_and_metrics_say_why_an_agent_outstays_its_idle_timeout(
    clock: MockClock,
    otel: InMemoryTelemetry,
    host_config: Callable[..., HostConfig],
    caller_manifest: Manifest,
) -> None:
    manifest = with_limits(caller_manifest, idle_timeout_s=5)
    async with (
        sim_llm(latency_ms=30_000) as server,
        traced_host(host_config, manifest, otel, llm_base_url=server.url) as host,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(host.send, "caller/a", {"op": "chat", "text": "slow"})
        await until(lambda: server.statistics().requests == 1)
        await wait_all_tasks_blocked()  # the provider is sleeping on its latency
        status = await host.agent_status("caller/a")
        assert status.held_resident_by == ()  # not past its idle timeout yet
        assert status.pending_ops == 1
        clock.jump(6)
        status = await host.agent_status("caller/a")
        assert status.resident
        assert status.held_resident_by == ("pending_op",)
        stats = await host.statistics()
        assert stats.held_resident["pending_op"] == 1
        assert _value(_points(otel)["roost.agents.held_resident"], reason="pending_op") == 1
        clock.jump(25)
        await until(lambda: host._services.counters.turns == 2)
        await until(lambda: host._registry.in_flight == 0)
        status = await host.agent_status("caller/a")
        assert status.held_resident_by == ()
        assert status.pending_ops == 0


async def test_telemetry_is_off_unless_the_environment_asks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    default = load_telemetry_config()
    assert [default.exporter(s) for s in ("traces", "metrics", "logs")] == ["none"] * 3
    off = Telemetry.from_config(default)
    assert not off.enabled and off.tracer is None and off.meter is None
    off.shutdown()

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "roost-test")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    monkeypatch.setenv("OTEL_LOGS_EXPORTER", "none")
    config = load_telemetry_config()
    assert config.exporter("traces") == "otlp"
    assert config.exporter("logs") == "none"
    assert config.otlp_endpoint("metrics") == "http://127.0.0.1:4318/v1/metrics"
    on = Telemetry.from_config(config)
    try:
        assert on.tracing and on.meter is not None and on.logger_provider is None
        assert on.tracer_provider is not None
        assert "0.25" in on.tracer_provider.sampler.get_description()
        assert on.tracer_provider.resource.attributes["service.name"] == "roost-test"
    finally:
        on.shutdown()

    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert load_telemetry_config().exporter("traces") == "none"
    assert TelemetryConfig(exporter_otlp_traces_endpoint="http://a/t").otlp_endpoint("traces") == (
        "http://a/t"
    )


def test_host_logs_are_json_lines_with_their_structured_fields() -> None:
    record = logging.LogRecord(
        "roost.agent", logging.WARNING, __file__, 1, "hello %s", ("x",), None
    )
    record.agent_kind = "caller"
    record.agent_id = "a"
    line = json.loads(JsonLogFormatter().format(record))
    assert line["message"] == "hello x"
    assert line["level"] == "warning"
    assert line["logger"] == "roost.agent"
    assert (line["agent_kind"], line["agent_id"]) == ("caller", "a")


async def test_bench_telemetry_runs_every_mode_and_exports_over_otlp(
    monkeypatch: pytest.MonkeyPatch, cache_dir: Path, echo_manifest: Manifest
) -> None:
    monkeypatch.setenv("ROOST_CACHE_DIR", str(cache_dir))  # the echo build is cached there
    result = await measure_telemetry(DEFAULT_MANIFEST, 5, 1, progress=lambda _: None)
    assert set(result["modes"]) == set(MODES)
    for figures in result["modes"].values():
        assert figures["samples"] == 5
        assert figures["turn_us_p50"] > 0
    # Shutting the OTLP mode's providers down flushed its spans to the loopback receiver.
    assert result["otlp_posts"].get("/v1/traces", 0) >= 1
    assert result["otlp_posts"].get("/v1/metrics", 0) >= 1
