"""End-to-end tests of the ``roost`` command line: real builds, real guests."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

import roost
from roost.build import ensure_component
from roost.cli import main
from roost.cluster import haproxy_binary
from roost.manifest import load_manifest

REPO = Path(roost.__file__).resolve().parents[2]
ECHO_MANIFEST = REPO / "examples" / "echo" / "agent.toml"

BENCH_KEYS = (
    "rss_per_resident_agent_bytes",
    "store_bytes_per_hibernated_agent",
    "state_bytes_per_agent",
    "instantiate_us_p50",
    "first_turn_us_p50",
    "wake_us_p50",
    "wake_us_p99",
    "turn_us_p50",
    "cpu_count",
)


@pytest.fixture(scope="session")
def shared_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One build cache for the session, with the echo example already built in it."""
    cache_dir = tmp_path_factory.mktemp("roost-cache")
    ensure_component(load_manifest(ECHO_MANIFEST), cache_dir=cache_dir)
    return cache_dir


@pytest.fixture(autouse=True)
def _use_shared_cache(shared_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROOST_CACHE_DIR", str(shared_cache_dir))


def _run_once(data_dir: Path, message: str, capsys: pytest.CaptureFixture[str]) -> object:
    code = main(
        [
            "run",
            "--manifest",
            str(ECHO_MANIFEST),
            "--message",
            message,
            "--data-dir",
            str(data_dir),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 1, out
    return json.loads(lines[0])


def test_run_message_prints_one_json_line_and_state_survives_restart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run_once(tmp_path, "hello", capsys) == {"replies": [{"echo": "hello", "count": 1}]}
    assert _run_once(tmp_path, "hello", capsys) == {"replies": [{"echo": "hello", "count": 2}]}


def test_run_message_that_is_json_is_sent_as_that_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reply = _run_once(tmp_path, '{"n": [1, 2]}', capsys)
    assert reply == {"replies": [{"echo": {"n": [1, 2]}, "count": 1}]}


def test_run_with_a_missing_manifest_reports_it_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.toml"
    code = main(["run", "--manifest", str(missing), "--message", "hi"])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out == ""
    assert captured.err.startswith("roost: ")
    assert str(missing) in captured.err
    assert "Traceback" not in captured.err


def test_build_with_a_syntax_error_names_the_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "agent.py"
    source.write_text("x = 1\n\ndef broken(:\n    pass\n", encoding="utf-8")
    code = main(["build", str(source), "-o", str(tmp_path / "agent.wasm")])
    captured = capsys.readouterr()
    assert code == 1
    assert f"{source.resolve()}:3:" in captured.err
    assert "Traceback" not in captured.err
    assert not (tmp_path / "agent.wasm").exists()


def test_build_reuses_the_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "echo.wasm"
    code = main(["build", str(ECHO_MANIFEST.with_name("agent.py")), "-o", str(output)])
    assert code == 0
    assert capsys.readouterr().out == f"built {output} (cached)\n"
    assert output.stat().st_size > 0


def _chat(data_dir: Path, transcript: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "roost.cli",
            "run",
            "--manifest",
            str(ECHO_MANIFEST),
            "--data-dir",
            str(data_dir),
        ],
        input=transcript,
        capture_output=True,
        text=True,
        env=dict(os.environ),
        cwd=REPO,
        timeout=120,
        check=False,
    )


def _agent_lines(stdout: str) -> list[object]:
    return [
        json.loads(line.split("agent> ", 1)[1]) for line in stdout.splitlines() if "agent> " in line
    ]


def test_chat_echoes_each_line_until_quit(tmp_path: Path) -> None:
    proc = _chat(tmp_path, 'hi\n{"n": 1}\n/quit\nnot sent\n')
    assert proc.returncode == 0, proc.stderr
    assert "you> " in proc.stdout
    assert _agent_lines(proc.stdout) == [
        {"echo": "hi", "count": 1},
        {"echo": {"n": 1}, "count": 2},
    ]


def test_chat_reports_a_guest_error_and_carries_on(tmp_path: Path) -> None:
    too_big = "x" * (1024 * 1024 + 1)  # the echo's reply passes limits.max_reply_bytes
    proc = _chat(tmp_path, f"{too_big}\nhi\n")  # ends with end of input, not /quit
    assert proc.returncode == 0, proc.stderr
    errors = [line for line in proc.stdout.splitlines() if "error: " in line]
    assert len(errors) == 1
    assert "max_reply_bytes" in errors[0]
    assert _agent_lines(proc.stdout) == [{"echo": "hi", "count": 1}]


def test_bench_wake_prints_every_number(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "wake", "--agents", "20", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 1, out
    result = json.loads(lines[0])
    assert result["agents"] == 20
    assert result["guest_kind"] == "echo (python)"
    assert isinstance(result["python"], str)
    assert isinstance(result["wasmtime"], str)
    for key in BENCH_KEYS:
        assert result[key] > 0, key
    assert result["wake_us_p99"] >= result["wake_us_p50"]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out.startswith("roost ")


def test_run_without_a_manifest_says_where_it_looked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code = main(["run", "--message", "hi"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"no manifest: looked for {tmp_path / 'agent.toml'}" in err
    assert "pass --manifest PATH, or run in the agent's directory" in err


def test_a_manifest_directory_means_its_agent_toml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "run",
            "--manifest",
            str(ECHO_MANIFEST.parent),
            "--message",
            "hi",
            "--data-dir",
            str(tmp_path),
        ]
    )
    assert code == 0
    assert json.loads(capsys.readouterr().out) == {"replies": [{"echo": "hi", "count": 1}]}


def test_token_refuses_a_data_dir_without_the_server_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ROOST_SECRET", raising=False)
    code = main(["token", "echo", "alice", "--data-dir", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out == ""
    assert f"no server secret at {tmp_path / 'secret'}" in captured.err
    assert not (tmp_path / "secret").exists()  # nothing made up

    (tmp_path / "secret").write_text("the-server-secret-of-thirty-two-bytes\n")
    assert main(["token", "echo", "alice", "--data-dir", str(tmp_path)]) == 0
    token = capsys.readouterr().out.strip()
    claims = jwt.decode(
        token, "the-server-secret-of-thirty-two-bytes", algorithms=["HS256"], issuer="roost"
    )
    assert claims["sub"] == "echo/alice"


def test_cluster_proxy_config_prints_a_config_haproxy_accepts_with_one_server_per_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hosts = ["10.1.2.3:8471", "10.1.2.4:8471", "[fd00::5]:8471"]
    args = ["cluster", "proxy-config", "--port", "9470", "--server", f"{hosts[0]},9471"]
    assert main([*args, *(f"--server={h}" for h in hosts[1:])]) == 0
    config = capsys.readouterr().out
    assert "    bind 0.0.0.0:9470\n" in config
    servers = [line.split() for line in config.splitlines() if line.startswith("    server ")]
    named = list(enumerate(hosts, 1))
    assert servers == [
        ["server", "h1", hosts[0], "check", "agent-check", "agent-port", "9471"],
        *(["server", f"h{i}", h, "check"] for i, h in named[1:]),
        *(["server", f"h{i}", h, "track", f"hosts/h{i}"] for i, h in named),
    ]
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    checked = subprocess.run(
        [haproxy_binary(), "-c", "-f", str(path)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize(
    ("servers", "error"),
    [
        ([], "needs the hosts' addresses: --server HOST:PORT[,AGENT_PORT], once per host"),
        (["--server", "10.1.2.3"], "--server '10.1.2.3' is not HOST:PORT[,AGENT_PORT]"),
        (["--server", "10.1.2.3:http"], "--server '10.1.2.3:http' is not HOST:PORT"),
        (["--server", "10.1.2.3:8471,x"], "--server '10.1.2.3:8471,x' is not HOST:PORT"),
    ],
)
def test_cluster_proxy_config_names_a_missing_or_malformed_server(
    servers: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["cluster", "proxy-config", *servers]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert error in captured.err


def test_new_writes_an_agent_and_says_what_next(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["new", "hello", "--dir", str(tmp_path / "hello")]) == 0
    out = capsys.readouterr().out
    assert "agent.py, agent.toml, test_agent.py, README.md, .gitignore" in out
    assert "roost dev" in out
    assert (tmp_path / "hello" / "agent.toml").is_file()
    assert main(["new", "hello", "--dir", str(tmp_path / "hello")]) == 1
    assert "already exists" in capsys.readouterr().err


def test_a_test_file_beside_an_agent_does_not_rebuild_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    agent = tmp_path / "echo"
    agent.mkdir()
    (agent / "agent.py").write_bytes(ECHO_MANIFEST.with_name("agent.py").read_bytes())
    (agent / "agent.toml").write_bytes(ECHO_MANIFEST.read_bytes())
    (agent / "test_agent.py").write_text("def test_nothing():\n    pass\n")
    code = main(["build", str(agent / "agent.py"), "-o", str(tmp_path / "echo.wasm")])
    assert code == 0
    # The echo example was built already; a test file beside a copy of it changes nothing.
    assert capsys.readouterr().out == f"built {tmp_path / 'echo.wasm'} (cached)\n"


def test_serving_freezes_what_each_full_collection_finds_alive() -> None:
    from roost import cli

    threshold = gc.get_threshold()
    cli._settle_collector()
    try:
        kept = [[n] for n in range(1000)]  # tracked objects that outlive the next pass
        frozen = gc.get_freeze_count()
        gc.collect()  # a full pass: what it found alive is frozen after it
        assert gc.get_freeze_count() >= frozen + len(kept)
        gc.collect(1)  # a younger pass does not freeze
        assert cli._freeze_after_full_pass in gc.callbacks
    finally:
        gc.callbacks.remove(cli._freeze_after_full_pass)
        gc.unfreeze()
        gc.set_threshold(*threshold)
