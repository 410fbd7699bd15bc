"""Guest errors that point home: encoding errors name the value's path and type; guest
tracebacks name the agent's files by their real paths, with their source lines."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from roost._tracebacks import with_source_paths
from roost_sdk._context import pack, unencodable


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"tags": {"a"}}, "state['tags'] is a set; use a list"),
        ({"when": datetime.datetime(2026, 1, 1)}, "state['when'] is a datetime; use a unix"),
        ({"a": [1, {"b": (2, frozenset())}]}, "state['a'][1]['b'][1] is a frozenset; use a list"),
        ({"n": 2**70}, "state['n'] is an int too large for msgpack (64 bits); use a str"),
        ({frozenset({1}): "x"}, "state has a key frozenset({1}) of type frozenset; use str keys"),
        ({"o": object()}, "state['o'] is an object; convert it to one of those types"),
    ],
)
def test_an_unencodable_value_is_named_by_its_path(value: object, problem: str) -> None:
    assert (unencodable(value, "state") or "").startswith(problem)
    with pytest.raises(TypeError) as info:
        pack(value, "state")
    assert str(info.value).startswith(problem)


def test_what_msgpack_carries_is_fine() -> None:
    value = {"a": [1, 2.5, None, True, "x", b"y", (1, 2)], 3: {"deep": [[[]]]}}
    assert unencodable(value, "state") is None
    assert pack(value, "state")


GUEST_TRACEBACK = """\
Traceback (most recent call last):
  File "agent.py", line 3, in on_message
  File "tools/calc.py", line 2, in add
  File "roost_sdk/_context.py", line 40, in pack
  File "/python/lib/python3.14/json/__init__.py", line 10, in dumps
ValueError: nope
"""


def test_guest_tracebacks_get_real_paths_and_source_lines(tmp_path: Path) -> None:
    (tmp_path / "agent.py").write_text("import tools\n\nvalue = tools.calc.add(1)\n")
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "calc.py").write_text("def add(x):\n    return x + '1'\n")
    assert with_source_paths(GUEST_TRACEBACK, tmp_path) == (
        "Traceback (most recent call last):\n"
        f'  File "{tmp_path}/agent.py", line 3, in on_message\n'
        "    value = tools.calc.add(1)\n"
        f'  File "{tmp_path}/tools/calc.py", line 2, in add\n'
        "    return x + '1'\n"
        '  File "roost_sdk/_context.py", line 40, in pack\n'
        '  File "/python/lib/python3.14/json/__init__.py", line 10, in dumps\n'
        "ValueError: nope\n"
    )
