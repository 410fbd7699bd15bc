"""README.md's code blocks stay true: every ``sh`` and ``python`` block runs and succeeds,
every ``toml`` block is a valid manifest. A block preceded by ``<!-- not run: why -->`` is
skipped (a server that runs until interrupted, a new virtual environment, ...).

Each block runs on its own in a fresh directory holding the repository's ``examples/``
(the README's commands run from a checkout), with the session's build cache.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from roost.manifest import parse_manifest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
_FENCE = re.compile(r"^```(\w*)\s*$")
_NOT_RUN = re.compile(r"^<!-- not run: (.+) -->$")


@dataclass(frozen=True)
class Block:
    language: str
    text: str
    line: int
    skip: str | None

    @property
    def id(self) -> str:
        return f"{self.language}-line{self.line}"


def readme_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        start = index
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        before = next((lines[i] for i in range(start - 1, -1, -1) if lines[i].strip()), "")
        skip = _NOT_RUN.match(before.strip())
        blocks.append(
            Block(
                match.group(1),
                "\n".join(lines[start + 1 : end]) + "\n",
                start + 1,
                skip.group(1) if skip else None,
            )
        )
        index = end + 1
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_blocks_that_run() -> None:
    runnable = [b for b in BLOCKS if b.language in ("sh", "python") and b.skip is None]
    assert len(runnable) >= 4
    assert all(b.language in ("sh", "python", "toml", "text") for b in BLOCKS)


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.language == "toml"], ids=lambda b: b.id)
def test_manifest_blocks_are_valid(block: Block) -> None:
    parse_manifest(tomllib.loads(block.text), base_dir=ROOT, origin=f"README.md:{block.line}")


@pytest.mark.slow
@pytest.mark.parametrize(
    "block", [b for b in BLOCKS if b.language in ("sh", "python")], ids=lambda b: b.id
)
def test_code_blocks_run(block: Block, tmp_path: Path, cache_dir: Path) -> None:
    if block.skip is not None:
        pytest.skip(block.skip)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {
        **os.environ,
        "ROOST_CACHE_DIR": str(cache_dir),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("ROOST_DATA_DIR", None)
    if block.language == "sh":
        command = ["bash", "-euo", "pipefail", "-c", block.text]
    else:
        script = tmp_path / "block.py"
        script.write_text(block.text, encoding="utf-8")
        command = [sys.executable, str(script)]
    proc = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert proc.returncode == 0, f"README.md:{block.line}\n{proc.stdout}\n{proc.stderr}"
