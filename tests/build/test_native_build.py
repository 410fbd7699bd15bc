"""``roost build`` of C and Zig guests: cached, compiler errors with the guest's file and
line, and an ungranted capability is a build error."""

from __future__ import annotations

from pathlib import Path

import pytest

from roost import BuildError
from roost.build import build_agent

from ..conftest import C_ECHO_DIR


def test_native_builds_are_cached(cache_dir: Path, tmp_path: Path) -> None:
    source = C_ECHO_DIR / "agent.c"
    first = build_agent(source, tmp_path / "a.wasm", cache_dir=cache_dir)
    second = build_agent(source, tmp_path / "b.wasm", cache_dir=cache_dir)
    assert second.cached
    assert first.digest == second.digest
    assert (tmp_path / "a.wasm").read_bytes() == (tmp_path / "b.wasm").read_bytes()
    assert first.capabilities == ("log",)


@pytest.mark.parametrize(
    ("name", "body", "line"),
    [
        ("agent.c", '#include "roost.h"\n\nint roost_on_message(x) {\n  return y;\n}\n', 3),
        ("agent.zig", 'const roost = @import("roost");\n\npub fn f() void {\n    x;\n}\n', 4),
    ],
)
def test_compiler_errors_name_file_and_line(
    tmp_path: Path, cache_dir: Path, name: str, body: str, line: int
) -> None:
    source = tmp_path / name
    source.write_text(body)
    with pytest.raises(BuildError) as info:
        build_agent(source, tmp_path / "out.wasm", cache_dir=cache_dir, capabilities=())
    assert str(info.value).startswith(f"{source}:{line}:")
    assert "error:" in str(info.value).splitlines()[0]
    assert not (tmp_path / "out.wasm").exists()


def test_calling_an_ungranted_capability_is_a_build_error(tmp_path: Path, cache_dir: Path) -> None:
    source = C_ECHO_DIR / "agent.c"
    with pytest.raises(BuildError) as info:
        build_agent(source, tmp_path / "out.wasm", cache_dir=cache_dir, capabilities=("kv",))
    assert "roost:agent/log@0.1.0" in str(info.value)
    assert "[capabilities.log]" in str(info.value)
