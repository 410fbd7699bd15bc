"""``/metrics``: the host's counters in the Prometheus text format (the same numbers
OpenTelemetry exports, see docs/telemetry.md)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..telemetry import HistogramSnapshot, HostMetrics, HostStatistics


class MetricsRecorder:
    """What the API layer records (into the host's metrics) and renders."""

    def __init__(self, metrics: HostMetrics) -> None:
        self._metrics = metrics

    def rejected(self, status: int) -> None:
        self._metrics.rejected(status)

    def socket_opened(self) -> None:
        self._metrics.websockets_open += 1

    def socket_closed(self) -> None:
        self._metrics.websockets_open -= 1

    def render(self, stats: HostStatistics, *, work_slots: int | None = None) -> bytes:
        """The metrics text; ``work_slots``: what the proxy's agent check offers for
        requests doing work, when it is served."""
        families = self._families(stats)
        if work_slots is not None:
            families.append(
                GaugeMetricFamily(
                    "roost_proxy_work_slots",
                    "Requests doing work the agent check lets a proxy send at once.",
                    value=work_slots,
                )
            )
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Snapshot(families))
        return generate_latest(registry)

    def _families(self, stats: HostStatistics) -> list[Metric]:
        gauges = {
            "roost_agents_resident": ("Agents with an instance in memory.", stats.resident),
            "roost_agents_hibernated": ("Agents with state and no instance.", stats.hibernated),
            "roost_events_in_flight": ("Events being handled.", stats.in_flight),
            "roost_kinds": ("Deployed kinds.", stats.kinds),
            "roost_websockets_open": ("Open agent WebSockets.", stats.websockets_open),
            "roost_agents_cooling_down": (
                "Agents whose events are refused for running past their CPU deadline.",
                stats.cooling_down,
            ),
        }
        counters = {
            "roost_activations": ("Instances created.", stats.activations),
            "roost_hibernations": ("Instances dropped.", stats.hibernations),
            "roost_turns": ("Committed turns.", stats.turns),
        }
        families: list[Metric] = [GaugeMetricFamily(n, h, value=v) for n, (h, v) in gauges.items()]
        families += [CounterMetricFamily(n, h, value=v) for n, (h, v) in counters.items()]
        rejected = CounterMetricFamily(
            "roost_requests_rejected", "Requests refused for backpressure.", labels=["status"]
        )
        for status, count in sorted(stats.rejected.items()):
            rejected.add_metric([str(status)], count)
        families.append(rejected)
        denied = CounterMetricFamily(
            "roost_capability_denials",
            "Capability calls refused: outside the grant, over a quota or a budget.",
            labels=["kind", "capability"],
        )
        for name, count in sorted(stats.denied.items()):
            kind, _, capability = name.partition("/")
            denied.add_metric([kind, capability], count)
        families.append(denied)
        families.append(
            _by_two(
                "roost_traps",
                "Failed guest turns: trap, CPU deadline, memory, limit, ABI.",
                ["kind", "trap"],
                stats.traps,
            )
        )
        families.append(
            _by_two("roost_llm_tokens", "LLM tokens used.", ["kind", "type"], stats.llm_tokens)
        )
        calls = CounterMetricFamily(
            "roost_llm_calls",
            "Calls to model providers, by provider, model and outcome (ok, an HTTP status, "
            "timeout, unreachable, stream_error, truncated, malformed).",
            labels=["provider", "model", "outcome"],
        )
        for key, count in sorted(stats.llm_calls.items()):
            calls.add_metric(key.split("|", 2), count)
        families.append(calls)
        call_seconds = HistogramMetricFamily(
            "roost_llm_call_seconds",
            "Latency of calls to model providers (failed ones included), by provider and model.",
            labels=["provider", "model"],
        )
        for key, snapshot in sorted(stats.llm_call_seconds.items()):
            call_seconds.add_metric(key.split("|", 1), _buckets(snapshot), snapshot.total)
        families.append(call_seconds)
        depth = GaugeMetricFamily(
            "roost_mailbox_depth", "Events queued in resident agents' mailboxes.", labels=["kind"]
        )
        for kind, count in sorted(stats.mailbox_depth.items()):
            depth.add_metric([kind], count)
        families.append(depth)
        dead = GaugeMetricFamily(
            "roost_dead_letters",
            "Deliveries given up after repeated failures, held for the operator.",
            labels=["kind"],
        )
        for kind, count in sorted(stats.dead_letters.items()):
            dead.add_metric([kind], count)
        families.append(dead)
        cooled = CounterMetricFamily(
            "roost_deadline_cool_downs",
            "Agents cooled down for running past their CPU deadline.",
            labels=["kind"],
        )
        for kind, count in sorted(stats.cool_downs.items()):
            cooled.add_metric([kind], count)
        families.append(cooled)
        held = GaugeMetricFamily(
            "roost_agents_held_resident",
            "Agents resident past their idle timeout, by what holds them.",
            labels=["reason"],
        )
        for reason, count in sorted(stats.held_resident.items()):
            held.add_metric([reason], count)
        families.append(held)
        families.append(
            _histogram(
                "roost_wake_seconds",
                "Activation latency: load state, instantiate, init.",
                stats.wake_seconds,
            )
        )
        families.append(
            _histogram(
                "roost_turn_seconds",
                "Turn latency: worker wait, guest call, commit.",
                stats.turn_seconds,
            )
        )
        families.append(
            _histogram(
                "roost_gc_pause_seconds",
                "Pauses of Python's cyclic garbage collector, by generation (2: full).",
                stats.gc_pause_seconds,
                label="generation",
            )
        )
        return families


def _by_two(name: str, help_text: str, labels: list[str], counts: dict[str, int]) -> Metric:
    family = CounterMetricFamily(name, help_text, labels=labels)
    for key, count in sorted(counts.items()):
        first, _, second = key.partition("/")
        family.add_metric([first, second], count)
    return family


def _histogram(
    name: str, help_text: str, by_kind: dict[str, HistogramSnapshot], label: str = "kind"
) -> Metric:
    family = HistogramMetricFamily(name, help_text, labels=[label])
    for kind, snapshot in sorted(by_kind.items()):
        family.add_metric([kind], _buckets(snapshot), snapshot.total)
    return family


def _buckets(snapshot: HistogramSnapshot) -> list[tuple[str, float]]:
    buckets: list[tuple[str, float]] = []
    cumulative = 0
    for bound, count in zip((*snapshot.bounds, float("inf")), snapshot.counts, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    return buckets


class _Snapshot(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families
