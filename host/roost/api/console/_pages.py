"""What the console's pages show, gathered from the host: view models and the helpers the
templates use (numbers, sizes, times).

Each function here reads the host through its facade and returns plain values for a
template; nothing here renders HTML except the charts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from markupsafe import Markup

from ...address import AgentAddress
from ...host import AgentStatus, Host, Residency
from ...limits import Budgets
from ...manifest import Manifest
from ...store.protocol import AgentSummary
from ...telemetry import HostStatistics, TurnRecord
from ._charts import Series, line_chart
from ._history import StatisticsHistory, quantile

PAGE_SIZE = 50
"""Agents per page."""
RECENT_AGENTS = 10
"""Recently active agents listed beside the search results."""
SHOWN_KV_ENTRIES = 200
"""kv entries shown on an agent's page (the export has them all)."""
PREVIEW_CHARS = 240
"""Characters of a kv value shown."""
SHOWN_STATE_CHARS = 100_000
"""Characters of an agent's state (as JSON) shown; the export has all of it."""

HELD_REASONS = {
    "pending_op": "a handler awaits an async op (LLM, HTTP, ask, sleep)",
    "turn_running": "a turn is running",
    "mailbox_not_empty": "events are queued behind the current one",
}
"""What each of :attr:`AgentStatus.held_resident_by` means."""


# -- formatting (template filters) ---------------------------------------------------------


def number(value: float | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def size(value: float | None) -> str:
    if value is None:
        return "—"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:,.0f} {unit}" if unit == "B" else f"{amount:,.1f} {unit}"
        amount /= 1024
    return f"{amount:,.1f} GiB"


def milliseconds(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    ms = seconds * 1000
    return f"{ms:,.0f} ms" if ms >= 100 else f"{ms:.2f} ms"


def utc(at: float | None) -> str:
    if at is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def iso(at: float | None) -> str:
    if at is None:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def ago(at: float | None, now: float | None = None) -> str:
    if at is None:
        return "never"
    seconds = (time.time() if now is None else now) - at
    if abs(seconds) < 1:
        return "just now"
    if seconds < 0:
        return f"in {_duration(-seconds)}"
    return f"{_duration(seconds)} ago"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def pretty_json(value: Any, limit: int = SHOWN_STATE_CHARS) -> str:
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=_json_default)
    if len(text) > limit:
        return text[:limit] + f"\n… ({len(text) - limit:,} more characters in the export)"
    return text


def _json_default(value: object) -> object:
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(bytes(value))} bytes>"
    return repr(value)


def agent_url(address: AgentAddress | str, action: str = "") -> str:
    if isinstance(address, str):
        address = AgentAddress.parse(address)
    path = f"/console/agents/{quote(address.kind, safe='')}/{quote(address.id, safe='')}"
    return f"{path}/{action}" if action else path


def agents_url(**params: str | None) -> str:
    query = urlencode({k: v for k, v in params.items() if v})
    return f"/console/agents?{query}" if query else "/console/agents"


# -- host -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KindLatency:
    kind: str
    turns: int
    turn_p50_s: float | None
    turn_p95_s: float | None
    wakes: int
    wake_p50_s: float | None
    wake_p95_s: float | None


@dataclass(frozen=True)
class HostView:
    statistics: HostStatistics
    charts: list[Markup]
    latencies: list[KindLatency]
    window_s: float
    sampled_at: float
    interval_s: float
    llm_input_tokens: int
    llm_output_tokens: int
    gc_pauses: int
    gc_pause_s: float
    rejected: int


async def host_view(history: StatisticsHistory) -> HostView:
    statistics = await history.latest()
    intervals = history.intervals()
    samples = history.samples()
    times = [i.at for i in intervals]

    def chart(title: str, unit: str, chart_id: str, *series: Series) -> Markup:
        return line_chart(title, unit, times, series, chart_id=chart_id)

    sample_times = [s.at for s in samples[1:]]
    charts = [
        line_chart(
            "Resident agents",
            "",
            sample_times,
            [Series("resident", [s.resident for s in samples[1:]])],
            chart_id="chart-resident",
        ),
        line_chart(
            "Hibernated agents",
            "",
            sample_times,
            [Series("hibernated", [s.hibernated for s in samples[1:]])],
            chart_id="chart-hibernated",
        ),
        chart(
            "Turns and activations",
            "/s",
            "chart-rates",
            Series("turns", [i.turns_per_s for i in intervals]),
            Series("activations", [i.activations_per_s for i in intervals]),
        ),
        chart(
            "Turn latency",
            "ms",
            "chart-turn-latency",
            Series("p50", [i.turn_p50_ms for i in intervals]),
            Series("p95", [i.turn_p95_ms for i in intervals]),
        ),
        chart(
            "Wake latency",
            "ms",
            "chart-wake-latency",
            Series("p50", [i.wake_p50_ms for i in intervals]),
            Series("p95", [i.wake_p95_ms for i in intervals]),
        ),
        chart(
            "Rejections and failed turns",
            "/s",
            "chart-rejections",
            Series("rejected (429, 503)", [i.rejected_per_s for i in intervals]),
            Series("failed turns", [i.traps_per_s for i in intervals]),
        ),
        chart(
            "LLM tokens",
            "/s",
            "chart-tokens",
            Series("tokens", [i.llm_tokens_per_s for i in intervals]),
        ),
        chart(
            "Garbage-collector pauses",
            "ms/s",
            "chart-gc",
            Series("paused", [i.gc_pause_ms_per_s for i in intervals]),
        ),
    ]
    kinds = sorted(set(statistics.turn_seconds) | set(statistics.wake_seconds))
    latencies = []
    for kind in kinds:
        turn = statistics.turn_seconds.get(kind)
        wake = statistics.wake_seconds.get(kind)
        latencies.append(
            KindLatency(
                kind,
                turn.count if turn else 0,
                quantile(turn.counts, 0.5) if turn else None,
                quantile(turn.counts, 0.95) if turn else None,
                wake.count if wake else 0,
                quantile(wake.counts, 0.5) if wake else None,
                quantile(wake.counts, 0.95) if wake else None,
            )
        )
    tokens = statistics.llm_tokens
    gc = statistics.gc_pause_seconds.values()
    return HostView(
        statistics=statistics,
        charts=charts,
        latencies=latencies,
        window_s=samples[-1].at - samples[0].at if len(samples) > 1 else 0.0,
        sampled_at=samples[-1].at if samples else time.time(),
        interval_s=history.interval_s,
        llm_input_tokens=sum(n for k, n in tokens.items() if k.endswith("/input")),
        llm_output_tokens=sum(n for k, n in tokens.items() if k.endswith("/output")),
        gc_pauses=sum(h.count for h in gc),
        gc_pause_s=sum(h.total for h in statistics.gc_pause_seconds.values()),
        rejected=sum(statistics.rejected.values()),
    )


# -- kinds ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KindView:
    name: str
    version: str
    description: str
    wasm_sha256: str
    agents: int
    grants: list[tuple[str, list[tuple[str, str]]]]
    """Capability -> its parameters as ``(name, value)`` text."""
    limits: list[tuple[str, str]]
    budgets: list[tuple[str, str]]


async def kind_views(host: Host) -> list[KindView]:
    views = []
    for info in sorted(host.kinds(), key=lambda k: k.name):
        manifest = host.manifest(info.name)
        views.append(
            KindView(
                name=info.name,
                version=info.version,
                description=manifest.description,
                wasm_sha256=info.wasm_sha256,
                agents=await host.count_agents(info.name),
                grants=[
                    (name, [(k, _param(v)) for k, v in sorted(params.items())])
                    for name, params in sorted(manifest.capabilities.items())
                ],
                limits=[(k, _param(v)) for k, v in manifest.limits.model_dump().items()],
                budgets=[
                    (k, _param(v) if v is not None else "unlimited")
                    for k, v in manifest.budgets.model_dump().items()
                ],
            )
        )
    return views


def _param(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    return json.dumps(value, ensure_ascii=False, default=str)


# -- agents ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentRow:
    summary: AgentSummary
    address: AgentAddress
    residency: Residency


@dataclass(frozen=True)
class RecentAgent:
    address: AgentAddress
    turn: TurnRecord
    residency: Residency


@dataclass
class AgentSearch:
    """One page of the agents page: the kind, the id prefix, the rows."""

    kinds: list[str]
    kind: str | None
    query: str
    after: str | None
    rows: list[AgentRow] = field(default_factory=list)
    next_after: str | None = None
    total: int = 0
    """Agents of the kind with committed state."""
    problem: str | None = None
    recent: list[RecentAgent] = field(default_factory=list)


async def search_agents(host: Host, kind: str | None, query: str, after: str | None) -> AgentSearch:
    kinds = sorted(k.name for k in host.kinds())
    query = query.strip()
    if "/" in query:
        kind, _, query = query.partition("/")
    search = AgentSearch(kinds, kind or (kinds[0] if kinds else None), query, after or None)
    if search.kind is None:
        return search
    search.total = await host.count_agents(search.kind)
    page = await host.find_agents(search.kind, query, after=search.after, limit=PAGE_SIZE + 1)
    if len(page) > PAGE_SIZE:
        page = page[:PAGE_SIZE]
        search.next_after = page[-1].id
    search.rows = [
        AgentRow(s, address, host.residency(address))
        for s in page
        for address in [AgentAddress(search.kind, s.id)]
    ]
    search.recent = [
        RecentAgent(address, turn, host.residency(address))
        for address, turn in host.metrics().turns.recent(RECENT_AGENTS, search.kind)
    ]
    return search


# -- one agent ------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageRow:
    label: str
    used: float
    budget: float | None
    unit: str
    """``bytes`` for sizes; else shown after the number."""


def usage_rows(status: AgentStatus, budgets: Budgets | None) -> list[UsageRow]:
    usage = status.usage_today
    b = budgets or Budgets.model_validate({})
    return [
        UsageRow("LLM tokens", usage.llm_tokens, b.llm_tokens_per_day, "tokens"),
        UsageRow("HTTP calls", usage.http_calls, b.http_calls_per_day, "calls"),
        UsageRow("CPU time (ms)", round(usage.cpu_ms, 1), b.cpu_ms_per_day, "ms"),
        UsageRow(
            "Storage (state + kv)", status.state_bytes + status.kv_bytes, b.storage_bytes, "bytes"
        ),
        UsageRow("Turns", usage.turns, None, "turns"),
        UsageRow("Failed turns", usage.errors, None, "turns"),
    ]


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[dict[str, Any]], str]


@dataclass(frozen=True)
class WaitingSection:
    """Something an agent has waiting, shown as a table on its page, reading its rows from
    the agent's export: timers, its inbox, dead letters, approvals."""

    title: str
    anchor: str
    rows: Callable[[dict[str, Any]], list[dict[str, Any]]]
    """The section's rows, from the agent's export document."""
    columns: Sequence[Column]
    empty: str


WAITING: tuple[WaitingSection, ...] = (
    WaitingSection(
        "Approvals waiting for a decision",
        "approvals",
        lambda export: [a for a in export.get("approvals", []) if a["decision"] is None],
        (
            Column("Id", lambda a: str(a["id"])),
            Column("Action", lambda a: str(a["action"])),
            Column("Asked", lambda a: f"{utc(a['requested_at'])} ({ago(a['requested_at'])})"),
            Column(
                "Expires",
                lambda a: (
                    f"{utc(a['expires_at'])} ({ago(a['expires_at'])})"
                    if a["expires_at"]
                    else "never"
                ),
            ),
            Column("Details", lambda a: pretty_json(a["details"], PREVIEW_CHARS)),
        ),
        "No approval waiting.",
    ),
    WaitingSection(
        "Pending timers and deliveries",
        "timers",
        lambda export: list(export.get("timers", [])),
        (
            Column("Id", lambda t: str(t["id"])),
            Column("Event", lambda t: str(t["kind"])),
            Column("Due", lambda t: f"{utc(t['due_at'])} ({ago(t['due_at'])})"),
            Column("Repeats", lambda t: f"every {t['every_s']:g} s" if t["every_s"] else "no"),
            Column("Payload", lambda t: pretty_json(t["payload"], PREVIEW_CHARS)),
        ),
        "No timers or messages waiting.",
    ),
    WaitingSection(
        "Inbox (accepted, handler not finished)",
        "inbox",
        lambda export: list(export.get("inbox", [])),
        (
            Column("Id", lambda m: str(m["id"])),
            Column("Event", lambda m: str(m["kind"])),
            Column("Accepted", lambda m: f"{utc(m['accepted_at'])} ({ago(m['accepted_at'])})"),
            Column("Key", lambda m: str(m["idempotency_key"] or "")),
            Column("Attempts", lambda m: str(m["attempts"])),
            Column("Message", lambda m: pretty_json(m["message"], PREVIEW_CHARS)),
        ),
        "No message waiting for its handler.",
    ),
    WaitingSection(
        "Dead letters",
        "dead-letters",
        lambda export: list(export.get("dead_letters", [])),
        (
            Column("Id", lambda d: str(d["id"])),
            Column("Event", lambda d: str(d["kind"])),
            Column("Failed", lambda d: f"{utc(d['failed_at'])} ({ago(d['failed_at'])})"),
            Column("Attempts", lambda d: str(d["attempts"])),
            Column("Last error", lambda d: str(d["last_error"])),
            Column("Payload", lambda d: pretty_json(d["payload"], PREVIEW_CHARS)),
        ),
        "No dead letters.",
    ),
    WaitingSection(
        "Continuation ops in flight",
        "pending-ops",
        lambda export: list(export.get("pending_ops", [])),
        (
            Column("Id", lambda o: str(o["id"])),
            Column("Op", lambda o: f"{o['capability']}.{o['call']}"),
            Column("Continues in", lambda o: str(o["then"])),
        ),
        "No continuation op in flight.",
    ),
)


@dataclass(frozen=True)
class KvEntry:
    key: str
    size: int
    preview: str
    text: bool
    """Whether the value is UTF-8 text (else the preview is hexadecimal)."""


def kv_entries(kv: dict[str, bytes]) -> list[KvEntry]:
    entries = []
    for key, value in list(kv.items())[:SHOWN_KV_ENTRIES]:
        try:
            text = value.decode("utf-8")
            preview, is_text = (
                text[:PREVIEW_CHARS] + ("…" if len(text) > PREVIEW_CHARS else ""),
                True,
            )
        except UnicodeDecodeError:
            head = value[: PREVIEW_CHARS // 2].hex(" ")
            preview, is_text = head + (" …" if len(value) > PREVIEW_CHARS // 2 else ""), False
        entries.append(KvEntry(key, len(key.encode()) + len(value), preview, is_text))
    return entries


@dataclass
class AgentView:
    address: AgentAddress
    status: AgentStatus
    manifest: Manifest | None
    """None when the agent's kind is not deployed."""
    export: dict[str, Any]
    turns: list[TurnRecord]
    usage: list[UsageRow]
    waiting: list[tuple[WaitingSection, list[dict[str, Any]]]]
    kv: list[KvEntry]
    kv_total: int


def held_reasons(reasons: Sequence[str]) -> list[str]:
    return [HELD_REASONS.get(r, r) for r in reasons]
