"""``roost dev`` as a developer runs it: a subprocess on a scaffolded agent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.dev_loop import measure
from roost.scaffold import new_agent

pytestmark = pytest.mark.slow


def test_the_chat_shows_replies_and_the_agents_logs(tmp_path: Path, cache_dir: Path) -> None:
    agent = new_agent("hello", directory=tmp_path / "hello").directory
    proc = subprocess.run(
        [sys.executable, "-m", "roost.cli", "dev", "--port", "0", "--chat"],
        input='hi\n{"n": 1}\n/quit\n',
        capture_output=True,
        text=True,
        cwd=agent,
        env={**os.environ, "ROOST_CACHE_DIR": str(cache_dir)},
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    replies = [
        json.loads(line.split("agent> ", 1)[1])
        for line in proc.stdout.splitlines()
        if "agent> " in line
    ]
    assert replies == [{"echo": "hi", "count": 1}, {"echo": {"n": 1}, "count": 2}]
    assert "roost dev: hello 0.1.0 from agent.toml" in proc.stderr
    assert "with auth off" in proc.stderr
    assert "log> info hello/local: message 1" in proc.stderr
    assert (agent / ".roost" / "roost.db").is_file()  # its state lives beside it


def test_edit_to_reply_is_within_three_seconds(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROOST_CACHE_DIR", str(cache_dir))
    result = measure(3, keep=tmp_path)
    assert result["state_kept"]
    assert result["edit_to_reply_s"]["p50"] <= 3.0, result
