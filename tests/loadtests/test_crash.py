"""Exactly once per message, proven by killing a real ``roost serve`` with SIGKILL.

The harness (``loadtests/crash.py``) keeps multi-turn handlers (sleep, a simulated LLM call,
an ask to another agent), timers and continuation-form ops in flight, kills the server at
random moments, restarts it, retries every unacknowledged message with its idempotency
key, and counts what each message left behind.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.crash import CrashSettings, run_crash

# A kill cuts the client's requests short: httpx then leaves their body generators to the
# garbage collector, which Python reports as unraisable.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


async def test_a_few_kills_lose_nothing_and_apply_nothing_twice(cache_dir: Path) -> None:
    verdict = await run_crash(
        CrashSettings(kills=3, messages_per_round=12, seed=11, cache_dir=cache_dir),
        report=lambda _line: None,
    )
    assert verdict["kills"] == 3
    assert verdict["acknowledged"] == verdict["messages"] == 48
    assert (verdict["lost"], verdict["applied_twice"]) == (0, 0), verdict


@pytest.mark.slow
async def test_a_hundred_kills_lose_nothing_and_apply_nothing_twice(cache_dir: Path) -> None:
    verdict = await run_crash(
        CrashSettings(kills=100, messages_per_round=10, seed=5, cache_dir=cache_dir),
        report=lambda _line: None,
    )
    assert verdict["kills"] == 100
    assert verdict["retries"] > 0  # kills did cut requests short
    assert (verdict["lost"], verdict["applied_twice"]) == (0, 0), verdict
