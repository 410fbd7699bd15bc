"""Edit to reply with ``roost dev``: how long a developer waits after saving a Python agent.

Run it from a checkout::

    python -m loadtests.dev_loop [--edits 10] [--fresh-cache] [--keep DIR]

It writes an agent with ``roost new`` into a temporary directory, starts ``roost dev`` on it
in a subprocess (as a developer would, with the HTTP API on a free port) and waits for its
first reply: the cold start, which builds and compiles the dev runtime unless the cache
(``ROOST_CACHE_DIR``; ``--fresh-cache`` uses an empty one) has it. Then, ``--edits``
times, it rewrites ``agent.py`` so that its reply carries a new version, and sends a message
every 20 ms until a reply carries it: the time from the write to that reply is one sample.
The agent counts its messages in its state; ``state_kept`` says the count went on rising
across every reload.

Prints one JSON object: ``edit_to_reply_s`` (p50, max, every sample), ``first_reply_s``,
``state_kept`` and the machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

AGENT = '''"""The dev-loop probe: replies with its version and counts messages in its state."""

from roost_sdk import Agent, Context

VERSION = {version}


class Probe(Agent):
    async def on_message(self, ctx: Context, msg: object) -> None:
        ctx.state["count"] = ctx.state.get("count", 0) + 1
        ctx.reply({{"version": VERSION, "count": ctx.state["count"]}})
'''
POLL_S = 0.02
START_TIMEOUT_S = 600.0
EDIT_TIMEOUT_S = 60.0
_LISTENING = re.compile(r"serving (http://\S+) with auth off")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.dev_loop", description=__doc__)
    parser.add_argument("--edits", type=int, default=10, help="edits to time (default 10)")
    parser.add_argument("--fresh-cache", action="store_true", help="start with an empty cache")
    parser.add_argument("--keep", type=Path, help="write the agent here and keep it")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.edits, fresh_cache=args.fresh_cache, keep=args.keep)))
    return 0


def measure(edits: int, *, fresh_cache: bool = False, keep: Path | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="roost-dev-loop-") as tmp:
        work = keep or Path(tmp)
        env = dict(os.environ)
        if fresh_cache:
            env["ROOST_CACHE_DIR"] = str(Path(tmp) / "cache")
        agent_dir = work / "probe"
        if agent_dir.exists():
            shutil.rmtree(agent_dir)
        _roost(["new", "probe", "--dir", str(agent_dir)], env)
        source = agent_dir / "agent.py"
        source.write_text(AGENT.format(version=0), encoding="utf-8")
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "roost.cli", "dev", "--port", "0", "--no-chat"],
            cwd=agent_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        reader, log, found = _read_stderr(proc)
        try:
            url = _wait_for_url(reader, log, found)
            with httpx.Client(timeout=30.0) as client:
                first = _reply_with(client, url, 0, started, START_TIMEOUT_S)
                first_reply_s = time.perf_counter() - started
                counts = [first["count"]]
                samples = []
                for version in range(1, edits + 1):
                    time.sleep(0.3)  # a developer does not save twice in a blink
                    source.write_text(AGENT.format(version=version), encoding="utf-8")
                    saved = time.perf_counter()
                    reply = _reply_with(client, url, version, saved, EDIT_TIMEOUT_S)
                    samples.append(round(time.perf_counter() - saved, 3))
                    counts.append(reply["count"])
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            reader.join(timeout=30)
            if proc.stderr is not None:
                proc.stderr.close()
    return {
        "edits": edits,
        "edit_to_reply_s": {
            "p50": statistics.median(samples),
            "max": max(samples),
            "samples": samples,
        },
        "first_reply_s": round(first_reply_s, 2),
        "dev_runtime_built": any("building the dev runtime" in line for line in log),
        "state_kept": all(b > a for a, b in itertools.pairwise(counts)),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
    }


def _roost(args: list[str], env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "-m", "roost.cli", *args],
        env=env,
        check=True,
        capture_output=True,
    )


def _read_stderr(
    proc: subprocess.Popen[str],
) -> tuple[threading.Thread, list[str], threading.Event]:
    """A thread that keeps ``roost dev``'s stderr lines, and sets the event once one says
    where it serves."""
    assert proc.stderr is not None
    stderr = proc.stderr
    log: list[str] = []
    found = threading.Event()

    def read() -> None:
        for line in stderr:
            log.append(line)
            if _LISTENING.search(line):
                found.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader, log, found


def _wait_for_url(reader: threading.Thread, log: list[str], found: threading.Event) -> str:
    """The URL ``roost dev`` serves at."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not found.wait(0.1):
        if not reader.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("roost dev did not start:\n" + "".join(log))
    for line in log:
        match = _LISTENING.search(line)
        if match:
            return match.group(1)
    raise RuntimeError("roost dev did not say where it serves")


def _reply_with(
    client: httpx.Client, url: str, version: int, since: float, timeout_s: float
) -> dict[str, Any]:
    """Send messages until a reply carries ``version``; that reply."""
    while time.perf_counter() - since < timeout_s:
        response = client.post(f"{url}/v1/agents/probe/me/messages", json={"message": "hi"})
        if response.status_code == 200:
            [reply] = response.json()["replies"]
            if reply["version"] == version:
                return dict(reply)
        time.sleep(POLL_S)
    raise RuntimeError(f"no reply of version {version} within {timeout_s:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
