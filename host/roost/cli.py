"""The ``roost`` command line: build agents, chat with one, benchmark the host.

::

    roost new NAME [--template echo|chat|tools] [--lang python|c|zig] [--dir D]
    roost dev [MANIFEST] [--port P] [--agent-id ID] [--data-dir D] [--chat | --no-chat]
    roost build AGENT.py -o OUT.wasm [--manifest M] [--capabilities a,b]
    roost run [COMPONENT] --manifest agent.toml [--message TEXT] [--agent-id ID] [--data-dir D]
    roost serve [--deploy MANIFEST ...] [--dev] [--port P] [--data-dir D] [--store URL]
                [--proxy-agent-port P]
    roost cluster up --hosts N --store URL [--deploy MANIFEST ...] [--port P]
    roost cluster proxy-config --server HOST:PORT[,AGENT_PORT] [--server ...] [--port P]
    roost token KIND ID [--ttl S] [--data-dir D]
    roost bench footprint|wake --agents N [--manifest M] [--json]
    roost bench telemetry [--turns N] [--rounds N] [--json]
    roost bench density [--steps N,N] [--native-steps N,N | --python-only] [--step-s S] [--smoke]
    roost capacity [--json] [--plot FILE.png] [--density report.json [--force]] [inputs...]
    roost version

Results go to stdout; progress, logs and errors go to stderr. Every command returns 0 on
success and 1 when it fails for a reason Roost reports (bad input, a failed build, a guest
error), with the message on stderr and no Python traceback.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import logging
import platform
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from ._progress import progress
from .address import AgentAddress
from .build import build_agent, ensure_component
from .build.native import NATIVE_SUFFIXES
from .capacity.cli import add_capacity_command, positive_int
from .config import HostConfig, load_config, load_log_settings, load_server_config
from .dev.chat import Console, chat, parse_message
from .errors import BuildError, ConfigError, GuestError, ManifestError, RoostError
from .host import Host, open_host
from .manifest import Manifest, load_manifest
from .payload import to_json
from .scaffold import LANGUAGES, TEMPLATES, new_agent

if TYPE_CHECKING:
    from .cluster import ProxiedHost

DEFAULT_AGENT_ID = "local"
_EXIT_FAILURE = 1
_EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``roost`` command line with ``argv`` (default: ``sys.argv[1:]``)."""
    args = _parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return _EXIT_INTERRUPTED
    except BaseException as exc:
        leaf = _single_leaf(exc)
        if isinstance(leaf, KeyboardInterrupt):
            print(file=sys.stderr)
            return _EXIT_INTERRUPTED
        if isinstance(leaf, RoostError):
            _report(leaf)
            return _EXIT_FAILURE
        raise
    return code


# -- argument parsing --------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log to stderr: -v for info (guest log lines), -vv for debug",
    )

    parser = argparse.ArgumentParser(
        prog="roost", description="Run AI agents as WebAssembly sandboxes."
    )
    parser.add_argument("--version", action="version", version=_version_line())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    new = commands.add_parser(
        "new",
        parents=[common],
        help="write a new agent: source, manifest, test and README",
        description="Write a working agent into NAME/ (or --dir): its source, its manifest "
        "(agent.toml), a test that runs it in a real host (test_agent.py) and a short "
        "README. It builds and passes its test as written; `roost dev` in that directory "
        "serves it and reloads it on every save.",
    )
    new.add_argument("name", metavar="NAME", help="the kind's name (letters, digits, - and _)")
    new.add_argument(
        "--template",
        choices=TEMPLATES,
        default="echo",
        help="echo (state), chat (the llm, with memory) or tools (the llm with a "
        "plain-Python helper); default echo",
    )
    new.add_argument(
        "--lang",
        choices=LANGUAGES,
        default="python",
        help="default python (C: echo, chat; Zig: echo)",
    )
    new.add_argument("--dir", type=Path, metavar="D", help="where to write it (default: NAME/)")
    new.set_defaults(handler=_cmd_new)

    dev = commands.add_parser(
        "dev",
        parents=[common],
        help="serve an agent locally and reload it on every save",
        description="Serve the kind over HTTP (auth off, loopback) with a chat in the terminal "
        "that shows replies, streamed tokens, pushes and the agent's logs. Every save "
        "rebuilds and redeploys it in place; its agents keep their state. Python agents run "
        "on the dev runtime, so a reload takes well under a second. Agents using the llm "
        "capability get a SIMULATED model unless ROOST_LLM_BASE_URL is set.",
    )
    dev.add_argument(
        "manifest",
        nargs="?",
        type=Path,
        default=Path("agent.toml"),
        metavar="MANIFEST",
        help="the kind's manifest, or its directory (default: agent.toml here)",
    )
    dev.add_argument("--port", type=int, default=8470, metavar="P", help="default 8470; 0 = any")
    dev.add_argument(
        "--agent-id",
        default=DEFAULT_AGENT_ID,
        metavar="ID",
        help=f"the agent the chat talks to (default: {DEFAULT_AGENT_ID})",
    )
    dev.add_argument(
        "--data-dir", type=Path, metavar="D", help="state directory (default: .roost beside it)"
    )
    dev.add_argument(
        "--chat",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="chat in the terminal (default: when stdin is a terminal); without it, serve "
        "until Ctrl-C",
    )
    dev.set_defaults(handler=_cmd_dev)

    build = commands.add_parser(
        "build",
        parents=[common],
        help="compile a Python agent to a WebAssembly component",
        description="Compile a Python agent (one roost_sdk.Agent subclass) to a component. "
        "Builds are cached by content hash.",
    )
    build.add_argument("source", type=Path, metavar="AGENT.py", help="the agent's source file")
    build.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="OUT.wasm",
        help="where to write the component (default: AGENT.wasm beside the source)",
    )
    build.add_argument(
        "--manifest",
        type=Path,
        metavar="M",
        help="the manifest whose capabilities the component imports "
        "(default: agent.toml beside the source, if any)",
    )
    build.add_argument(
        "--capabilities",
        type=_capability_list,
        metavar="a,b",
        help="comma-separated capabilities to import instead of the manifest's",
    )
    build.set_defaults(handler=_cmd_build)

    run = commands.add_parser(
        "run",
        parents=[common],
        help="deploy a kind and chat with one of its agents",
        description="Deploy a kind (building its source if needed) and send messages to one "
        "agent: one with --message (prints one JSON line), else an interactive chat. "
        "A message that parses as JSON is sent as that value, anything else as a string.",
    )
    run.add_argument(
        "component",
        nargs="?",
        type=Path,
        metavar="COMPONENT",
        help="a built .wasm component; overrides the manifest's `component` (and skips "
        "building its `source`)",
    )
    run.add_argument(
        "--manifest",
        type=Path,
        metavar="agent.toml",
        help="the kind's manifest (default: agent.toml beside COMPONENT, or in the "
        "current directory)",
    )
    run.add_argument("--message", metavar="TEXT", help="send one message, print the replies")
    run.add_argument(
        "--agent-id",
        default=DEFAULT_AGENT_ID,
        metavar="ID",
        help=f"the agent to talk to (default: {DEFAULT_AGENT_ID})",
    )
    run.add_argument(
        "--data-dir",
        type=Path,
        metavar="D",
        help="where agent state is stored (default: $ROOST_DATA_DIR or .roost)",
    )
    run.set_defaults(handler=_cmd_run)

    bench = commands.add_parser(
        "bench",
        parents=[common],
        help="measure memory per agent and wake/turn latency",
        description="Benchmark the host on a fresh temporary data dir. Both benchmarks "
        "report the same numbers; footprint lists memory first, wake lists latency first.",
    )
    bench.add_argument("benchmark", choices=("footprint", "wake", "density", "telemetry"))
    bench.add_argument(
        "--agents", type=positive_int, metavar="N", help="agents to create (footprint, wake)"
    )
    bench.add_argument(
        "--steps",
        type=_step_list,
        metavar="N,N,...",
        help="density: sessions per step of the Python tier (default 2000,3000,4000,5000,6000)",
    )
    bench.add_argument(
        "--native-steps",
        type=_step_list,
        metavar="N,N,...",
        help="density: sessions per step of the native tier (examples/chat_c; default "
        "5000,10000,12500,15000)",
    )
    bench.add_argument(
        "--python-only", action="store_true", help="density: leave the native tier out"
    )
    bench.add_argument(
        "--step-s", type=float, metavar="S", help="density: seconds measured per step"
    )
    bench.add_argument(
        "--smoke", action="store_true", help="density: a short run (small steps, under 2 minutes)"
    )
    bench.add_argument(
        "--out", type=Path, metavar="DIR", help="density: report directory (default density-report)"
    )
    bench.add_argument(
        "--turns",
        type=positive_int,
        metavar="N",
        help="telemetry: timed turns per mode per round (default 500)",
    )
    bench.add_argument(
        "--rounds", type=positive_int, metavar="N", help="telemetry: rounds (default 5)"
    )
    bench.add_argument(
        "--manifest",
        type=Path,
        metavar="M",
        help="the kind to benchmark (default: the bundled echo example)",
    )
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.set_defaults(handler=_cmd_bench)

    serve = commands.add_parser(
        "serve",
        parents=[common],
        help="serve the HTTP API",
        description="Open a host on the embedded defaults (SQLite under the data dir) and "
        "serve the HTTP API. Settings also come from ROOST_* variables (docs/http.md).",
    )
    serve.add_argument(
        "--deploy",
        action="append",
        type=Path,
        default=[],
        metavar="MANIFEST",
        help="a manifest (or a directory of them) to deploy; may be repeated",
    )
    serve.add_argument("--host", dest="bind_host", metavar="H", help="address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, metavar="P", help="port (default 8470; 0 = any free)")
    serve.add_argument("--data-dir", type=Path, metavar="D", help="state directory")
    serve.add_argument(
        "--proxy-agent-port",
        type=int,
        metavar="P",
        help="answer HAProxy's agent check on this port (docs/cluster.md; $ROOST_PROXY_AGENT_PORT)",
    )
    serve.add_argument(
        "--store",
        metavar="URL",
        help="keep state in PostgreSQL (postgresql://USER:PASS@HOST:PORT/DB), shared with "
        "other hosts (docs/cluster.md); default: SQLite in the data dir ($ROOST_STORE_URL)",
    )
    serve.add_argument(
        "--dev",
        action="store_true",
        default=None,
        help="disable auth for local development (loopback only)",
    )
    serve.set_defaults(handler=_cmd_serve)

    cluster = commands.add_parser(
        "cluster",
        parents=[common],
        help="run several hosts on one PostgreSQL store behind HAProxy, on this machine",
        description="`roost cluster up` starts N `roost serve` hosts sharing the PostgreSQL "
        "store at --store, and HAProxy in front of them hashing requests on kind/id, until "
        "Ctrl-C. `roost cluster proxy-config --server HOST:PORT ...` prints the HAProxy "
        "configuration for hosts on other machines (docs/cluster.md).",
    )
    cluster.add_argument("action", choices=("up", "proxy-config"))
    cluster.add_argument("--hosts", type=positive_int, default=3, metavar="N")
    cluster.add_argument(
        "--store",
        metavar="URL",
        help="postgresql://USER:PASS@HOST:PORT/DB (default: $ROOST_STORE_URL)",
    )
    cluster.add_argument(
        "--deploy",
        action="append",
        type=Path,
        default=[],
        metavar="MANIFEST",
        help="a manifest (or a directory of them) every host deploys; may be repeated",
    )
    cluster.add_argument(
        "--port",
        type=int,
        default=8470,
        metavar="P",
        help="the proxy's port (default 8470); with `up`, the hosts take the next N ports "
        "and their proxy agents the N after",
    )
    cluster.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="HOST:PORT[,AGENT_PORT]",
        help="proxy-config: a host's address as the proxy reaches it, and the port of its "
        "agent check (`roost serve --proxy-agent-port`); one per host",
    )
    cluster.add_argument(
        "--dir",
        type=Path,
        default=Path(".roost-cluster"),
        metavar="D",
        help="the hosts' data, the proxy's configuration and the logs (default .roost-cluster)",
    )
    cluster.set_defaults(handler=_cmd_cluster)

    token = commands.add_parser(
        "token",
        parents=[common],
        help="mint a bearer token for one agent",
        description="Print a signed token that lets its holder talk to KIND/ID only.",
    )
    token.add_argument("kind")
    token.add_argument("agent_id", metavar="ID")
    token.add_argument("--ttl", type=positive_int, metavar="S", help="lifetime in seconds")
    token.add_argument("--data-dir", type=Path, metavar="D", help="state directory")
    token.set_defaults(handler=_cmd_token)

    add_capacity_command(commands, common)

    version = commands.add_parser(
        "version", parents=[common], help="print the versions of roost and its runtime"
    )
    version.set_defaults(handler=_cmd_version)
    return parser


def _capability_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


# -- roost serve / roost token -----------------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    from .api.server import serve

    overrides: dict[str, object] = {}
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    if args.store:
        overrides["store_url"] = args.store
    host_config = load_config(**overrides)
    settings = load_server_config(
        bind_host=args.bind_host,
        port=args.port,
        dev=args.dev,
        proxy_agent_port=args.proxy_agent_port,
    )

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            serving = await nursery.start(
                partial(serve, host_config, settings, deploy=args.deploy, show_progress=True)
            )
            _settle_collector()
            urls = serving.urls
            for url in urls:
                print(f"roost: listening on {url}", file=sys.stderr, flush=True)
            if settings.dev:
                print(
                    "roost: DEV MODE - AUTHENTICATION IS OFF. Anyone who can reach "
                    f"{', '.join(urls)} can talk to every agent and deploy code.",
                    file=sys.stderr,
                    flush=True,
                )
            else:
                print(
                    f"roost: admin token in {host_config.data_dir / 'admin_token'} (or "
                    "ROOST_ADMIN_TOKEN); mint agent tokens with `roost token KIND ID`",
                    file=sys.stderr,
                    flush=True,
                )
            print(
                f"roost: try  curl -X POST {urls[0]}/v1/agents/KIND/ID/messages "
                "-H 'Authorization: Bearer TOKEN' -d '{\"message\": \"hi\"}'",
                file=sys.stderr,
                flush=True,
            )

    trio.run(run)
    return 0


def _cmd_cluster(args: argparse.Namespace) -> int:
    from .cluster import ClusterSettings, haproxy_config, run_cluster

    if args.action == "proxy-config":
        if not args.server:
            raise ConfigError(
                "roost cluster proxy-config needs the hosts' addresses: "
                "--server HOST:PORT[,AGENT_PORT], once per host"
            )
        servers = [_proxied_host(f"h{i}", given) for i, given in enumerate(args.server, 1)]
        print(haproxy_config(f"0.0.0.0:{args.port}", servers), end="")
        return 0
    if args.server:
        raise ConfigError("--server is for `roost cluster proxy-config`; `up` starts its hosts")
    store = args.store or load_config().store_url
    if not store:
        raise ConfigError("roost cluster up needs --store postgresql://... (or ROOST_STORE_URL)")
    settings = ClusterSettings(
        hosts=args.hosts,
        store_url=store,
        deploy=list(args.deploy),
        port=args.port,
        directory=args.dir,
    )
    return run_cluster(settings, _info)


def _proxied_host(name: str, given: str) -> ProxiedHost:
    from .cluster import ProxiedHost

    address, _, agent_port = given.partition(",")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not _is_port(port) or not (agent_port == "" or _is_port(agent_port)):
        raise ConfigError(
            f"--server {given!r} is not HOST:PORT[,AGENT_PORT] (e.g. 10.1.2.3:8471,9471)"
        )
    return ProxiedHost(name, address, int(agent_port) if agent_port else None)


def _is_port(text: str) -> bool:
    return text.isdigit() and 0 < int(text) < 65536


def _settle_collector() -> None:
    """Tune Python's cyclic garbage collector for a long-running server.

    A full collection walks every tracked object and pauses every request meanwhile: about
    100 ms with 2,000 resident agents on a slow core. What exists once the server is up
    (modules, deployed kinds) lives as long as the process, so it is frozen out of those
    walks. Objects of requests in flight (about 0.2 s each) that a middle-generation pass
    finds alive are promoted to the old generation and, once dead there, trigger the next
    full pass: middle passes every 50 young ones instead of 10, and a full pass at most
    every 100 middle ones, make full passes minutes apart instead of seconds.

    What a full pass finds alive is frozen right after it: resident agents (about 55 tracked
    objects each, mostly their actor's idle task) then cost the next full passes nothing, so
    a pass walks only what was made since the last one (a few ms) instead of every resident
    agent (about 0.5 s over 10,000). Frozen objects that die are still freed by their
    reference counts; only a reference cycle among them would stay. A hibernating agent
    leaves none: unfreezing and collecting after 10,000 agents hibernated found no cyclic
    garbage."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(700, 50, 100)
    if _freeze_after_full_pass not in gc.callbacks:
        gc.callbacks.append(_freeze_after_full_pass)


def _freeze_after_full_pass(phase: str, info: dict[str, int]) -> None:
    """A ``gc`` callback: after a full pass, freeze what it found alive."""
    if phase == "stop" and info.get("generation") == 2:
        gc.freeze()


def _cmd_token(args: argparse.Namespace) -> int:
    from .api import load_credentials, mint_agent_token

    host_config = load_config(**({"data_dir": args.data_dir} if args.data_dir else {}))
    settings = load_server_config()
    secret = host_config.data_dir / "secret"
    if settings.secret is None and not secret.is_file():
        raise ConfigError(
            f"no server secret at {secret.absolute()}: a token minted now would be signed "
            "with a new secret that no server knows. Pass the --data-dir the server uses "
            "(`roost serve` writes its secret there when it starts), or set ROOST_SECRET to "
            "the server's"
        )
    credentials = load_credentials(settings, host_config.data_dir)
    address = AgentAddress(args.kind, args.agent_id)
    ttl = args.ttl or settings.default_token_ttl_s
    print(mint_agent_token(credentials.secret, address, ttl_s=ttl))
    return 0


# -- roost build -------------------------------------------------------------------------


def _cmd_build(args: argparse.Namespace) -> int:
    source: Path = args.source
    output: Path = args.output or source.with_suffix(".wasm")
    config = load_config()
    started = time.perf_counter()
    try:
        with progress(_build_label(source)):
            result = build_agent(
                source,
                output,
                cache_dir=config.cache_dir,
                manifest=args.manifest,
                capabilities=args.capabilities,
            )
    except BuildError as exc:
        print(exc, file=sys.stderr)
        return _EXIT_FAILURE
    if result.cached:
        print(f"built {result.output} (cached)")
    else:
        print(f"built {result.output} in {time.perf_counter() - started:.1f}s")
    return 0


def _build_label(source: Path) -> str:
    tools = "zig and wasm-tools" if source.suffix in NATIVE_SUFFIXES else "componentize-py"
    return f"building {source.name} with {tools} (cached by content afterwards)"


# -- roost new / roost dev ---------------------------------------------------------------


def _cmd_new(args: argparse.Namespace) -> int:
    made = new_agent(args.name, template=args.template, lang=args.lang, directory=args.dir)
    where = made.directory
    print(f"wrote {where}/: {', '.join(str(f) for f in made.files)}")
    print(f"next: cd {where} && roost dev        # serve it; every save reloads it")
    print("      python -m pytest              # its tests, in a real host on virtual time")
    return 0


def _cmd_dev(args: argparse.Namespace) -> int:
    from .dev.session import DevOptions, run_dev

    manifest = _manifest_path(args.manifest, None, explicit=True)
    options = DevOptions(
        manifest=manifest,
        port=args.port,
        agent_id=args.agent_id,
        data_dir=args.data_dir,
        chat=sys.stdin.isatty() if args.chat is None else args.chat,
    )
    trio.run(partial(run_dev, options, Console()))
    return 0


def _manifest_path(given: Path | None, component: Path | None, *, explicit: bool) -> Path:
    """The manifest to use: ``given`` (a file, or a directory holding agent.toml), else
    agent.toml beside ``component`` or here; ManifestError says where it looked."""
    path = (
        given
        if given is not None
        else (component.parent / "agent.toml" if component is not None else Path("agent.toml"))
    )
    if path.is_dir():
        path = path / "agent.toml"
    if not path.is_file():
        how = (
            ""
            if given is not None and explicit
            else ("; pass --manifest PATH, or run in the agent's directory")
        )
        raise ManifestError(f"no manifest: looked for {path.absolute()}{how}")
    return path


# -- roost run ---------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    component: Path | None = args.component
    manifest_path = _manifest_path(args.manifest, component, explicit=args.manifest is not None)
    overrides: dict[str, object] = {}
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    config = load_config(**overrides)
    manifest = load_manifest(manifest_path)
    address = AgentAddress(manifest.name, args.agent_id)

    async def session() -> int:
        # With an explicit component there is nothing to build.
        deployable = manifest if component is not None else await _build_for(manifest, config)
        async with open_host(config) as host:
            with progress(f"compiling {manifest.name} to native code (once per build; cached)"):
                info = await host.deploy(deployable, component=component)
            caps = ", ".join(info.capabilities) or "none"
            _info(f"deployed {info.name} {info.version} (capabilities: {caps})")
            if args.message is not None:
                return await _send_once(host, address, parse_message(args.message))
            await chat(host, address, Console())
            return 0

    result: int = trio.run(session)
    return result


async def _build_for(manifest: Manifest, config: HostConfig) -> Manifest:
    if manifest.source is None:
        return manifest
    label = _build_label(manifest.source)
    with progress(label) if manifest.source.is_file() else nullcontext():
        return await trio.to_thread.run_sync(
            lambda: ensure_component(manifest, cache_dir=config.cache_dir)
        )


async def _send_once(host: Host, address: AgentAddress, message: Any) -> int:
    try:
        replies = await host.send(address, message)
    except RoostError as exc:
        _report(exc)
        return _EXIT_FAILURE
    print(_to_json({"replies": replies}))
    return 0


def _to_json(value: Any, *, ensure_ascii: bool = True) -> str:
    return to_json(value, ensure_ascii=ensure_ascii)


# -- roost bench -------------------------------------------------------------------------


def _step_list(text: str) -> tuple[int, ...]:
    try:
        steps = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not steps or any(n < 1 for n in steps):
        raise argparse.ArgumentTypeError("steps must be positive numbers of sessions")
    return steps


def _checkout_on_path() -> None:
    """Make the repository's ``loadtests`` importable: the benchmarks run from a checkout
    (they use its ``loadtests/`` and ``examples/``), which is not installed."""
    try:
        import loadtests  # noqa: F401
    except ImportError:
        pass
    else:
        return
    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / "loadtests" / "__init__.py").is_file():
        raise ConfigError(
            "roost bench runs from a checkout of the roost repository (it needs loadtests/ "
            "and examples/); install it with `pip install -e '.[load]'` from the checkout"
        )
    sys.path.insert(0, str(checkout))


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.benchmark == "density":
        return _cmd_density(args)
    if args.benchmark == "telemetry":
        _checkout_on_path()
        from loadtests.bench_telemetry import (
            DEFAULT_ROUNDS,
            DEFAULT_TURNS,
            run_telemetry_benchmark,
        )

        return run_telemetry_benchmark(
            turns=args.turns or DEFAULT_TURNS,
            rounds=args.rounds or DEFAULT_ROUNDS,
            manifest=args.manifest,
            as_json=args.json,
        )
    if args.agents is None:
        print(f"roost: bench {args.benchmark} needs --agents N", file=sys.stderr)
        return _EXIT_FAILURE
    _checkout_on_path()
    from loadtests.bench import run_benchmark

    return run_benchmark(
        args.benchmark, agents=args.agents, manifest=args.manifest, as_json=args.json
    )


def _cmd_density(args: argparse.Namespace) -> int:
    import dataclasses

    _checkout_on_path()
    from loadtests.density import SMOKE, DensitySettings, run_density

    settings = SMOKE if args.smoke else DensitySettings()
    overrides: dict[str, Any] = {}
    if args.steps:
        overrides["steps"] = args.steps
    if args.native_steps:
        overrides["native_steps"] = args.native_steps
    if args.python_only:
        overrides["native_steps"] = ()
    if args.step_s:
        overrides["step_s"] = args.step_s
    if args.manifest:
        overrides["manifest"] = args.manifest
    if args.out:
        overrides["out_dir"] = args.out
    settings = dataclasses.replace(settings, **overrides)
    report = run_density(
        settings, lambda line: print(f"density: {line}", file=sys.stderr, flush=True)
    )
    if args.json:
        print(json.dumps(report))
    else:
        print(f"sessions per core at the SLO: {report['sessions_per_core']} ({report['limit']})")
    return 0


# -- roost version -----------------------------------------------------------------------


def _cmd_version(args: argparse.Namespace) -> int:
    print(_version_line())
    return 0


def _version_line() -> str:
    parts = [
        f"wasmtime {_package_version('wasmtime')}",
        f"componentize-py {_package_version('componentize-py')}",
        f"Python {platform.python_version()}",
    ]
    return f"roost {_package_version('roost')} ({', '.join(parts)})"


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# -- output ------------------------------------------------------------------------------


def _info(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _report(exc: RoostError) -> None:
    print(f"roost: {exc}", file=sys.stderr, flush=True)
    if isinstance(exc, GuestError) and exc.guest_traceback:
        print(exc.guest_traceback.rstrip(), file=sys.stderr, flush=True)


def _single_leaf(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member groups (trio nurseries wrap errors
    raised in their body); ``exc`` itself if it is not such a group."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time of the record."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def _configure_logging(verbosity: int) -> None:
    if verbosity <= 0:
        return
    logger = logging.getLogger("roost")
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
    handler = _StderrHandler()
    if load_log_settings().log_format == "json":
        from .telemetry import JsonLogFormatter

        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbosity > 1 else logging.INFO)


if __name__ == "__main__":
    raise SystemExit(main())
