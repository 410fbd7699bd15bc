"""OpenTelemetry built in: traces, metrics and logs of every agent turn.

What the host records:

- **Traces.** A span per turn (``roost.turn``), children for the activation
  (``roost.activate``) and for every capability host call (``kv.get``, ``llm.chat``, ...),
  and client spans for the async ops that leave the process: ``chat {model}`` following the
  GenAI semantic conventions, and ``{METHOD}`` for ``http.fetch``. An HTTP request to the API
  is a server span whose W3C ``traceparent`` (if any) is its parent, and it is the parent
  of the turns that handle its event; outbound LLM and HTTP requests carry ``traceparent``.
  Host calls and ops do not run where the turn started (a worker thread, a trio task), so
  the turn's span travels with the turn (``TurnContext.trace``) and is made the parent
  explicitly, never found through ambient context.
- **Metrics.** :class:`HostMetrics` keeps plain counters and fixed-bucket histograms
  whether or not OpenTelemetry is on: ``/metrics`` renders them. With a meter they are
  also OpenTelemetry instruments (histograms recorded as they happen, counters and gauges
  observed from the host's latest statistics).
- **Logs.** A guest's ``ctx.log`` line becomes a log record carrying the turn's trace and
  span ids; host log records (the ``roost`` loggers) are exported with their structured
  fields, and :class:`JsonLogFormatter` writes them as JSON lines.

Off by default: with no providers every hook is one ``is None`` test, and
:meth:`Telemetry.from_config` builds providers only for the signals ``OTEL_*`` enables.
Tests install in-memory exporters with :func:`in_memory_telemetry`.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import importlib.metadata
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    ConsoleLogRecordExporter,
    InMemoryLogRecordExporter,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    InMemoryMetricReader,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .config import TelemetryConfig

if TYPE_CHECKING:
    from .address import AgentAddress

INSTRUMENTATION = "roost"
DURATION_BOUNDS_S: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Bucket bounds (seconds) of the wake and turn latency histograms."""
GENAI_DURATION_BOUNDS_S: tuple[float, ...] = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
"""Bucket bounds (seconds) of ``gen_ai.client.operation.duration``, as the GenAI semantic
conventions advise."""

W3C = TraceContextTextMapPropagator()
"""Incoming and outgoing trace context: W3C ``traceparent``/``tracestate``."""

_SEVERITY = {
    "debug": SeverityNumber.DEBUG,
    "info": SeverityNumber.INFO,
    "warn": SeverityNumber.WARN,
    "error": SeverityNumber.ERROR,
}
_HOST_LOGGER = "roost"
_GUEST_LOGGER = "roost.guest"


def _version() -> str:
    try:
        return importlib.metadata.version("roost")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# -- metrics --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """One histogram at a moment: ``counts[i]`` observations fell at or below
    ``bounds[i]`` (and above the previous bound); the last count is past every bound."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float
    count: int


class _Histogram:
    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = DURATION_BOUNDS_S) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(self.bounds, tuple(self.counts), self.total, sum(self.counts))


class _GcPauses:
    """How long each of Python's cyclic garbage collections paused the process, by
    generation: a full (generation 2) pass over a large heap stops every request. One per
    process, fed by a ``gc`` callback (on whichever thread collects, holding the GIL)."""

    def __init__(self) -> None:
        self.by_generation = {str(g): _Histogram() for g in range(3)}
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            pause = time.perf_counter() - self._started
            self.by_generation[str(info["generation"])].observe(pause)

    def snapshot(self) -> dict[str, HistogramSnapshot]:
        return {g: h.snapshot() for g, h in self.by_generation.items()}


_GC_PAUSES: _GcPauses | None = None


def gc_pause_seconds() -> dict[str, HistogramSnapshot]:
    """Pauses of the cyclic garbage collector by generation, since the first call."""
    global _GC_PAUSES
    if _GC_PAUSES is None:
        _GC_PAUSES = _GcPauses()
    return _GC_PAUSES.snapshot()


@dataclass(frozen=True)
class HostStatistics:
    """Counts since the host opened (``resident`` and ``hibernated`` are current)."""

    resident: int
    """Agents with an instance in memory."""
    hibernated: int
    """Agents with committed state and no instance in memory."""
    activations: int
    """Instances created (first events and wakes from hibernation)."""
    hibernations: int
    """Instances dropped after idling or eviction."""
    turns: int
    in_flight: int
    kinds: int
    denied: dict[str, int] = field(default_factory=dict)
    """Capability calls refused (outside the grant, over a quota or budget), by
    ``kind/capability``."""
    traps: dict[str, int] = field(default_factory=dict)
    """Failed guest turns (trap, CPU deadline, memory, limit, ABI), by ``kind/trap``."""
    llm_tokens: dict[str, int] = field(default_factory=dict)
    """LLM tokens used, by ``kind/input`` and ``kind/output``."""
    mailbox_depth: dict[str, int] = field(default_factory=dict)
    """Events queued in resident agents' mailboxes, by kind."""
    held_resident: dict[str, int] = field(default_factory=dict)
    """Agents resident past their idle timeout, by what holds them (see
    :attr:`AgentStatus.held_resident_by`)."""
    rejected: dict[int, int] = field(default_factory=dict)
    """Requests the HTTP API refused for backpressure, by status (429, 503)."""
    websockets_open: int = 0
    wake_seconds: dict[str, HistogramSnapshot] = field(default_factory=dict)
    """Activation latency (load state, instantiate, init), by kind."""
    turn_seconds: dict[str, HistogramSnapshot] = field(default_factory=dict)
    """Turn latency (worker wait, guest call, commit), by kind."""
    gc_pause_seconds: dict[str, HistogramSnapshot] = field(default_factory=dict)
    """Pauses of Python's cyclic garbage collector (the whole process), by generation."""
    dead_letters: dict[str, int] = field(default_factory=dict)
    """Deliveries held in dead letters (they kept failing), by kind."""
    llm_calls: dict[str, int] = field(default_factory=dict)
    """Calls to model providers, by ``provider|model|outcome`` (``ok``, or the error's
    type: an HTTP status, ``timeout``, ``unreachable``, ``stream_error``, ...); a call that
    fell back counts once per provider tried."""
    llm_call_seconds: dict[str, HistogramSnapshot] = field(default_factory=dict)
    """Latency of calls to model providers (failed ones included), by ``provider|model``."""
    cooling_down: int = 0
    """Agents whose events are refused now, for running past their CPU deadline."""
    cool_downs: dict[str, int] = field(default_factory=dict)
    """Agents cooled down for running past their CPU deadline, by kind."""


@dataclass(frozen=True, slots=True)
class TurnRecord:
    """One turn of one agent, as :class:`TurnRecorder` keeps it."""

    at: float
    """Unix time the turn ended."""
    export: str
    """The guest export it called: ``on-event`` (an event's first turn) or ``on-complete``
    (an awaited op's result)."""
    outcome: str
    """``ok`` (committed), or why it failed: the :func:`trap_name` of its error
    (``guest_trap``, ``cpu_deadline_exceeded``, ``turn_slice_exceeded``, ...)."""
    seconds: float
    """Latency: waiting for a worker, the guest call, the commit."""


TURNS_PER_AGENT = 20
RECORDED_TURNS = 20_000


class TurnRecorder:
    """The host's most recent turns, in bounded memory: one ring of the last ``capacity``
    turns of any agent (about 150 bytes a turn: 3 MB at the default), nothing per agent.
    In memory only: a restart starts it empty. Used from the trio thread only.

    Listeners (the console's live event stream) see each turn of one agent as it ends."""

    def __init__(
        self,
        *,
        capacity: int = RECORDED_TURNS,
        per_agent: int = TURNS_PER_AGENT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if capacity < 1 or per_agent < 1:
            raise ValueError("a turn recorder keeps at least one turn")
        self._per_agent = per_agent
        self._clock = clock
        self._ring: deque[tuple[AgentAddress, TurnRecord]] = deque(maxlen=capacity)
        self._listeners: dict[AgentAddress, list[Callable[[TurnRecord], None]]] = {}

    def record(self, address: AgentAddress, export: str, outcome: str, seconds: float) -> None:
        turn = TurnRecord(self._clock(), export, outcome, seconds)
        self._ring.append((address, turn))
        listeners = self._listeners.get(address)
        if listeners:
            for listener in listeners:
                listener(turn)

    def turns(self, address: AgentAddress) -> list[TurnRecord]:
        """The agent's recorded turns (at most ``per_agent``), newest first; none if it was
        not active lately."""
        found: list[TurnRecord] = []
        for recorded, turn in reversed(self._ring):
            if recorded == address:
                found.append(turn)
                if len(found) >= self._per_agent:
                    break
        return found

    def recent(self, limit: int, kind: str | None = None) -> list[tuple[AgentAddress, TurnRecord]]:
        """Up to ``limit`` agents (of ``kind``, or any) with their last turn, the most
        recently active first."""
        found: dict[AgentAddress, TurnRecord] = {}
        for address, turn in reversed(self._ring):
            if len(found) >= limit:
                break
            if address not in found and (kind is None or address.kind == kind):
                found[address] = turn
        return list(found.items())

    def __len__(self) -> int:
        """Agents with recorded turns."""
        return len({address for address, _ in self._ring})

    def listen(
        self, address: AgentAddress, listener: Callable[[TurnRecord], None]
    ) -> Callable[[], None]:
        """Call ``listener`` with each turn of ``address`` as it ends (on the trio thread;
        it must not block). Returns the function that stops it."""
        listeners = self._listeners.setdefault(address, [])
        listeners.append(listener)

        def stop() -> None:
            if listener in listeners:
                listeners.remove(listener)
            if not listeners and self._listeners.get(address) is listeners:
                del self._listeners[address]

        return stop


def trap_name(error: BaseException) -> str:
    """``CpuDeadlineExceeded`` -> ``cpu_deadline_exceeded``: the ``trap`` label."""
    name = type(error).__name__
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


@dataclass(frozen=True, slots=True)
class LlmCall:
    """One call to one model provider, as :meth:`HostMetrics.llm_call` records it."""

    kind: str
    """The kind of the agent that made it."""
    provider: str
    """The host's name for the provider (``gen_ai.provider.name``)."""
    operation: str
    """``chat`` or ``embeddings`` (``gen_ai.operation.name``)."""
    model: str
    """The model the agent asked for (``gen_ai.request.model``)."""
    seconds: float
    error_type: str | None = None
    """None when it succeeded; else what failed (``error.type``)."""
    response_model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    estimated: bool = False
    """The provider reported no usage: the tokens are estimated from the text."""
    server_address: str | None = None
    server_port: int | None = None


class HostMetrics:
    """The host's own counters and histograms, kept whether or not OpenTelemetry is on,
    and the recent turns of recently active agents (:attr:`turns`).

    Used from the trio thread only (capability denials are counted by the capabilities).
    With a meter, each histogram observation is also recorded on an OpenTelemetry
    histogram."""

    def __init__(self, meter: Meter | None = None, turns: TurnRecorder | None = None) -> None:
        self.turns = turns or TurnRecorder()
        """The last turns of the most recently active agents."""
        self._wake: dict[str, _Histogram] = {}
        self._turn: dict[str, _Histogram] = {}
        self._traps: dict[tuple[str, str], int] = {}
        self._tokens: dict[tuple[str, str], int] = {}
        self._llm_calls: dict[tuple[str, str, str], int] = {}
        self._llm_seconds: dict[tuple[str, str], _Histogram] = {}
        self._rejected: dict[int, int] = {429: 0, 503: 0}
        self._dead_letters: dict[str, int] = {}
        self._cool_downs: dict[str, int] = {}
        self.websockets_open = 0
        self._otel_wake = self._otel_turn = self._otel_tokens = self._otel_llm = None
        if meter is not None:
            self._otel_wake = meter.create_histogram(
                "roost.wake.duration",
                unit="s",
                description="Activation of an agent: load its state, instantiate, init.",
                explicit_bucket_boundaries_advisory=DURATION_BOUNDS_S,
            )
            self._otel_turn = meter.create_histogram(
                "roost.turn.duration",
                unit="s",
                description="One turn: waiting for a worker, the guest call, the commit.",
                explicit_bucket_boundaries_advisory=DURATION_BOUNDS_S,
            )
            self._otel_tokens = meter.create_histogram(
                "gen_ai.client.token.usage",
                unit="{token}",
                description="Tokens used per LLM call (GenAI semantic conventions).",
            )
            self._otel_llm = meter.create_histogram(
                "gen_ai.client.operation.duration",
                unit="s",
                description="Duration of calls to model providers (GenAI semantic conventions).",
                explicit_bucket_boundaries_advisory=GENAI_DURATION_BOUNDS_S,
            )

    def observe_wake(self, kind: str, seconds: float) -> None:
        histogram = self._wake.get(kind)
        if histogram is None:
            histogram = self._wake[kind] = _Histogram()
        histogram.observe(seconds)
        if self._otel_wake is not None:
            self._otel_wake.record(seconds, {"agent.kind": kind})

    def observe_turn(
        self, address: AgentAddress, seconds: float, export: str, outcome: str
    ) -> None:
        """One turn ended: ``outcome`` is ``ok`` or the :func:`trap_name` of its error."""
        kind = address.kind
        histogram = self._turn.get(kind)
        if histogram is None:
            histogram = self._turn[kind] = _Histogram()
        histogram.observe(seconds)
        self.turns.record(address, export, outcome, seconds)
        if self._otel_turn is not None:
            self._otel_turn.record(seconds, {"agent.kind": kind})

    def trap(self, kind: str, error: BaseException) -> None:
        key = (kind, trap_name(error))
        self._traps[key] = self._traps.get(key, 0) + 1

    def llm_call(self, call: LlmCall) -> None:
        """One call to one model provider ended (a call that fell back is one per provider
        tried)."""
        outcome = call.error_type or "ok"
        key = (call.provider, call.model, outcome)
        self._llm_calls[key] = self._llm_calls.get(key, 0) + 1
        histogram = self._llm_seconds.get(key[:2])
        if histogram is None:
            histogram = self._llm_seconds[key[:2]] = _Histogram(GENAI_DURATION_BOUNDS_S)
        histogram.observe(call.seconds)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": call.operation,
            "gen_ai.provider.name": call.provider,
            "gen_ai.request.model": call.model,
            "agent.kind": call.kind,
        }
        if call.server_address:
            attributes["server.address"] = call.server_address
            attributes["server.port"] = call.server_port
        if call.response_model:
            attributes["gen_ai.response.model"] = call.response_model
        if call.error_type is not None:
            attributes["error.type"] = call.error_type
        if self._otel_llm is not None:
            self._otel_llm.record(call.seconds, attributes)
        if call.error_type is not None:
            return
        for token_type, count in (("input", call.input_tokens), ("output", call.output_tokens)):
            if token_type == "output" and call.operation == "embeddings":
                continue
            tokens_key = (call.kind, token_type)
            self._tokens[tokens_key] = self._tokens.get(tokens_key, 0) + count
            if self._otel_tokens is not None:
                self._otel_tokens.record(
                    count,
                    {
                        **attributes,
                        "gen_ai.token.type": token_type,
                        "roost.llm.usage_estimated": call.estimated,
                    },
                )

    def cool_down(self, kind: str) -> None:
        """An agent of ``kind`` ran past its CPU deadline and was cooled down."""
        self._cool_downs[kind] = self._cool_downs.get(kind, 0) + 1

    def cool_downs(self) -> dict[str, int]:
        """Cool-downs of agents that ran past their CPU deadline, by kind."""
        return dict(self._cool_downs)

    def dead_letter(self, kind: str) -> None:
        """A delivery to an agent of ``kind`` gave up and became a dead letter."""
        self._dead_letters[kind] = self._dead_letters.get(kind, 0) + 1

    def dead_letters(self) -> dict[str, int]:
        """Deliveries moved to dead letters since the host opened, by kind."""
        return dict(self._dead_letters)

    def rejected(self, status: int) -> None:
        """A request refused for backpressure (429 or 503)."""
        self._rejected[status] = self._rejected.get(status, 0) + 1

    # -- snapshots, for HostStatistics ----------------------------------------------------
    def wake_seconds(self) -> dict[str, HistogramSnapshot]:
        return {kind: h.snapshot() for kind, h in sorted(self._wake.items())}

    def turn_seconds(self) -> dict[str, HistogramSnapshot]:
        return {kind: h.snapshot() for kind, h in sorted(self._turn.items())}

    def traps(self) -> dict[str, int]:
        return {f"{kind}/{trap}": n for (kind, trap), n in sorted(self._traps.items())}

    def tokens(self) -> dict[str, int]:
        return {f"{kind}/{t}": n for (kind, t), n in sorted(self._tokens.items())}

    def llm_calls(self) -> dict[str, int]:
        return {"|".join(key): n for key, n in sorted(self._llm_calls.items())}

    def llm_call_seconds(self) -> dict[str, HistogramSnapshot]:
        return {"|".join(key): h.snapshot() for key, h in sorted(self._llm_seconds.items())}

    def rejections(self) -> dict[int, int]:
        return dict(sorted(self._rejected.items()))


# -- traces ---------------------------------------------------------------------------------


class TurnTrace:
    """The span of one turn, carried by its ``TurnContext`` to wherever the turn's work
    runs: worker threads (host calls) and trio tasks (async ops)."""

    __slots__ = ("_telemetry", "context", "recording", "span")

    def __init__(self, telemetry: Telemetry, span: Span) -> None:
        self._telemetry = telemetry
        self.span = span
        self.context = trace.set_span_in_context(span)
        self.recording = span.is_recording()
        """False when the sampler dropped the turn: its children cost nothing then."""

    def child(self, name: str, attributes: dict[str, Any] | None = None) -> Span:
        """Start (not activate) a span under the turn; the caller ends it. A turn that is
        not sampled hands back its own non-recording span, on which everything is a no-op."""
        if not self.recording:
            return self.span
        tracer = self._telemetry.tracer
        assert tracer is not None
        return tracer.start_span(name, context=self.context, attributes=attributes)

    @contextlib.contextmanager
    def client_span(self, name: str, attributes: dict[str, Any]) -> Iterator[Span]:
        """A client span under the turn for an op's outbound call; it is the current span
        inside the block, and an exception leaving the block marks it failed."""
        tracer = self._telemetry.tracer
        assert tracer is not None
        with tracer.start_as_current_span(
            name, context=self.context, kind=SpanKind.CLIENT, attributes=attributes
        ) as span:
            yield span

    @contextlib.contextmanager
    def activated(self) -> Iterator[None]:
        """Make the turn's span current here (a worker thread, an op's task), so that log
        records and nested work made here are attributed to it."""
        token = otel_context.attach(self.context)
        try:
            yield
        finally:
            otel_context.detach(token)

    def log(self, level: str, message: str, address: AgentAddress) -> None:
        """A guest log line as a log record correlated with this turn."""
        logger = self._telemetry.guest_logger
        if logger is None:
            return
        logger.emit(
            context=self.context,
            severity_number=_SEVERITY.get(level, SeverityNumber.INFO),
            severity_text=level.upper(),
            body=message,
            attributes={"agent.kind": address.kind, "agent.id": address.id},
        )

    def end(self, error: BaseException | None, attributes: dict[str, Any]) -> None:
        if self.recording:
            end_span(self.span, error, attributes)


def end_span(span: Span, error: BaseException | None, attributes: dict[str, Any]) -> None:
    """Set the final attributes and the outcome, then end ``span``."""
    span.set_attributes(attributes)
    if error is None:
        span.set_attribute("roost.outcome", "ok")
    else:
        fail_span(span, error)
    span.end()


def fail_span(span: Span, error: BaseException | str) -> None:
    kind = error if isinstance(error, str) else type(error).__name__
    span.set_attribute("roost.outcome", "error")
    span.set_attribute("error.type", kind)
    span.set_status(Status(StatusCode.ERROR, str(error)[:200]))


def inject_traceparent(headers: MutableMapping[str, str], span: Span | None) -> None:
    """Add W3C ``traceparent`` (and ``tracestate``) for ``span`` to outgoing headers."""
    if span is not None:
        W3C.inject(headers, context=trace.set_span_in_context(span))


# -- the providers --------------------------------------------------------------------------


class Telemetry:
    """OpenTelemetry providers for one host, or none at all (:meth:`off`).

    A signal without a provider costs one ``is None`` test where it would be recorded.
    """

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        logger_provider: LoggerProvider | None = None,
        export_host_logs: bool = False,
        refresh_interval_s: float = 10.0,
    ) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.logger_provider = logger_provider
        self.tracer: Tracer | None = (
            None
            if tracer_provider is None
            else tracer_provider.get_tracer(INSTRUMENTATION, _version())
        )
        self.meter: Meter | None = (
            None
            if meter_provider is None
            else meter_provider.get_meter(INSTRUMENTATION, _version())
        )
        self.guest_logger = (
            None if logger_provider is None else logger_provider.get_logger(_GUEST_LOGGER)
        )
        self.refresh_interval_s = refresh_interval_s
        """How often a host refreshes the statistics its observable metrics report."""
        self._log_handler: logging.Handler | None = None
        if logger_provider is not None and export_host_logs:
            handler = _OtelLogHandler(logger_provider)
            logging.getLogger(_HOST_LOGGER).addHandler(handler)
            self._log_handler = handler
        self._statistics: Callable[[], HostStatistics | None] | None = None

    @classmethod
    def off(cls) -> Telemetry:
        return cls()

    @classmethod
    def from_config(cls, config: TelemetryConfig) -> Telemetry:
        """Providers for the signals the ``OTEL_*`` settings enable (see
        :class:`host.config.TelemetryConfig`); :meth:`off` when none is."""
        resource = Resource.create(
            {"service.name": config.service_name, "service.version": _version()}
        )
        tracer_provider = meter_provider = logger_provider = None
        traces = config.exporter("traces")
        if traces != "none":
            tracer_provider = TracerProvider(resource=resource, sampler=_sampler(config))
            if traces == "otlp":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )

                tracer_provider.add_span_processor(
                    BatchSpanProcessor(OTLPSpanExporter(endpoint=config.otlp_endpoint("traces")))
                )
            else:
                tracer_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        metrics = config.exporter("metrics")
        if metrics != "none":
            if metrics == "otlp":
                from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                    OTLPMetricExporter,
                )

                exporter: Any = OTLPMetricExporter(endpoint=config.otlp_endpoint("metrics"))
            else:
                exporter = ConsoleMetricExporter()
            reader = PeriodicExportingMetricReader(
                exporter, export_interval_millis=config.metric_export_interval
            )
            meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
        logs = config.exporter("logs")
        if logs != "none":
            logger_provider = LoggerProvider(resource=resource)
            if logs == "otlp":
                from opentelemetry.exporter.otlp.proto.http._log_exporter import (
                    OTLPLogExporter,
                )

                logger_provider.add_log_record_processor(
                    BatchLogRecordProcessor(OTLPLogExporter(endpoint=config.otlp_endpoint("logs")))
                )
            else:
                logger_provider.add_log_record_processor(
                    SimpleLogRecordProcessor(ConsoleLogRecordExporter())
                )
        return cls(
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            logger_provider=logger_provider,
            export_host_logs=True,
            refresh_interval_s=min(config.metric_export_interval / 1000, 10.0),
        )

    @property
    def tracing(self) -> bool:
        return self.tracer is not None

    @property
    def enabled(self) -> bool:
        return (
            self.tracer_provider is not None
            or self.meter_provider is not None
            or self.logger_provider is not None
        )

    def host_metrics(self) -> HostMetrics:
        return HostMetrics(self.meter)

    # -- spans ------------------------------------------------------------------------------
    def start_turn(
        self,
        address: AgentAddress,
        event_kind: str,
        export: str,
        parent: otel_context.Context | None,
    ) -> TurnTrace:
        """The span of one turn; ``parent`` is the context the event was sent from."""
        tracer = self.tracer
        assert tracer is not None
        span = tracer.start_span(
            "roost.turn",
            context=parent if parent is not None else otel_context.Context(),
            attributes={
                "agent.kind": address.kind,
                "agent.id": address.id,
                "roost.event.type": event_kind,
                "roost.turn.export": export,
            },
        )
        return TurnTrace(self, span)

    @contextlib.contextmanager
    def server_span(
        self, method: str, target: str, headers: Iterable[tuple[bytes, bytes]]
    ) -> Iterator[Span | None]:
        """The span of one incoming API request, current inside the block. Its parent is
        the request's W3C ``traceparent``, if any."""
        tracer = self.tracer
        if tracer is None:
            yield None
            return
        carrier = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers}
        parent = W3C.extract(carrier, context=otel_context.Context())
        with tracer.start_as_current_span(
            f"{method} {target}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": target},
            record_exception=False,
            set_status_on_exception=True,
        ) as span:
            yield span

    def current_context(self) -> otel_context.Context | None:
        """The caller's trace context, to parent the turns of an event it sends."""
        return otel_context.get_current() if self.tracer is not None else None

    # -- observed metrics -------------------------------------------------------------------
    def observe_host(self, statistics: Callable[[], HostStatistics | None]) -> None:
        """Report the host's counters and gauges from ``statistics()`` (the latest
        :class:`host.HostStatistics`; the host refreshes it every ``refresh_interval_s``).
        Callbacks run on the exporter's thread, so they read only that frozen snapshot."""
        meter = self.meter
        if meter is None or self._statistics is not None:
            return
        self._statistics = statistics

        def gauge(name: str, description: str, read: Callable[[HostStatistics], Any]) -> None:
            def callback(_options: CallbackOptions) -> Iterable[Observation]:
                stats = statistics()
                return [] if stats is None else _observations(read(stats))

            meter.create_observable_gauge(name, [callback], description=description)

        def counter(name: str, description: str, read: Callable[[HostStatistics], Any]) -> None:
            def callback(_options: CallbackOptions) -> Iterable[Observation]:
                stats = statistics()
                return [] if stats is None else _observations(read(stats))

            meter.create_observable_counter(name, [callback], description=description)

        gauge("roost.agents.resident", "Agents with an instance in memory.", lambda s: s.resident)
        gauge(
            "roost.agents.hibernated",
            "Agents with committed state and no instance.",
            lambda s: s.hibernated,
        )
        gauge("roost.events.in_flight", "Events being handled.", lambda s: s.in_flight)
        gauge(
            "roost.mailbox.depth",
            "Events queued in resident agents' mailboxes, by kind.",
            lambda s: {(("agent.kind", k),): n for k, n in s.mailbox_depth.items()},
        )
        gauge(
            "roost.agents.held_resident",
            "Agents resident past their idle timeout, by what holds them.",
            lambda s: {(("reason", r),): n for r, n in s.held_resident.items()},
        )
        counter("roost.activations", "Instances created.", lambda s: s.activations)
        counter("roost.hibernations", "Instances dropped.", lambda s: s.hibernations)
        counter("roost.turns", "Committed turns.", lambda s: s.turns)
        counter(
            "roost.requests.rejected",
            "Requests refused for backpressure, by HTTP status.",
            lambda s: {(("http.response.status_code", st),): n for st, n in s.rejected.items()},
        )
        counter(
            "roost.traps",
            "Failed turns of guests (trap, deadline, memory, limit, ABI), by kind.",
            lambda s: _split_labels(s.traps, "agent.kind", "roost.trap"),
        )
        counter(
            "roost.capability.denials",
            "Capability calls refused: outside the grant, over a quota or budget.",
            lambda s: _split_labels(s.denied, "agent.kind", "roost.capability"),
        )
        counter(
            "roost.llm.tokens",
            "LLM tokens used, by kind and token type.",
            lambda s: _split_labels(s.llm_tokens, "agent.kind", "gen_ai.token.type"),
        )

    def shutdown(self) -> None:
        """Flush and stop every provider; detach the host log handler."""
        if self._log_handler is not None:
            logging.getLogger(_HOST_LOGGER).removeHandler(self._log_handler)
            self._log_handler = None
        for provider in (self.tracer_provider, self.meter_provider, self.logger_provider):
            if provider is not None:
                provider.shutdown()


def _observations(value: Any) -> list[Observation]:
    if isinstance(value, dict):
        return [Observation(n, dict(labels)) for labels, n in value.items()]
    return [Observation(value)]


def _split_labels(counts: dict[str, int], first: str, second: str) -> dict[Any, int]:
    out: dict[Any, int] = {}
    for key, n in counts.items():
        a, _, b = key.partition("/")
        out[((first, a), (second, b))] = n
    return out


def _sampler(config: TelemetryConfig) -> Sampler:
    ratio = config.traces_sampler_arg
    name = config.traces_sampler
    root: Sampler = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": TraceIdRatioBased(ratio),
    }[name.removeprefix("parentbased_")]
    return ParentBased(root) if name.startswith("parentbased_") else root


# -- tests ----------------------------------------------------------------------------------


@dataclass
class InMemoryTelemetry:
    """Telemetry whose spans, metrics and logs stay in memory, for tests."""

    telemetry: Telemetry
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    logs: InMemoryLogRecordExporter

    def shutdown(self) -> None:
        self.telemetry.shutdown()


def in_memory_telemetry(*, export_host_logs: bool = True) -> InMemoryTelemetry:
    """Every signal on, exported synchronously to in-memory exporters."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider(sampler=ALWAYS_ON)
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    readers: list[MetricReader] = [reader]
    meter_provider = MeterProvider(metric_readers=readers)
    logs = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    telemetry = Telemetry(
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        logger_provider=logger_provider,
        export_host_logs=export_host_logs,
    )
    return InMemoryTelemetry(telemetry, spans, reader, logs)


# -- host logs ------------------------------------------------------------------------------

_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _structured_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a record was given with ``extra=`` (``agent_kind``, ``agent_id``, ...)."""
    return {
        key: value if isinstance(value, str | int | float | bool) else repr(value)
        for key, value in vars(record).items()
        if key not in _RECORD_FIELDS and not key.startswith("_")
    }


def _severity(levelno: int) -> SeverityNumber:
    if levelno >= logging.CRITICAL:
        return SeverityNumber.FATAL
    if levelno >= logging.ERROR:
        return SeverityNumber.ERROR
    if levelno >= logging.WARNING:
        return SeverityNumber.WARN
    if levelno >= logging.INFO:
        return SeverityNumber.INFO
    return SeverityNumber.DEBUG


class _OtelLogHandler(logging.Handler):
    """Host log records (the ``roost`` loggers, except guest lines, which the ``log``
    capability emits itself) as OpenTelemetry log records with their structured fields,
    in the current span's context."""

    def __init__(self, provider: LoggerProvider) -> None:
        super().__init__()
        self._provider = provider

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(_GUEST_LOGGER):
            return
        try:
            attributes = _structured_fields(record)
            attributes["code.function.name"] = record.funcName
            if record.exc_info and record.exc_info[1] is not None:
                attributes["exception.type"] = type(record.exc_info[1]).__name__
                attributes["exception.message"] = str(record.exc_info[1])
            self._provider.get_logger(record.name).emit(
                timestamp=int(record.created * 1e9),
                severity_number=_severity(record.levelno),
                severity_text=record.levelname,
                body=record.getMessage(),
                attributes=attributes,
            )
        except Exception:
            self.handleError(record)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the record's structured
    fields (``extra=``, such as ``agent_kind``/``agent_id``) and, inside a span, its trace
    and span ids."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_structured_fields(record))
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            entry["trace_id"] = f"{span_context.trace_id:032x}"
            entry["span_id"] = f"{span_context.span_id:016x}"
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)
