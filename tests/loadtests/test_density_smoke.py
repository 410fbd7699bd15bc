"""The short form of the density run, to keep the harness working (the full run is
documented in docs/capacity.md and is not part of CI)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from loadtests.density import SMOKE, run_density
from roost.capacity import parse_density_report, smoke_reason


@pytest.mark.slow
def test_density_smoke_run_produces_a_report_capacity_reads(tmp_path: Path) -> None:
    lines: list[str] = []
    report = run_density(dataclasses.replace(SMOKE, out_dir=tmp_path), lines.append)
    assert [t["tier"] for t in report["tiers"]] == ["python", "native"]
    for tier in report["tiers"]:
        assert [s["sessions"] for s in tier["steps"]] == list(SMOKE.steps), tier["steps"]
        for step in tier["steps"]:
            assert step["requests"] > 0
            assert step["errors"] == 0, step["notes"]
            assert step["resident_agents"] >= step["sessions"]
            assert step["host_added_from"] == "server-timing"
            assert step["host_added_p99_ms"] <= step["p99_ms"]
            assert 0 < step["load_core_busy"] <= 1
            assert step["host_cpu_ms_per_message"] > 0
        assert tier["sessions_per_core"] == SMOKE.steps[-1]
        assert tier["wake"]["wake_us_p50"] > 0
    assert report["steps"] == report["tiers"][0]["steps"]  # the top level is the Python tier
    assert report["sessions_per_core"] == SMOKE.steps[-1]
    assert report["pss_per_session_bytes"] > 0
    for tier in report["tiers"]:
        assert 0 < tier["resident_share"] <= 1
    assert report["baseline"]["pss_per_session_bytes"] > 0
    assert any(line.startswith("step: 10 sessions") for line in lines)  # progress shown
    saved = json.loads((tmp_path / "density.json").read_text())
    assert saved["sessions_per_core"] == report["sessions_per_core"]
    assert (tmp_path / "density.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Sessions per core" in (tmp_path / "density.md").read_text()
    density = parse_density_report((tmp_path / "density.json").read_text())
    assert density.sessions_per_core == SMOKE.steps[-1]
    assert density.smoke  # so roost capacity --density refuses it
    assert smoke_reason(density) is not None
