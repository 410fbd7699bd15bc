"""What goes into a Python agent's build and its content hash (no builds run here)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from roost import BuildError
from roost.build import _digest, explain_failure
from roost.build._sources import agent_sources


def _agent(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path / "agent.py"


def test_own_sources_follow_imports_and_leave_out_the_rest(tmp_path: Path) -> None:
    source = _agent(
        tmp_path,
        {
            "agent.py": "import prompts\nfrom tools import calc\n\ndef later():\n    import lazy\n",
            "prompts/__init__.py": "from . import system\n",
            "prompts/system.py": "TEXT = 'hi'\n",
            "tools/__init__.py": "",
            "tools/calc.py": "from ..prompts import system\n",
            "lazy.py": "import json\n",
            "test_agent.py": "import agent\n",
            "notes.py": "this is not even python (\n",
        },
    )
    sources = agent_sources(source)
    assert [sources.relative(p) for p in sources.files] == [
        "agent.py",
        "lazy.py",
        "prompts/__init__.py",
        "prompts/system.py",
        "tools/__init__.py",
        "tools/calc.py",
    ]
    assert sources.module == "agent"
    assert "json" in sources.imports
    assert sources.packages == ()


def test_installed_packages_are_named_with_their_versions(tmp_path: Path) -> None:
    source = _agent(tmp_path, {"agent.py": "import httpx\nimport not_installed_anywhere\n"})
    sources = agent_sources(source)
    assert ("httpx", importlib.metadata.version("httpx")) in sources.packages
    assert ("not_installed_anywhere", "missing") in sources.packages
    assert "httpx" in sources.imports


def test_a_test_file_beside_the_agent_leaves_the_hash_alone(tmp_path: Path) -> None:
    source = _agent(tmp_path, {"agent.py": "import helper\n", "helper.py": "X = 1\n"})
    caps = ("log",)
    before = _digest(agent_sources(source), caps)
    (tmp_path / "test_agent.py").write_text("def test_x():\n    pass\n")
    (tmp_path / "scratch.py").write_text("print('hello')\n")
    assert _digest(agent_sources(source), caps) == before
    (tmp_path / "helper.py").write_text("X = 2\n")
    assert _digest(agent_sources(source), caps) != before


def test_a_syntax_error_in_an_imported_module_names_its_file_and_line(tmp_path: Path) -> None:
    source = _agent(tmp_path, {"agent.py": "import helper\n", "helper.py": "x = (\n"})
    with pytest.raises(BuildError) as info:
        agent_sources(source)
    assert str(info.value).startswith(f"{tmp_path / 'helper.py'}:1:")


COMPONENTIZE_OUTPUT = """\
Traceback (most recent call last):
  File "<string>", line 1, in <module>
AssertionError: Traceback (most recent call last):
  File "/0/_roost_entry.py", line 10, in <module>
    import agent as _agent_module
  File "/1/agent.py", line 4, in <module>
    undefined_name + x
    ^^^^^^^^^^^^^^
NameError: name 'undefined_name' is not defined


Caused by:
    NameError: name 'undefined_name' is not defined
"""


def test_an_import_error_is_the_agents_traceback_without_the_toolchains(tmp_path: Path) -> None:
    message = explain_failure(COMPONENTIZE_OUTPUT, tmp_path)
    assert message == (
        f"{tmp_path}/agent.py:4: NameError: name 'undefined_name' is not defined\n\n"
        "Traceback (most recent call last):\n"
        f'  File "{tmp_path}/agent.py", line 4, in <module>\n'
        "    undefined_name + x\n"
        "    ^^^^^^^^^^^^^^\n"
        "NameError: name 'undefined_name' is not defined"
    )
