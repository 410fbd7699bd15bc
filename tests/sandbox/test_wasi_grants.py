"""WASI's wall clock and random numbers follow the clock and random grants: a Python agent
reading ``time.time()`` or ``os.urandom`` past the SDK learns nothing it was not granted."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from roost import HostConfig, Manifest, open_host
from roost.build import build_agent
from roost.manifest import load_manifest

from ..conftest import PROBE_DIR


async def _wasi_env(
    host_config: Callable[..., HostConfig], manifest: Manifest, data: Path
) -> dict[str, object]:
    """What a fresh instance of ``manifest`` reads from WASI, in a host of its own."""
    async with open_host(host_config(data_dir=data)) as host:
        await host.deploy(manifest)
        [env] = await host.send(f"{manifest.name}/a", {"op": "wasi_env"})
    return dict(env)


async def test_with_the_grants_a_guest_reads_the_time_and_fresh_random_bytes(
    host_config: Callable[..., HostConfig], probe_manifest: Manifest, tmp_path: Path
) -> None:
    first = await _wasi_env(host_config, probe_manifest, tmp_path / "1")
    second = await _wasi_env(host_config, probe_manifest, tmp_path / "2")
    assert abs(float(first["time"]) - time.time()) < 60  # type: ignore[arg-type]
    assert first["random"] != second["random"]


async def test_without_them_the_clock_reads_the_epoch_and_random_is_a_fixed_sequence(
    host_config: Callable[..., HostConfig], cache_dir: Path, tmp_path: Path
) -> None:
    granted = ("kv", "log", "timers")  # neither clock nor random
    component = tmp_path / "probe-bare.wasm"
    build_agent(PROBE_DIR / "agent.py", component, cache_dir=cache_dir, capabilities=granted)
    probe = load_manifest(PROBE_DIR / "agent.toml")
    bare = probe.model_copy(
        update={
            "name": "bare",
            "component": component,
            "capabilities": {c: v for c, v in probe.capabilities.items() if c in granted},
        }
    )
    first = await _wasi_env(host_config, bare, tmp_path / "1")
    second = await _wasi_env(host_config, bare, tmp_path / "2")
    assert float(first["time"]) < 1.0  # type: ignore[arg-type]  # 1970-01-01
    # Not the host's entropy: a public sequence, the same in every host.
    assert first["random"] == second["random"]
