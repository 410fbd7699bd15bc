"""The embedding API is exactly what ``host/__init__.py`` re-exports."""

from __future__ import annotations

import inspect

import roost
from roost import errors

EXPECTED = {
    "AgentAddress",
    "AgentStatus",
    "ApprovalInfo",
    "EventTiming",
    "Host",
    "HostConfig",
    "HostStatistics",
    "KindInfo",
    "Limits",
    "LlmProvider",
    "Manifest",
    "load_config",
    "load_manifest",
    "open_host",
}


def test_exports_are_the_embedding_api_and_every_error() -> None:
    public = {name for name in vars(roost) if not name.startswith("_")} - {"annotations"}
    error_names = {
        name
        for name, obj in vars(errors).items()
        if inspect.isclass(obj) and issubclass(obj, errors.RoostError)
    }
    modules = {name for name, obj in vars(roost).items() if inspect.ismodule(obj)}
    assert public - modules == EXPECTED | error_names
