"""``roost dev``: serve one agent locally and reload it on every save.

The kind is served over the HTTP API (auth off, loopback only) and, on a terminal, in a
chat (:mod:`roost.dev.chat`). The agent's directory is watched (:mod:`roost.dev.watch`);
after a save the agent is rebuilt and redeployed under the same kind name, which swaps it in
place: each resident agent finishes the event it is handling, then continues on the new
version from its committed state (nothing of its state is lost; an in-memory attribute of
the agent object is, as after hibernation).

Python agents run on the dev runtime (:mod:`roost.build.dev`), so a reload costs a
redeploy, not a build: well under a second. C and Zig agents are rebuilt (a second or
two, cached by content). A save that does not build (a syntax error, a bad manifest) is
reported and the last version that built keeps serving.

Agents that use the llm capability talk to the SIMULATED model of
:mod:`roost.dev.sim_llm` unless ``ROOST_LLM_BASE_URL`` names a real provider.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from .._progress import progress
from ..address import AgentAddress
from ..api.server import Serving, serve
from ..build import build_agent
from ..build._sources import agent_sources
from ..build.dev import dev_build, dev_runtime_path
from ..build.native import NATIVE_SUFFIXES
from ..config import HostConfig, load_config, load_server_config
from ..errors import ManifestError, RoostError
from ..host import Host
from ..manifest import Manifest, load_manifest
from .chat import Console, GuestLogHandler, chat
from .sim_llm import SimLLMConfig, serve_sim_llm
from .watch import Snapshot, changes, snapshot

SIM_LATENCY_MS = 150.0
SIM_TOKENS_PER_S = 40.0
SIM_COMPLETION_TOKENS = 24
"""The simulated model answers quickly, in tokens slow enough to watch stream."""


@dataclass(frozen=True)
class DevOptions:
    manifest: Path
    """The kind's manifest file."""
    port: int = 8470
    bind_host: str = "127.0.0.1"
    agent_id: str = "local"
    """The agent the chat talks to."""
    data_dir: Path | None = None
    """Default: ``.roost`` beside the manifest."""
    chat: bool = True


async def run_dev(options: DevOptions, console: Console) -> None:
    """Serve and reload the kind until a signal, or the chat's end."""
    manifest = await trio.to_thread.run_sync(load_manifest, options.manifest)
    data_dir = options.data_dir or options.manifest.parent / ".roost"
    config = load_config(data_dir=data_dir, deadline_cool_down_s=0.0)
    settings = load_server_config(bind_host=options.bind_host, port=options.port, dev=True)
    guest_log = _show_guest_logs(console)
    try:
        async with trio.open_nursery() as nursery:
            llm_url = None
            if not config.llm_base_url:
                sim = await nursery.start(
                    serve_sim_llm,
                    SimLLMConfig.model_validate(
                        {
                            "latency_ms": SIM_LATENCY_MS,
                            "tokens_per_s": SIM_TOKENS_PER_S,
                            "completion_tokens": SIM_COMPLETION_TOKENS,
                            "any_model": True,
                        }
                    ),
                )
                llm_url = sim.url
                config = config.model_copy(update={"llm_base_url": llm_url})

            async def server(task_status: trio.TaskStatus[Serving]) -> None:
                await serve(config, settings, deploy=[], task_status=task_status)
                nursery.cancel_scope.cancel()

            serving: Serving = await nursery.start(server)
            reloader = Reloader(options.manifest, serving.host, console, config)
            # Look at the files before the first build, so a save during it is not missed.
            directory = (manifest.source or options.manifest).parent
            before = await trio.to_thread.run_sync(snapshot, directory, [options.manifest])
            await reloader.reload(None)
            shown_llm = llm_url if "llm" in manifest.capabilities else None
            _banner(console, manifest, serving, options, shown_llm)
            nursery.start_soon(reloader.watch, directory, before)
            if options.chat:
                await chat(serving.host, AgentAddress(manifest.name, options.agent_id), console)
                serving.shut_down()
    finally:
        guest_log()


class Reloader:
    """Builds and deploys the kind, now and after every save."""

    def __init__(self, manifest: Path, host: Host, console: Console, config: HostConfig) -> None:
        self.manifest_path = manifest
        self.host = host
        self.console = console
        self.cache_dir = config.cache_dir
        self.deployed: Manifest | None = None
        self._deployed_key: object = None
        """What the deployed version was built from: a new one is deployed only if this
        changed (the manifest, and the sources or the native build's digest)."""
        self.version = 0
        self.reloads = 0

    async def watch(self, directory: Path, since: Snapshot | None = None) -> None:
        """Reload after every save in ``directory`` (or of the manifest) since ``since``."""
        async for changed in changes(directory, [self.manifest_path], since=since):
            await self.reload(changed)

    async def reload(self, changed: set[Path] | None) -> None:
        started = time.perf_counter()
        try:
            manifest = await trio.to_thread.run_sync(load_manifest, self.manifest_path)
            deployable, key = await self._build(manifest)
        except RoostError as exc:
            still = "; the last version that built keeps serving" if self.deployed else ""
            self.console.info(f"roost dev: {exc}{still}")
            return
        if self.deployed is not None and key == self._deployed_key:
            return  # a file the agent does not use (a test, notes) changed
        try:
            label = f"compiling {manifest.name} to native code (once per build; cached)"
            with progress(label):
                await self.host.deploy(deployable)
        except RoostError as exc:
            self.console.info(f"roost dev: {exc}")
            return
        self.deployed = deployable
        self._deployed_key = key
        self.version += 1
        if changed is not None:
            self.reloads += 1
            names = ", ".join(sorted(p.name for p in changed))
            self.console.info(
                f"roost dev: {names} changed; {manifest.name} reloaded (version {self.version}) "
                f"in {time.perf_counter() - started:.2f}s"
            )

    async def _build(self, manifest: Manifest) -> tuple[Manifest, object]:
        """The manifest to deploy, and what it was built from."""
        source = manifest.source
        if source is None:
            raise ManifestError(
                f"{self.manifest_path}: roost dev rebuilds the agent from its source; set "
                '`source = "agent.py"` (or .c, .zig) in the manifest'
            )
        if source.suffix in NATIVE_SUFFIXES:
            component = manifest.component or source.with_suffix(".wasm")
            build = partial(
                build_agent,
                source,
                component,
                cache_dir=self.cache_dir,
                capabilities=tuple(manifest.capabilities),
            )
            with progress(f"building {source.name} (cached by content)"):
                result = await trio.to_thread.run_sync(build)
            deployable = manifest.with_component(component)
            return deployable, (deployable, result.digest)
        sources = await trio.to_thread.run_sync(agent_sources, source.resolve())
        runtime = dev_runtime_path(manifest, sources, cache_dir=self.cache_dir)
        label = (
            "building the dev runtime with componentize-py (once per set of capabilities "
            "and packages; cached)"
        )
        with progress(label) if not runtime.is_file() else nullcontext():
            built = await trio.to_thread.run_sync(
                partial(dev_build, manifest, cache_dir=self.cache_dir)
            )
        return built.manifest, built.manifest


def _banner(
    console: Console,
    manifest: Manifest,
    serving: Serving,
    options: DevOptions,
    llm_url: str | None,
) -> None:
    url = serving.urls[0]
    source = manifest.source
    how = (
        "Python on the dev runtime: a save reloads it in well under a second"
        if source is not None and source.suffix == ".py"
        else "rebuilt on every save"
    )
    lines = [
        f"roost dev: {manifest.name} {manifest.version} from {options.manifest} ({how})",
        f"  serving {url} with auth off: curl -s -X POST "
        f'{url}/v1/agents/{manifest.name}/ID/messages -d \'{{"message": "hi"}}\'',
    ]
    if llm_url is not None:
        lines.append(
            f"  llm: the SIMULATED model at {llm_url} (it repeats your words; set "
            "ROOST_LLM_BASE_URL and ROOST_LLM_API_KEY to use a real one)"
        )
    lines.append(f"  watching {(source or options.manifest).parent} for changes")
    for line in lines:
        console.info(line)


def _show_guest_logs(console: Console) -> Callable[[], None]:
    """Show the agents' log lines on the console, debug lines included, until the returned
    function is called."""
    logger = logging.getLogger("roost.guest")
    handler = GuestLogHandler(console)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False

    def restore() -> None:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate

    return restore
