"""Host settings: typed, frozen, validated at load. The only module that reads the environment.

Every setting can come from a ``ROOST_*`` environment variable (``ROOST_DATA_DIR``,
``ROOST_MAX_RESIDENT_AGENTS``, ...) or be passed to :class:`HostConfig` directly.
Telemetry follows OpenTelemetry's standard ``OTEL_*`` variables (:class:`TelemetryConfig`).
"""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigError

DEFAULT_DATA_DIR = Path(".roost")
DEFAULT_MAX_RESIDENT_AGENTS = 4_000
DEFAULT_WORKER_THREADS = 4
DEFAULT_EPOCH_TICK_MS = 10
DEFAULT_INLINE_SLICE_MS = 20
DEFAULT_MAX_IN_FLIGHT = 10_000
DEFAULT_MAX_CPU_DEADLINE_MS = 5_000
DEFAULT_MAX_INSTANCE_MEMORY_BYTES = 1024 * 1024 * 1024
DEFAULT_MAX_ACTIVATIONS_PER_S = 500.0
DEFAULT_MAX_ASKS_IN_FLIGHT = 8
DEFAULT_QUEUE_TARGET_MS = 50.0
DEFAULT_DEADLINE_COOL_DOWN_S = 10.0
DEFAULT_IDEMPOTENCY_RETENTION_S = 24 * 3600.0
DEFAULT_MAX_DELIVERY_ATTEMPTS = 10
DEFAULT_LEASE_TTL_S = 10.0
DEFAULT_APPROVAL_RETENTION_S = 30 * 24 * 3600.0
DEFAULT_APPROVAL_POLL_S = 2.0
DEFAULT_LLM_CONNECT_TIMEOUT_S = 10.0
DEFAULT_LLM_FIRST_TOKEN_TIMEOUT_S = 60.0
DEFAULT_LLM_TOTAL_TIMEOUT_S = 300.0
ANY_MODEL = "*"
"""In a provider's ``models``: it serves any model name (the ``ROOST_LLM_BASE_URL``
shorthand's provider)."""
SHORTHAND_PROVIDER = "default"
"""The name of the provider ``ROOST_LLM_BASE_URL`` and ``ROOST_LLM_API_KEY`` describe."""


class LlmProvider(BaseModel):
    """One OpenAI-compatible model provider (docs/capabilities.md, "Providers").

    ``models`` lists the model names agents may ask it for; a table maps a name agents use
    to the provider's own (``{"fast" = "gpt-4o-mini"}``), ``"*"`` serves any name. The API
    key is ``api_key``, or read from the environment variable ``api_key_env`` when the
    settings load (so a providers file need not hold secrets). The timeouts bound
    connecting, the wait for the first token (for a request that is not streamed: for the
    whole answer's headers) and the whole call."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,39}$")
    base_url: str = Field(pattern=r"^https?://")
    api_key: str | None = Field(None, repr=False)
    api_key_env: str | None = None
    models: dict[str, str] = Field(min_length=1)
    connect_timeout_s: float = Field(default=DEFAULT_LLM_CONNECT_TIMEOUT_S, gt=0)
    first_token_timeout_s: float = Field(default=DEFAULT_LLM_FIRST_TOKEN_TIMEOUT_S, gt=0)
    total_timeout_s: float = Field(default=DEFAULT_LLM_TOTAL_TIMEOUT_S, gt=0)

    @field_validator("models", mode="before")
    @classmethod
    def _models_as_table(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return {str(name): str(name) for name in value}
        return value

    @model_validator(mode="after")
    def _key_from_environment(self) -> LlmProvider:
        if self.api_key_env is not None:
            if self.api_key is not None:
                raise ValueError("set api_key or api_key_env, not both")
            key = os.environ.get(self.api_key_env)
            if not key:
                raise ValueError(f"api_key_env names {self.api_key_env}, which is not set")
            object.__setattr__(self, "api_key", key)
        if self.total_timeout_s < self.first_token_timeout_s:
            raise ValueError("total_timeout_s must be at least first_token_timeout_s")
        return self

    def serves(self, model: str) -> bool:
        return model in self.models or ANY_MODEL in self.models

    def upstream_model(self, model: str) -> str:
        """The provider's own name for ``model``."""
        return self.models.get(model, model)


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "roost"


class HostConfig(BaseSettings):
    """Settings for one host process."""

    model_config = SettingsConfigDict(env_prefix="ROOST_", extra="forbid", frozen=True)

    data_dir: Path = DEFAULT_DATA_DIR
    """Where the embedded SQLite store lives (``roost.db``)."""
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    """Compiled components and build outputs, keyed by content hash."""
    max_resident_agents: int = Field(DEFAULT_MAX_RESIDENT_AGENTS, ge=1)
    """Instances kept in memory; past it the least recently used idle agent hibernates.
    A resident Python agent costs about 2 MiB of physical memory (see docs/design.md)."""
    worker_threads: int = Field(DEFAULT_WORKER_THREADS, ge=1)
    """Threads that run wasm turns concurrently."""
    epoch_tick_ms: int = Field(DEFAULT_EPOCH_TICK_MS, ge=1)
    """Granularity of CPU deadlines."""
    inline_slice_ms: int = Field(DEFAULT_INLINE_SLICE_MS, ge=0)
    """Native (dense-profile) agents run the first turn of each event on the event loop,
    without a worker-thread trip, for at most this long (rounded up to epoch ticks, plus
    up to one tick). A turn that runs longer is stopped, discarded and run again on a worker
    thread, and that agent's turns stay on worker threads until it hibernates. 0 runs every
    turn on a worker thread."""
    max_in_flight: int = Field(DEFAULT_MAX_IN_FLIGHT, ge=1)
    """Events accepted host-wide before new ones get Overloaded (a backstop: admission
    normally sheds load earlier, by queueing delay; see ``queue_target_ms``)."""
    queue_target_ms: float = Field(DEFAULT_QUEUE_TARGET_MS, gt=0)
    """Admission by queueing delay: while events wait longer than this to start, a share
    of new events, growing with the excess, is refused with Overloaded (503, Retry-After),
    so that the wait settles near this target (a PIE controller, RFC 8033)."""
    queue_interval_ms: float = Field(15.0, gt=0)
    """How often the share of events refused is updated from the mean wait of the events
    that started in the interval (see queue_target_ms)."""
    max_cpu_deadline_ms: int = Field(DEFAULT_MAX_CPU_DEADLINE_MS, ge=10)
    """The longest CPU deadline a kind may ask for (``limits.cpu_deadline_ms``)."""
    max_instance_memory_bytes: int = Field(DEFAULT_MAX_INSTANCE_MEMORY_BYTES, ge=1024 * 1024)
    """The largest linear memory a kind may ask for (``limits.max_memory_bytes``)."""
    max_host_memory_bytes: int | None = Field(None, ge=16 * 1024 * 1024)
    """New activations are refused (Overloaded) while the process uses more memory than
    this, after hibernating idle agents to make room. None: three quarters of the
    machine's memory."""
    max_activations_per_s: float = Field(DEFAULT_MAX_ACTIVATIONS_PER_S, gt=0)
    """New instances of one kind per second (a burst of as many is allowed); past it
    events for agents of that kind that are not resident get Overloaded."""
    max_asks_in_flight: int = Field(DEFAULT_MAX_ASKS_IN_FLIGHT, ge=1)
    """Asks running at once at each depth of the chains of asks one agent began (its asks,
    the asks of the agents it asked, ...); more wait for a slot, first come first served,
    within their timeout. Asks are never refused for load: this keeps one agent's asks,
    fanning out and asking again, from flooding the host with activations and turns."""
    deadline_cool_down_s: float = Field(DEFAULT_DEADLINE_COOL_DOWN_S, ge=0)
    """An agent whose turn ran past its CPU deadline has its events refused (429 with
    Retry-After) for this long, doubling each time it does it again. 0: never (``roost
    dev`` and ``roost.testing``, where a developer runs the agent again at once)."""
    llm_providers: tuple[LlmProvider, ...] = ()
    """The model providers of the llm capability, in the order calls fall back through
    them (``ROOST_LLM_PROVIDERS``, a JSON list; or read from ``llm_providers_file``)."""
    llm_providers_file: Path | None = None
    """A TOML file of ``[[providers]]`` tables (:class:`LlmProvider`), read when the
    settings load; exclusive with ``llm_providers``."""
    llm_base_url: str | None = None
    """Shorthand for one more provider, named ``default``, that serves any model: an
    OpenAI-compatible endpoint (e.g. ``https://api.openai.com/v1`` or a local
    vLLM/Ollama/llama.cpp server), tried after ``llm_providers``."""
    llm_api_key: str | None = Field(None, repr=False)
    """Sent as the bearer token to ``llm_base_url``; guests never see it."""
    http_allow_private: bool = False
    """Let the http capability reach loopback/private addresses (development only)."""
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    """NORMAL survives a process kill; FULL also survives power loss, at a write cost."""
    idempotency_retention_s: float = Field(DEFAULT_IDEMPOTENCY_RETENTION_S, gt=0)
    """How long the replies recorded under an idempotency key are kept: a retry later than
    this is handled as a new message. Pruned periodically."""
    max_delivery_attempts: int = Field(DEFAULT_MAX_DELIVERY_ATTEMPTS, ge=1)
    """Attempts at a timer, message or continuation whose handler keeps failing before it
    moves to the agent's dead letters."""
    store_url: str | None = None
    """``postgresql://USER:PASS@HOST:PORT/DB``: keep state in that PostgreSQL database,
    which several hosts may share (docs/cluster.md). Unset: SQLite under ``data_dir``."""
    host_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    """This host's name among the hosts sharing a store. A host restarted under the same
    name takes back the agents it served at once, instead of after their leases lapse."""
    lease_ttl_s: float = Field(DEFAULT_LEASE_TTL_S, gt=0, le=600)
    """How long an agent's lease lasts unless renewed (renewed every third of it): on a
    shared store, how long the agents of a host that died wait before another serves them."""
    advertise_url: str | None = None
    """The URL other hosts reach this one at (forwarded events); default: where it listens."""
    approval_retention_s: float = Field(DEFAULT_APPROVAL_RETENTION_S, gt=0)
    """How long a decided approval is kept (in the agent's export, the API's list of its
    approvals) before it is pruned. Waiting ones are kept until decided or expired."""
    approval_poll_s: float = Field(DEFAULT_APPROVAL_POLL_S, gt=0, le=60)
    """On a shared (PostgreSQL) store: how often an op waiting for a person's decision reads
    it again, so that a decision taken through another host reaches it."""

    @field_validator("host_id")
    @classmethod
    def _plain_host_id(cls, value: str) -> str:
        if not value or "/" in value or not value.isprintable() or len(value) > 100:
            raise ValueError("1-100 printable characters, no '/'")
        return value

    @model_validator(mode="before")
    @classmethod
    def _read_providers_file(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("llm_providers_file") in (None, ""):
            return data
        if data.get("llm_providers"):
            raise ValueError("set llm_providers or llm_providers_file, not both")
        path = Path(data["llm_providers_file"])
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"cannot read llm_providers_file {path}: {exc}") from None
        unknown = sorted(set(document) - {"providers"})
        if unknown:
            raise ValueError(f"{path}: unknown keys {', '.join(unknown)}; expected [[providers]]")
        return {**data, "llm_providers": document.get("providers", [])}

    @model_validator(mode="after")
    def _check_providers(self) -> HostConfig:
        names = [p.name for p in self.llm_providers]
        if self.llm_base_url:
            names.append(SHORTHAND_PROVIDER)
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"llm provider names must be unique: {', '.join(duplicates)}")
        return self

    @property
    def database_path(self) -> Path:
        return self.data_dir / "roost.db"

    def providers(self) -> tuple[LlmProvider, ...]:
        """Every model provider, in fallback order: ``llm_providers``, then the
        ``llm_base_url`` shorthand (named ``default``, serving any model)."""
        if not self.llm_base_url:
            return self.llm_providers
        shorthand = LlmProvider(
            name=SHORTHAND_PROVIDER,
            base_url=self.llm_base_url,
            api_key=self.llm_api_key,
            models={ANY_MODEL: ANY_MODEL},
        )
        return (*self.llm_providers, shorthand)


_S = TypeVar("_S", bound=BaseSettings)


def _load(cls: type[_S], what: str, overrides: dict[str, object], env_prefix: str = "") -> _S:
    """Validated settings of ``cls``, or a ConfigError naming every bad setting."""
    try:
        return cls(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(f"{_setting(e['loc'], env_prefix)}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid {what} settings: {problems}") from None


def _setting(loc: tuple[int | str, ...], env_prefix: str) -> str:
    """A setting's name as the user wrote it: a field name, or ``OTEL_NAME`` for env vars."""
    name = ".".join(str(part) for part in loc)
    return f"{env_prefix}{name.upper()}" if env_prefix else name


def load_config(**overrides: object) -> HostConfig:
    """Settings from the environment, with ``overrides`` taking precedence."""
    return _load(HostConfig, "host", overrides)


DEFAULT_PORT = 8470
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_TOKEN_TTL_S = 24 * 3600
DEFAULT_GRACEFUL_TIMEOUT_S = 30.0
DEFAULT_SSE_KEEPALIVE_S = 15.0
DEFAULT_KEEP_ALIVE_TIMEOUT_S = 75.0
"""Longer than a chat user's pause between messages (the density load test thinks 10 to
30 s), as nginx's default (75 s): a session's messages share one connection instead of
each paying a new one (hypercorn's own default, 5 s, closed nearly every one)."""
DEFAULT_PROXY_SLOTS = 32
"""Requests doing work that the proxy sends a host at once (HAProxy's ``maxconn``); with
the agent check, at most this many, fewer for events that take longer."""


class ServerConfig(BaseSettings):
    """Settings of ``roost serve`` (the HTTP API), from flags or ``ROOST_*`` variables."""

    model_config = SettingsConfigDict(env_prefix="ROOST_", extra="ignore", frozen=True)

    bind_host: str = "127.0.0.1"
    """Address to listen on."""
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    """Port to listen on (0 picks a free one)."""
    secret: str | None = None
    """Key that signs per-agent tokens; generated and kept in the data dir when unset."""
    admin_token: str | None = None
    """Bearer token for admin calls; generated and kept in the data dir when unset."""
    dev: bool = False
    """Disable auth for local development; only allowed on a loopback address."""
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1024)
    """Largest request body accepted (413 past it); deploy uploads may be 64x larger."""
    graceful_timeout_s: float = Field(DEFAULT_GRACEFUL_TIMEOUT_S, ge=0)
    """How long shutdown waits for in-flight requests after the first signal."""
    keep_alive_timeout_s: float = Field(DEFAULT_KEEP_ALIVE_TIMEOUT_S, gt=0)
    """How long an idle client connection is kept open for its next request."""
    default_token_ttl_s: int = Field(DEFAULT_TOKEN_TTL_S, ge=1)
    sse_keepalive_s: float = Field(DEFAULT_SSE_KEEPALIVE_S, gt=0)
    """A message's event stream sends a ``: keep-alive`` comment when it had nothing to
    send for this long (its handler waits on a model, a person), so proxies do not cut it."""
    proxy_agent_port: int | None = Field(None, ge=0, le=65535)
    """Where this host answers HAProxy's agent check (``roost.api.proxy_agent``); unset:
    it does not."""
    proxy_slots: int = Field(DEFAULT_PROXY_SLOTS, ge=1)
    """Requests doing work the proxy may send at once: at most this many, fewer as the
    host's CPU time per event grows (``roost.api.proxy_agent``); those waiting on ops come
    on top."""


def load_server_config(**overrides: object) -> ServerConfig:
    """Server settings from the environment, with ``overrides`` (flags) taking precedence."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return _load(ServerConfig, "server", given)


class LogSettings(BaseSettings):
    """How the ``roost`` command writes host logs: ``ROOST_LOG_FORMAT=json`` for one JSON
    object per line with the records' structured fields (agent kind and id, trace ids)."""

    model_config = SettingsConfigDict(env_prefix="ROOST_", extra="ignore", frozen=True)

    log_format: Literal["text", "json"] = "text"


def load_log_settings() -> LogSettings:
    try:
        return LogSettings()
    except ValidationError as exc:
        raise ConfigError(f"invalid ROOST_LOG_FORMAT: {exc.errors()[0]['msg']}") from None


DEFAULT_SERVICE_NAME = "roost"
DEFAULT_METRIC_EXPORT_INTERVAL_MS = 60_000
TelemetryExporter = Literal["otlp", "console", "none"]


class TelemetryConfig(BaseSettings):
    """OpenTelemetry settings from the standard ``OTEL_*`` variables. Off unless an exporter
    or an OTLP endpoint is set: ``OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318`` turns
    on traces, metrics and logs over OTLP/HTTP; ``OTEL_{TRACES,METRICS,LOGS}_EXPORTER``
    choose per signal (``otlp``, ``console`` or ``none``); ``OTEL_SDK_DISABLED=true`` turns
    everything off. Headers, timeouts and certificates are read by the OTLP exporters
    themselves (``OTEL_EXPORTER_OTLP_HEADERS``, ...)."""

    model_config = SettingsConfigDict(env_prefix="OTEL_", extra="ignore", frozen=True)

    sdk_disabled: bool = False
    service_name: str = DEFAULT_SERVICE_NAME
    traces_exporter: TelemetryExporter | None = None
    """Unset: ``otlp`` when an OTLP endpoint is set, else ``none``."""
    metrics_exporter: TelemetryExporter | None = None
    logs_exporter: TelemetryExporter | None = None
    exporter_otlp_endpoint: str | None = None
    """Base URL of an OTLP/HTTP receiver; ``/v1/traces`` etc. are appended."""
    exporter_otlp_traces_endpoint: str | None = None
    """Full URL for spans (overrides the base endpoint)."""
    exporter_otlp_metrics_endpoint: str | None = None
    exporter_otlp_logs_endpoint: str | None = None
    exporter_otlp_protocol: Literal["http/protobuf"] = "http/protobuf"
    """Only OTLP over HTTP with protobuf bodies is built in."""
    traces_sampler: Literal[
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    ] = "parentbased_always_on"
    traces_sampler_arg: float = Field(default=1.0, ge=0, le=1)
    """The ratio of the ``traceidratio`` samplers."""
    metric_export_interval: int = Field(default=DEFAULT_METRIC_EXPORT_INTERVAL_MS, ge=100)
    """Milliseconds between OTLP metric exports."""

    def exporter(self, signal: Literal["traces", "metrics", "logs"]) -> TelemetryExporter:
        """The exporter of one signal, after the defaults above."""
        if self.sdk_disabled:
            return "none"
        chosen: TelemetryExporter | None = getattr(self, f"{signal}_exporter")
        if chosen is not None:
            return chosen
        return "otlp" if self.otlp_endpoint(signal) is not None else "none"

    def otlp_endpoint(self, signal: Literal["traces", "metrics", "logs"]) -> str | None:
        """The full OTLP/HTTP URL for one signal, or None when none is configured (the
        exporter then falls back to its own default, ``http://localhost:4318``)."""
        specific: str | None = getattr(self, f"exporter_otlp_{signal}_endpoint")
        if specific:
            return specific
        if self.exporter_otlp_endpoint:
            return f"{self.exporter_otlp_endpoint.rstrip('/')}/v1/{signal}"
        return None


def load_telemetry_config(**overrides: object) -> TelemetryConfig:
    """Telemetry settings from the ``OTEL_*`` environment, ``overrides`` taking precedence."""
    return _load(TelemetryConfig, "telemetry", overrides, env_prefix="OTEL_")
