"""The capacity model and ``roost capacity``."""

from __future__ import annotations

import itertools
import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest

from roost.capacity import (
    GIB,
    IDLE_TIMEOUTS_S,
    MIB,
    PUBLISHED,
    CapacityInputs,
    DensityReport,
    MachineShape,
    apply_density,
    bottleneck,
    cpus_against_concurrency,
    idle_timeout_trade,
    model_capacity,
    parse_bytes,
    parse_count,
    parse_density_report,
    parse_range,
    parse_share,
    resident_share,
    resident_share_after,
    smoke_reason,
)
from roost.cli import main
from roost.errors import ConfigError

SMALL_MACHINE = MachineShape(cores=4, memory_bytes=10 * GIB, reserved_memory_bytes=0)


def _one_significant_figure(value: int) -> int:
    magnitude = 10 ** (len(str(value)) - 1)
    return int(round(value / magnitude) * magnitude)


def _density_report(**overrides: Any) -> dict[str, Any]:
    step = {
        "sessions": 4_000,
        "throughput_rps": 200.0,
        "host_added_p50_ms": 3.0,
        "host_added_p99_ms": 40.0,
        "errors": 0,
        "host_cpu_share": 0.7,
        "host_rss_bytes": 3_000_000_000,
        "resident_agents": 2_500,
        "hibernated_agents": 1_500,
        "slo_met": True,
    }
    report: dict[str, Any] = {
        "sessions_per_core": 2_500,
        "rss_per_session_bytes": 800_000,
        "pss_per_session_bytes": 600_000,
        "steps": [step, {**step, "sessions": 5_000, "host_added_p99_ms": 180.0, "slo_met": False}],
        "machine": {"cpu_count": 2, "memory_bytes": 24 * GIB, "platform": "Linux-x86_64"},
        "baseline": {"rss_per_session_bytes": 40_000_000, "start_ms": 180.0},
        "measured_on": "2026-11-22",
        "harness_version": 3,  # unknown fields are ignored
    }
    report.update(overrides)
    return report


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["capacity", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- the published scenario --------------------------------------------------------------


def test_published_scenario_reproduces_exactly() -> None:
    report = model_capacity()
    assert report.published == PUBLISHED
    assert report.sessions == 24_000_000
    assert (report.cpus_low, report.cpus_high) == (480_000, 960_000)
    # The published 500 K-1 M are these, rounded to one significant figure.
    assert _one_significant_figure(report.cpus_low) == PUBLISHED.cpus_low
    assert _one_significant_figure(report.cpus_high) == PUBLISHED.cpus_high


def test_both_readings_of_the_published_arithmetic() -> None:
    as_published, as_computed = model_capacity().readings
    assert as_published.name == "as published"
    assert as_published.sessions == 24_000_000
    assert as_published.population == 160_000_000  # what 24 M at 15 % implies
    assert as_computed.population == 100_000_000
    assert as_computed.sessions == 15_000_000  # what 100 M at 15 % is
    assert (as_computed.container_best.cpus, as_computed.container_worst.cpus) == (
        300_000,
        600_000,
    )
    notes = " ".join(model_capacity().notes)
    assert "160 M" in notes and "15 M" in notes


def test_roost_cpus_are_the_sessions_over_the_bottleneck() -> None:
    report = model_capacity(CapacityInputs())
    roost = report.readings[0].roost
    assert roost.cpus == math.ceil(24_000_000 / report.bottleneck.sessions_per_cpu)
    assert report.ratio_low == pytest.approx(report.cpus_low / report.roost_cpus, abs=0.1)
    assert report.ratio_high == pytest.approx(report.cpus_high / report.roost_cpus, abs=0.1)


def test_a_population_input_drops_the_stated_sessions(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = _run(capsys, "--json", "--population", "50M", "--concurrency", "10%")
    assert code == 0
    report = json.loads(out)
    assert report["published"] is None
    assert [r["sessions"] for r in report["readings"]] == [5_000_000]
    assert (report["cpus_low"], report["cpus_high"]) == (100_000, 200_000)


# -- the bottleneck ------------------------------------------------------------------------


def test_bounds_follow_their_formulas() -> None:
    inputs = CapacityInputs(
        machine=SMALL_MACHINE,
        resident_bytes_per_session=1 * MIB,
        hibernated_bytes_per_session=1024,
        resident_share=0.5,
        events_per_session_per_s=0.5,
        cpu_ms_per_event=2.0,
        wake_cpu_ms=4.0,
        writes_per_event=2.0,
        store_write_iops=1_000,
    )
    bounds = {b.name: b.sessions_per_host for b in bottleneck(inputs).bounds}
    # RAM / (a x resident + (1 - a) x hibernated)
    assert bounds["memory"] == math.floor(10 * GIB / (0.5 * MIB + 0.5 * 1024))
    # cores x 1000 / (events/s x ms per event), ms per event = a x turn + (1 - a) x wake
    assert bounds["cpu"] == math.floor(4 * 1000 / (0.5 * (0.5 * 2.0 + 0.5 * 4.0)))
    # write IOPS / (events/s x writes per event)
    assert bounds["store"] == math.floor(1_000 / (0.5 * 2.0))
    neck = bottleneck(inputs)
    assert neck.binding == "store"
    assert neck.sessions_per_host == 1_000
    assert neck.sessions_per_cpu == 250


@pytest.mark.parametrize(
    ("changes", "binding"),
    [
        ({}, "store"),  # the measured SQLite rate, one store per machine
        ({"store_write_iops": 1e6}, "memory"),
        ({"resident_share": 0.1, "store_write_iops": 1e6}, "cpu"),
        ({"cpu_ms_per_event": 20.0}, "cpu"),
        ({"store_write_iops": 5_000}, "store"),
        ({"resident_share": 0.1, "writes_per_event": 10.0}, "store"),
        ({"machine": MachineShape(cores=64, memory_bytes=64 * GIB)}, "memory"),
    ],
)
def test_bottleneck_switches_with_the_inputs(changes: dict[str, Any], binding: str) -> None:
    neck = bottleneck(CapacityInputs(**changes))
    assert neck.binding == binding
    assert neck.sessions_per_host == min(b.sessions_per_host for b in neck.bounds)
    assert [b.name for b in neck.bounds] == ["memory", "cpu", "store"]


def test_the_table_prints_all_three_bounds_and_marks_the_binding_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = _run(capsys, "--resident-share", "10%", "--store-write-iops", "1000000")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert set(lines) >= {"memory", "cpu", "store"}
    assert "<- binds" in lines["cpu"]
    assert "<- binds" not in lines["memory"] + lines["store"]
    assert "the cpu bound binds" in out
    assert "as published" in out and "as computed" in out


def test_a_machine_too_small_for_one_session_is_a_clear_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = _run(capsys, "--machine-memory", "1GiB")
    assert code == 1
    assert "holds no session" in err and "memory bound" in err


# -- hibernation: the resident share from an idle timeout -------------------------------


def test_resident_share_from_an_idle_timeout() -> None:
    # One event every 20 s, hibernating after 60 s idle: lambda x T = 3.
    assert resident_share_after(60, 0.05) == pytest.approx(1 - math.exp(-3))
    assert resident_share_after(60, 0.05) == pytest.approx(0.950213, abs=1e-6)
    # E[min(G, T)] / E[G] for exponential gaps, by the midpoint rule: the same share.
    rate, timeout, steps = 0.05, 60.0, 60_000
    dt = timeout / steps
    resident_time = sum(math.exp(-rate * (i + 0.5) * dt) * dt for i in range(steps))
    assert resident_time / (1 / rate) == pytest.approx(resident_share_after(timeout, rate))
    assert resident_share_after(1e6, 0.05) == 1.0
    assert resident_share_after(0.01, 0.05) == pytest.approx(0.05 * 0.01, rel=1e-3)

    inputs = CapacityInputs(
        machine=SMALL_MACHINE,
        resident_bytes_per_session=1 * MIB,
        hibernated_bytes_per_session=1024,
        events_per_session_per_s=0.05,
        idle_timeout_s=60,
        cpu_ms_per_event=2.0,
        wake_cpu_ms=4.0,
    )
    share = resident_share(inputs)
    assert (share.source, share.idle_timeout_s, share.events_per_session_per_s) == (
        "idle_timeout",
        60,
        0.05,
    )
    a = 1 - math.exp(-3)
    neck = bottleneck(inputs)
    assert neck.resident_share == pytest.approx(a)
    bounds = {b.name: b.sessions_per_host for b in neck.bounds}
    # The same a in both bounds: resident for a of the time, a wake for 1 - a of events.
    assert bounds["memory"] == math.floor(10 * GIB / (a * MIB + (1 - a) * 1024))
    assert bounds["cpu"] == math.floor(4 * 1000 / (0.05 * (a * 2.0 + (1 - a) * 4.0)))
    # The same figures as the share given outright.
    given = bottleneck(inputs.model_copy(update={"idle_timeout_s": None, "resident_share": a}))
    assert [b.sessions_per_host for b in given.bounds] == list(bounds.values())


def test_where_the_resident_share_came_from() -> None:
    assert resident_share(CapacityInputs()).model_dump() == {
        "value": 1.0,
        "source": "default",
        "idle_timeout_s": None,
        "events_per_session_per_s": None,
        "explanation": "default: every session resident",
    }
    given = resident_share(CapacityInputs(resident_share=0.25))
    assert (given.value, given.source) == (0.25, "given")
    derived = resident_share(CapacityInputs(idle_timeout_s=30))
    assert derived.source == "idle_timeout"
    assert derived.explanation.startswith("1 - exp(-0.1 events/s x 30 s idle timeout)")


def test_the_idle_timeout_trade_runs_memory_against_wake_cpu() -> None:
    inputs = CapacityInputs(
        machine=SMALL_MACHINE,
        events_per_session_per_s=0.02,
        idle_timeout_s=45,
        cpu_ms_per_event=2.0,
        wake_cpu_ms=20.0,
        store_write_iops=1e9,
    )
    points = idle_timeout_trade(inputs)
    assert [p.idle_timeout_s for p in points] == sorted([*IDLE_TIMEOUTS_S, 45])
    assert [p.idle_timeout_s for p in points if p.given] == [45]
    for shorter, longer in itertools.pairwise(points):
        assert longer.resident_share > shorter.resident_share
        assert longer.memory_per_session_bytes > shorter.memory_per_session_bytes
        assert longer.cpu_ms_per_event < shorter.cpu_ms_per_event
        assert longer.bound_sessions_per_host["memory"] <= shorter.bound_sessions_per_host["memory"]
        assert longer.bound_sessions_per_host["cpu"] >= shorter.bound_sessions_per_host["cpu"]
    for point in points:
        assert point.sessions_per_host == min(point.bound_sessions_per_host.values())
        assert point.bound_sessions_per_host[point.binding] == point.sessions_per_host
    # The given timeout's row is the report's own bottleneck.
    report = model_capacity(inputs)
    assert report.idle_timeouts == points
    [given] = [p for p in points if p.given]
    assert given.sessions_per_host == report.bottleneck.sessions_per_host
    assert given.memory_per_session_bytes == report.bottleneck.memory_per_session_bytes
    # Short timeouts spend CPU on wakes, long ones memory on idle agents.
    assert (points[0].binding, points[-1].binding) == ("cpu", "memory")


def test_the_trade_shows_a_timeout_whose_machine_holds_no_session() -> None:
    tiny = MachineShape(cores=1, memory_bytes=1 * MIB, reserved_memory_bytes=0)
    inputs = CapacityInputs(
        machine=tiny,
        resident_bytes_per_session=2 * MIB,
        hibernated_bytes_per_session=0,
        events_per_session_per_s=0.01,
        idle_timeout_s=10,
    )
    points = model_capacity(inputs).idle_timeouts
    assert points[0].sessions_per_host == 5  # 1 MiB / ((1 - e^-0.1) x 2 MiB)
    assert points[-1].sessions_per_host == 0


def test_resident_share_and_idle_timeout_are_exclusive(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["capacity", "--resident-share", "50%", "--idle-timeout", "60"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--idle-timeout" in err and "--resident-share" in err
    with pytest.raises(ValueError, match=r"--resident-share.*--idle-timeout"):
        CapacityInputs(resident_share=0.5, idle_timeout_s=60)
    with pytest.raises(SystemExit) as exit_info:
        main(["capacity", "--idle-timeout", "0"])
    assert exit_info.value.code == 2
    assert "above 0" in capsys.readouterr().err


def test_idle_timeout_in_the_json_report(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "--json", "--idle-timeout", "60", "--events-per-s", "0.05")
    assert code == 0
    report = json.loads(out)
    assert report["inputs"]["idle_timeout_s"] == 60
    assert report["inputs"]["resident_share"] is None
    share = report["resident_share"]
    assert set(share) == {
        "value",
        "source",
        "idle_timeout_s",
        "events_per_session_per_s",
        "explanation",
    }
    assert share["value"] == pytest.approx(0.9502, abs=1e-4)
    assert (share["source"], share["idle_timeout_s"], share["events_per_session_per_s"]) == (
        "idle_timeout",
        60,
        0.05,
    )
    assert report["bottleneck"]["resident_share"] == share["value"]
    points = report["idle_timeouts"]
    assert [p["idle_timeout_s"] for p in points] == list(IDLE_TIMEOUTS_S)  # 60 s is one
    for point in points:
        assert set(point) == {
            "idle_timeout_s",
            "resident_share",
            "memory_per_session_bytes",
            "cpu_ms_per_event",
            "bound_sessions_per_host",
            "sessions_per_host",
            "binding",
            "given",
        }
        assert set(point["bound_sessions_per_host"]) == {"memory", "cpu", "store"}
    assert [p["given"] for p in points] == [p["idle_timeout_s"] == 60 for p in points]

    code, out, _ = _run(capsys, "--json", "--resident-share", "25%")
    report = json.loads(out)
    assert (report["resident_share"]["source"], report["resident_share"]["value"]) == (
        "given",
        0.25,
    )
    assert report["idle_timeouts"] == []
    code, out, _ = _run(capsys, "--json")
    assert json.loads(out)["resident_share"]["source"] == "default"


def test_idle_timeout_in_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "--idle-timeout", "60", "--events-per-s", "0.05")
    assert code == 0
    assert "resident share: 95.0% (1 - exp(-0.05 events/s x 60 s idle timeout)" in out
    rows = {
        line.split()[0]: line
        for line in out.splitlines()
        if line.startswith("  ") and line.split()[1:2] == ["s"]
    }
    assert list(rows) == ["10", "30", "60", "120", "300", "600"]
    assert rows["60"].endswith("<- given")
    assert "95.0%" in rows["60"]
    code, out, _ = _run(capsys, "--resident-share", "25%")
    assert "resident share: 25.0% (given)" in out
    assert "Idle timeouts" not in out


def test_a_measured_figure_leaves_the_resident_share_out() -> None:
    report = DensityReport.model_validate(_density_report())
    inputs = apply_density(CapacityInputs(idle_timeout_s=60), report)
    notes = " ".join(model_capacity(inputs).notes)
    assert "does not enter the memory and CPU bounds" in notes
    assert "does not enter" not in " ".join(model_capacity(CapacityInputs()).notes)


# -- density reports -------------------------------------------------------------------------


def test_density_report_overrides_the_measured_defaults() -> None:
    report = DensityReport.model_validate(_density_report())
    inputs = apply_density(CapacityInputs(machine=SMALL_MACHINE), report, name="run.json")
    neck = bottleneck(inputs)
    bounds = {b.name: b for b in neck.bounds}
    assert bounds["cpu"].sessions_per_host == 4 * 2_500
    assert bounds["cpu"].measured
    assert bounds["memory"].sessions_per_host == math.floor(10 * GIB / 600_000)  # PSS wins
    assert bounds["memory"].measured
    assert neck.binding == "cpu"
    assert inputs.container_memory_per_session_bytes == 40_000_000  # the baseline's
    assert "run.json" in inputs.roost_figures


def test_density_report_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "density.json"
    path.write_text(json.dumps(_density_report(pss_per_session_bytes=None)))
    code, out, _ = _run(capsys, "--json", "--density", str(path), "--machine-cores", "2")
    assert code == 0
    report = json.loads(out)
    bounds = {b["name"]: b for b in report["bottleneck"]["bounds"]}
    assert bounds["cpu"]["sessions_per_host"] == 5_000
    assert report["bottleneck"]["memory_per_session_bytes"] == 800_000  # RSS without PSS
    assert str(path) in report["inputs"]["roost_figures"]

    # A flag still wins over the report.
    code, out, _ = _run(capsys, "--json", "--density", str(path), "--sessions-per-core", "100")
    assert code == 0
    assert json.loads(out)["inputs"]["sessions_per_core"] == 100


def test_invalid_density_report_names_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _density_report()
    del bad["sessions_per_core"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    code, _, err = _run(capsys, "--density", str(path))
    assert code == 1
    assert "sessions_per_core" in err
    with pytest.raises(ConfigError, match="steps"):
        parse_density_report(json.dumps(_density_report(steps="many")))
    code, _, err = _run(capsys, "--density", str(tmp_path / "missing.json"))
    assert code == 1
    assert "missing.json" in err


def _smoke_step(sessions: int) -> dict[str, Any]:
    return {
        "sessions": sessions,
        "throughput_rps": 10.0,
        "host_added_p50_ms": 2.0,
        "host_added_p99_ms": 9.0,
        "errors": 0,
        "host_cpu_share": 0.05,
        "host_rss_bytes": 200_000_000,
        "resident_agents": sessions,
        "hibernated_agents": 0,
        "slo_met": True,
    }


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"smoke": True}, "it is a smoke run's report"),
        (
            {"steps": [_smoke_step(10), _smoke_step(20)], "sessions_per_core": 20},
            "its largest step held 20 sessions",
        ),
        ({"settings": {"step_s": 8.0}}, "its steps lasted 8 s"),
    ],
)
def test_a_smoke_report_is_refused_unless_forced(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    overrides: dict[str, Any],
    reason: str,
) -> None:
    path = tmp_path / "density.json"
    path.write_text(json.dumps(_density_report(**overrides)))
    code, out, err = _run(capsys, "--json", "--density", str(path))
    assert code == 1
    assert out == ""
    assert reason in err
    assert "--force" in err and "roost bench density" in err
    code, out, _ = _run(capsys, "--json", "--density", str(path), "--force")
    assert code == 0
    assert json.loads(out)["inputs"]["sessions_per_core"] == overrides.get(
        "sessions_per_core", 2_500
    )


def test_a_smoke_report_whose_steps_all_met_the_slo_says_it_is_only_a_floor() -> None:
    steps = [_smoke_step(10), _smoke_step(20)]
    report = DensityReport.model_validate(_density_report(steps=steps, smoke=True))
    assert smoke_reason(report) == (
        "it is a smoke run's report (roost bench density --smoke), and no step broke the "
        "SLO: 20 sessions per core is a floor, not a limit"
    )
    assert smoke_reason(DensityReport.model_validate(_density_report())) is None


# -- output --------------------------------------------------------------------------------


def test_json_with_no_arguments_is_the_published_scenario(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = _run(capsys, "--json")
    assert code == 0
    report = json.loads(out)
    assert (report["sessions"], report["cpus_low"], report["cpus_high"]) == (
        24_000_000,
        480_000,
        960_000,
    )
    assert {
        "roost_cpus",
        "roost_machines",
        "ratio_low",
        "ratio_high",
        "binding",
        "readings",
        "bottleneck",
        "resident_share",
        "idle_timeouts",
        "published",
        "notes",
        "inputs",
    } <= set(report)
    reading = report["readings"][0]
    for side in ("container_best", "container_worst", "roost"):
        assert set(reading[side]) == {
            "sessions_per_cpu",
            "cpus",
            "memory_bytes",
            "machines",
            "usd_per_month",
        }
    assert set(reading["ratio"]) == {
        "cpus_low",
        "cpus_high",
        "machines_low",
        "machines_high",
        "cost_low",
        "cost_high",
    }


def test_plot_is_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "capacity.png"
    code, _, err = _run(capsys, "--plot", str(path))
    assert code == 0
    assert str(path) in err
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (800, 500)
    assert data[-8:-4] == b"IEND"


def test_curve_matches_the_model_at_the_scenario_concurrency() -> None:
    inputs = CapacityInputs(stated_sessions=None)
    [point] = cpus_against_concurrency(inputs, [0.15])
    report = model_capacity(inputs)
    assert point.sessions == report.sessions == 15_000_000
    assert (point.container_cpus_low, point.container_cpus_high) == (300_000, 600_000)
    assert point.roost_cpus == report.roost_cpus
    curve = cpus_against_concurrency(inputs, [0.05, 0.1, 0.2])
    assert [p.roost_cpus for p in curve] == sorted(p.roost_cpus for p in curve)


# -- parsing -------------------------------------------------------------------------------


def test_quantities_parse_as_people_write_them() -> None:
    assert parse_count("100M") == 100_000_000
    assert parse_count("160_000_000") == 160_000_000
    assert parse_count("2.5k") == 2_500
    assert parse_share("15%") == parse_share("0.15") == pytest.approx(0.15)
    assert parse_range("25-50") == (25, 50)
    assert parse_range("40") == (40, 40)
    assert parse_bytes("128GiB") == 128 * GIB
    assert parse_bytes("1.3 MB") == 1_300_000
    assert parse_bytes("1365213") == 1_365_213
    for bad, parse in [("lots", parse_count), ("150%", parse_share), ("50-25", parse_range)]:
        with pytest.raises(ValueError):
            parse(bad)


def test_bad_flags_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["capacity", "--concurrency", "150%"])
    assert exit_info.value.code == 2
    assert "between 0 and 1" in capsys.readouterr().err
