"""``/metrics``: the host's counters in the Prometheus text format."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..host import HostStatistics


class MetricsRecorder:
    """Counters the API layer owns (the host owns the rest)."""

    def __init__(self) -> None:
        self._rejected: dict[int, int] = {429: 0, 503: 0}
        self._sockets = 0

    def rejected(self, status: int) -> None:
        self._rejected[status] = self._rejected.get(status, 0) + 1

    def socket_opened(self) -> None:
        self._sockets += 1

    def socket_closed(self) -> None:
        self._sockets -= 1

    def render(self, stats: HostStatistics) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Snapshot(self._families(stats)))
        return generate_latest(registry)

    def _families(self, stats: HostStatistics) -> list[Metric]:
        gauges = {
            "roost_agents_resident": ("Agents with an instance in memory.", stats.resident),
            "roost_agents_hibernated": ("Agents with state and no instance.", stats.hibernated),
            "roost_events_in_flight": ("Events being handled.", stats.in_flight),
            "roost_kinds": ("Deployed kinds.", stats.kinds),
            "roost_websockets_open": ("Open agent WebSockets.", self._sockets),
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
        for status, count in sorted(self._rejected.items()):
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
        return families


class _Snapshot(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families
