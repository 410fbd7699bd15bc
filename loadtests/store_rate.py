"""How many turn commits per second a store sustains on this machine: the embedded SQLite
store, or PostgreSQL with ``--store postgresql://...`` (``--store scratch`` starts a
throwaway server with fsync on, ``loadtests/pg_server.py``).

The capacity model's store bound is ``write IOPS / writes per second per session``, where a
"write" is one committed turn. This measures that rate with the store alone (no guests): a
number of concurrent writers each commit turns for its own agents as fast as the store's
group commit lets them, for a fixed number of commits, on a fresh temporary database. Each
writer commits from a worker thread, as a host's turns do (``--threads`` of them at once,
the host's worker threads)::

    python -m loadtests.store_rate --commits 20000 --writers 256 --json
    python -m loadtests.store_rate --store scratch --commits 20000 --writers 64 --threads 16 --json

It prints ``turn_commits_per_s`` (the figure ``roost capacity --store-write-iops`` takes)
and ``commits_per_batch`` (how many turns share one transaction at that concurrency).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import trio

from roost.address import AgentAddress
from roost.store.postgres import open_postgres_store
from roost.store.protocol import Commit
from roost.store.sqlite import open_sqlite_store

from .pg_server import scratch_postgres

STATE = b"\x82\xa4echo\xa4ping\xa5count\x01"
"""A small msgpack state, like the echo example's."""
AGENTS_PER_WRITER = 8


async def measure(
    commits: int,
    writers: int,
    synchronous: Literal["NORMAL", "FULL"],
    threads: int = 4,
    store_url: str | None = None,
) -> dict[str, object]:
    """Commit ``commits`` turns from ``writers`` concurrent tasks, each on one of ``threads``
    worker threads at a time; the rates observed. With ``store_url``, on PostgreSQL (each
    commit fenced by its agent's lease, as a host's are)."""
    if store_url is not None:
        return await _measure_postgres(commits, writers, threads, store_url)
    per_writer, extra = divmod(commits, writers)
    limiter = trio.CapacityLimiter(threads)
    with tempfile.TemporaryDirectory(prefix="roost-store-rate-") as tmp:
        async with open_sqlite_store(Path(tmp) / "state.db", synchronous=synchronous) as store:

            async def writer(index: int, count: int) -> None:
                for turn in range(count):
                    address = AgentAddress("bench", f"w{index}-{turn % AGENTS_PER_WRITER}")
                    commit = Commit(address=address, state=STATE, at=time.time())
                    await trio.to_thread.run_sync(store.commit, commit, limiter=limiter)

            started = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for index in range(writers):
                    nursery.start_soon(writer, index, per_writer + (1 if index < extra else 0))
            elapsed = time.perf_counter() - started
            stats = store.statistics()
    return {
        "turn_commits_per_s": round(stats.commits / elapsed, 1),
        "commits": stats.commits,
        "batches": stats.batches,
        "commits_per_batch": round(stats.commits / max(stats.batches, 1), 1),
        "writers": writers,
        "threads": threads,
        "synchronous": synchronous,
        "elapsed_s": round(elapsed, 3),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


async def _measure_postgres(
    commits: int, writers: int, threads: int, store_url: str
) -> dict[str, object]:
    per_writer, extra = divmod(commits, writers)
    limiter = trio.CapacityLimiter(threads)
    schema = f"rate_{int(time.time())}"
    async with open_postgres_store(
        store_url, schema=schema, max_connections=max(threads, 2)
    ) as store:
        owner = "rate/0"
        fences: dict[AgentAddress, int] = {}
        for index in range(writers):
            for n in range(AGENTS_PER_WRITER):
                address = AgentAddress("bench", f"w{index}-{n}")
                fences[address] = store.acquire_lease(address, owner, 3600).token

        async def writer(index: int, count: int) -> None:
            for turn in range(count):
                address = AgentAddress("bench", f"w{index}-{turn % AGENTS_PER_WRITER}")
                commit = Commit(address=address, state=STATE, at=time.time(), fence=fences[address])
                await trio.to_thread.run_sync(store.commit, commit, limiter=limiter)

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for index in range(writers):
                nursery.start_soon(writer, index, per_writer + (1 if index < extra else 0))
        elapsed = time.perf_counter() - started
        stats = store.statistics()
    return {
        "store": "postgresql",
        "turn_commits_per_s": round(stats.commits / elapsed, 1),
        "commits": stats.commits,
        "transactions": stats.transactions,
        "retries": stats.retries,
        "writers": writers,
        "threads": threads,
        "elapsed_s": round(elapsed, 3),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.store_rate",
        description="Measure turn commits per second of the SQLite store.",
    )
    parser.add_argument("--commits", type=int, default=20_000, metavar="N")
    parser.add_argument("--writers", type=int, default=256, metavar="W")
    parser.add_argument("--threads", type=int, default=4, metavar="T")
    parser.add_argument("--synchronous", choices=("NORMAL", "FULL"), default="NORMAL")
    parser.add_argument(
        "--store",
        metavar="URL",
        help="PostgreSQL (postgresql://...), or `scratch` for a throwaway server (fsync on)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.commits < 1 or args.writers < 1 or args.threads < 1:
        parser.error("--commits, --writers and --threads must be at least 1")
    if args.store == "scratch":
        with scratch_postgres(fsync=True) as server:
            result = trio.run(
                measure, args.commits, args.writers, args.synchronous, args.threads, server.url
            )
    else:
        result = trio.run(
            measure, args.commits, args.writers, args.synchronous, args.threads, args.store
        )
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>20}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
