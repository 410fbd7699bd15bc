"""The capability registry is discovered from ``host/capabilities/``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from roost import ManifestError, capabilities
from roost.abi import WIT_DIR
from roost.capabilities import registry, validate_grants


def test_every_capability_file_has_one_matching_class_with_documented_calls() -> None:
    caps = registry()
    files = {
        p.stem
        for p in Path(capabilities.__file__).parent.glob("*.py")
        if not p.stem.startswith("_")
    }
    assert set(caps) == files
    wit = WIT_DIR.joinpath("roost-agent.wit").read_text()
    for name, cls in caps.items():
        assert cls.name == name
        assert cls.__doc__
        block = re.search(rf"interface {name} \{{(.*?)\n\}}", wit, re.S)
        assert block, f"no WIT interface for {name}"
        wit_funcs = set(re.findall(r"^\s*([a-z][a-z0-9-]*): func", block.group(1), re.M))
        assert set(cls.host_call_names()) == wit_funcs


def test_unknown_capability_and_unknown_grant_keys_are_rejected() -> None:
    with pytest.raises(ManifestError) as info:
        validate_grants({"telepathy": {}, "kv": {"max_value_byte": 3}, "timers": {}})
    message = str(info.value)
    assert "unknown capability 'telepathy'" in message
    assert "capabilities.kv.max_value_byte: unknown key" in message
    assert validate_grants({"timers": {"max_sleep_s": 5}})["timers"].max_sleep_s == 5  # type: ignore[attr-defined]
