"""``roost new``: every template writes an agent that builds and passes its own tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from roost import ConfigError
from roost.scaffold import LANGUAGES, available, new_agent

COMBINATIONS = [(lang, template) for lang in LANGUAGES for template in available(lang)]


def test_the_templates_there_are() -> None:
    assert COMBINATIONS == [
        ("python", "echo"),
        ("python", "chat"),
        ("python", "tools"),
        ("c", "echo"),
        ("c", "chat"),
        ("zig", "echo"),
    ]


def test_an_agent_has_its_source_manifest_test_and_readme(tmp_path: Path) -> None:
    made = new_agent("my-helper", template="tools", directory=tmp_path / "h")
    assert sorted(str(f) for f in made.files) == [
        ".gitignore",
        "README.md",
        "agent.py",
        "agent.toml",
        "arithmetic.py",
        "test_agent.py",
    ]
    agent = (tmp_path / "h" / "agent.py").read_text()
    assert "class MyHelper(Agent):" in agent
    assert 'name = "my-helper"' in (tmp_path / "h" / "agent.toml").read_text()
    assert "{{" not in "".join(p.read_text() for p in (tmp_path / "h").iterdir())


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("bad name!", {}, "invalid kind name"),
        ("ok", {"lang": "zig", "template": "chat"}, "no 'chat' template for zig; zig has echo"),
        ("ok", {"lang": "rust"}, "no language 'rust'"),
    ],
)
def test_what_cannot_be_made_is_refused(
    tmp_path: Path, name: str, options: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        new_agent(name, directory=tmp_path / "x", **options)


def test_a_directory_with_files_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already exists and is not empty"):
        new_agent("hello", directory=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def _env(cache_dir: Path) -> dict[str, str]:
    return {**os.environ, "ROOST_CACHE_DIR": str(cache_dir)}


@pytest.mark.slow
@pytest.mark.parametrize(("lang", "template"), COMBINATIONS)
def test_a_new_agent_passes_its_own_tests(
    tmp_path: Path, cache_dir: Path, lang: str, template: str
) -> None:
    agent = new_agent(f"{lang}-{template}", template=template, lang=lang, directory=tmp_path / "a")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=agent.directory,
        env=_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " passed" in proc.stdout


@pytest.mark.slow
def test_a_new_agent_builds_for_production_and_runs(tmp_path: Path, cache_dir: Path) -> None:
    agent = new_agent("hello", directory=tmp_path / "hello").directory
    proc = subprocess.run(
        [sys.executable, "-m", "roost.cli", "run", "--message", "hi"],
        cwd=agent,
        env=_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"replies": [{"echo": "hi", "count": 1}]}
    assert (agent / "hello.wasm").is_file()
