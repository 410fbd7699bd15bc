"""The Python SDK's tools: a typed function's JSON schema from its hints and docstring, and
how a call's JSON arguments reach it. (The loop itself runs in real guests: the toolbox
and notes_mcp examples, tests/test_examples_act.py.)"""

from __future__ import annotations

import enum
from typing import Any, Literal

import pytest

from roost_sdk import Context, Tool, tool


class Unit(enum.Enum):
    CELSIUS = "c"
    FAHRENHEIT = "f"


def weather(
    ctx: Context,
    city: str,
    days: int = 1,
    unit: Unit = Unit.CELSIUS,
    detail: Literal["short", "long"] | None = None,
    scale: float = 1.0,
    tags: list[str] | None = None,
) -> dict[str, Any]:
    """The weather in a city.

    Say which city; the rest is optional.

    Args:
        city: The city's name.
        days: How many days ahead,
            at most 7.
        unit (Unit): Celsius or Fahrenheit.
    """
    return {"ctx": ctx, "city": city, "days": days, "unit": unit, "scale": scale}


def test_the_schema_comes_from_hints_and_the_docstring() -> None:
    spec = Tool.from_function(weather).spec()
    assert spec == {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "The weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "The city's name."},
                    "days": {
                        "type": "integer",
                        "description": "How many days ahead, at most 7.",
                        "default": 1,
                    },
                    "unit": {
                        "enum": ["c", "f"],
                        "description": "Celsius or Fahrenheit.",
                        "default": "c",  # the member's value: JSON, not the member
                    },
                    "detail": {"enum": ["short", "long"]},
                    "scale": {"type": "number", "default": 1.0},
                    "tags": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["city"],
            },
        },
    }


def test_reST_parameters_and_a_name_given_to_the_decorator() -> None:
    @tool(name="sum_two")
    def add(a: int, b: int) -> int:
        """Add two integers.

        :param a: The first.
        :param int b: The second.
        """
        return a + b

    assert isinstance(add, Tool)
    assert add.name == "sum_two"
    assert add.parameters["properties"]["b"] == {"type": "integer", "description": "The second."}


def test_a_call_gets_the_context_and_its_arguments_converted() -> None:
    ctx = Context.__new__(Context)  # the handler's context, passed through as it is
    called = Tool.from_function(weather).call(ctx, {"city": "Oslo", "unit": "f", "scale": 2})
    assert called == {"ctx": ctx, "city": "Oslo", "days": 1, "unit": Unit.FAHRENHEIT, "scale": 2.0}
    assert isinstance(called["scale"], float)


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({}, "missing arguments city"),
        ({"city": "Oslo", "when": "now"}, "unknown arguments when"),
        ({"city": "Oslo", "unit": "kelvin"}, "'kelvin' is not a valid Unit"),
    ],
)
def test_arguments_the_function_cannot_take_raise(arguments: dict[str, Any], error: str) -> None:
    with pytest.raises((TypeError, ValueError), match=error):
        Tool.from_function(weather).call(Context.__new__(Context), arguments)


def test_variadic_parameters_are_refused() -> None:
    def anything(*args: int) -> None:
        """Anything."""

    with pytest.raises(TypeError, match=r"\*args and \*\*kwargs are not tools"):
        Tool.from_function(anything)
