"""``roost build`` of Python guests: cached, and errors name the guest's file and line."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from roost import BuildError
from roost.build import build_agent

from ..conftest import ECHO_DIR

HEADER = "from roost_sdk import Agent, Context\n\n"


def _write(tmp_path: Path, body: str) -> Path:
    source = tmp_path / "agent.py"
    source.write_text(HEADER + body)
    return source


def test_builds_are_cached(cache_dir: Path, tmp_path: Path) -> None:
    source = ECHO_DIR / "agent.py"
    first = build_agent(source, tmp_path / "a.wasm", cache_dir=cache_dir)
    second = build_agent(source, tmp_path / "b.wasm", cache_dir=cache_dir)
    assert second.cached
    assert first.digest == second.digest
    assert (tmp_path / "a.wasm").read_bytes() == (tmp_path / "b.wasm").read_bytes()


def test_a_reader_never_sees_a_part_of_an_output_being_written_again(
    cache_dir: Path, tmp_path: Path
) -> None:
    """Hosts started side by side from one manifest each build it (from the cache) into
    the same output while the others read it: a reader gets the whole component, never the
    part a copy in progress has written."""
    source = ECHO_DIR / "agent.py"
    output = tmp_path / "echo.wasm"
    whole = cache_dir / "build" / f"{build_agent(source, output, cache_dir=cache_dir).digest}.wasm"
    expected = whole.read_bytes()
    seen: list[int] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.append(len(output.read_bytes()))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(20):
            assert build_agent(source, output, cache_dir=cache_dir).cached
    finally:
        stop.set()
        reader.join()
    assert len(seen) > 20
    assert set(seen) == {len(expected)}
    assert output.read_bytes() == expected


def test_syntax_error_names_file_and_line(tmp_path: Path, cache_dir: Path) -> None:
    source = _write(tmp_path, "class A(Agent):\n    def on_message(self, ctx, msg)\n        pass\n")
    with pytest.raises(BuildError) as info:
        build_agent(source, tmp_path / "out.wasm", cache_dir=cache_dir)
    assert str(info.value).startswith(f"{source}:4:")


def test_error_at_import_names_file_and_line(tmp_path: Path, cache_dir: Path) -> None:
    source = _write(tmp_path, "x = 1\nundefined_name + x\n")
    with pytest.raises(BuildError) as info:
        build_agent(source, tmp_path / "out.wasm", cache_dir=cache_dir)
    assert str(info.value).startswith(f"{source}:4: NameError")


def test_module_without_an_agent_class_is_refused(tmp_path: Path, cache_dir: Path) -> None:
    source = _write(tmp_path, "x = 1\n")
    with pytest.raises(BuildError) as info:
        build_agent(source, tmp_path / "out.wasm", cache_dir=cache_dir)
    assert "expected exactly one subclass of roost_sdk.Agent" in str(info.value)


def test_unknown_capability_is_refused(tmp_path: Path, cache_dir: Path) -> None:
    source = _write(tmp_path, "class A(Agent):\n    pass\n")
    with pytest.raises(BuildError, match="unknown capabilities telepathy"):
        build_agent(source, tmp_path / "out.wasm", cache_dir=cache_dir, capabilities=("telepathy",))
