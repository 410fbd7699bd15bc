"""``limits.cpu_deadline_ms`` is CPU time: a turn that waits for the CPU (a busy core, a
worker thread at background priority) is not stopped short of the CPU time it was given,
and a runaway turn is still stopped."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from roost import CpuDeadlineExceeded, HostConfig, Manifest, open_host

from ..conftest import with_limits

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or not hasattr(os, "sched_setaffinity"),
    reason="pins threads to one core (Linux)",
)


@contextmanager
def _one_busy_core() -> Iterator[None]:
    """This process's new threads and a busy process of normal priority share one core."""
    core = min(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(busy.pid, {core})
        os.sched_setaffinity(0, {core})  # this thread; threads started from now inherit it
        yield
    finally:
        os.sched_setaffinity(0, before)
        busy.kill()
        busy.wait()


async def test_a_turn_starved_of_the_cpu_gets_its_cpu_time_and_a_runaway_is_stopped(
    host_config: Callable[..., HostConfig], native_probe_manifest: Manifest
) -> None:
    manifest = with_limits(native_probe_manifest, cpu_deadline_ms=80)
    # No inline turns: each turn runs on a worker thread, a new kind's at background
    # priority, where the busy process leaves it a small share of the core.
    config = host_config(inline_slice_ms=0, deadline_cool_down_s=0)
    async with open_host(config) as host:
        kind = (await host.deploy(manifest)).name
        await host.send(f"{kind}/calibrate", {"op": "spin", "count": 0})  # awake, warm
        count = 1_000_000
        while True:  # a spin of about 30 ms on its own: well within its 80 ms
            started = time.perf_counter()
            await host.send(f"{kind}/calibrate", {"op": "spin", "count": count})
            if time.perf_counter() - started > 0.03 or count > 10**10:
                break
            count *= 2
        with _one_busy_core():
            async with open_host(
                config.model_copy(update={"data_dir": config.data_dir / "b"})
            ) as starved:
                await starved.deploy(manifest)
                started = time.perf_counter()
                assert await starved.send(f"{kind}/a", {"op": "spin", "count": count}) == [1]
                waited = time.perf_counter() - started
                # It took longer in wall time than its CPU deadline, and still finished.
                assert waited > 0.08, waited
                started = time.perf_counter()
                with pytest.raises(CpuDeadlineExceeded):
                    await starved.send(f"{kind}/b", {"op": "loop"})
                # Stopped, at the latest after WALL_FACTOR times its deadline in wall time.
                assert time.perf_counter() - started < 0.08 * 20 + 2
