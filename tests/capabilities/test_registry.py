"""The capability registry, the WIT world and the three guest SDKs agree.

The registry is discovered from ``host/roost/capabilities/``; the WIT world is
``roost_sdk/wit/roost-agent.wit``. Every capability has a WIT interface whose functions
are exactly its host calls, the ``agent`` world imports every capability, the Python SDK
calls every host call, and the C and Zig SDKs call nothing the WIT does not declare.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import roost_sdk
from roost import ManifestError, capabilities
from roost.abi import WIT_DIR
from roost.capabilities import registry, validate_grants

SDK_DIR = Path(roost_sdk.__file__).parent


def _wit() -> str:
    return WIT_DIR.joinpath("roost-agent.wit").read_text()


def _wit_interfaces() -> dict[str, set[str]]:
    """Interface -> its functions, for every interface of the WIT package but ``types``."""
    interfaces = {}
    for name, body in re.findall(r"^interface ([a-z][a-z0-9-]*) \{(.*?)\n\}", _wit(), re.S | re.M):
        if name != "types":
            interfaces[name] = set(re.findall(r"^\s*([a-z][a-z0-9-]*): func", body, re.M))
    return interfaces


def test_every_capability_file_holds_one_class_named_as_the_file() -> None:
    caps = registry()
    files = {
        p.stem
        for p in Path(capabilities.__file__).parent.glob("*.py")
        if not p.stem.startswith("_")
    }
    assert set(caps) == files
    for name, cls in caps.items():
        assert cls.name == name
        assert cls.__doc__, f"{name}: document the capability"


def test_the_registry_implements_exactly_the_wit_interfaces() -> None:
    interfaces = _wit_interfaces()
    assert set(interfaces) == set(registry())
    for name, cls in registry().items():
        assert set(cls.host_call_names()) == interfaces[name], name


def test_the_full_world_imports_every_capability() -> None:
    world = re.search(r"^world agent \{(.*?)\n\}", _wit(), re.S | re.M)
    assert world is not None
    assert set(re.findall(r"^\s*import ([a-z][a-z0-9-]*);", world.group(1), re.M)) == set(
        registry()
    )


def _python_sdk_calls() -> set[tuple[str, str]]:
    calls = set()
    for path in SDK_DIR.glob("*.py"):
        text = path.read_text()
        # _imports("kv").get(...), and `timers = _imports("timers")` ... `timers.schedule(`
        calls |= set(re.findall(r'_imports\("([a-z]+)"\)\.([a-z_]+)\(', text))
        for alias, interface in re.findall(r'(\w+) = _imports\("([a-z]+)"\)', text):
            calls |= {(interface, f) for f in re.findall(rf"\b{alias}\.([a-z_]+)\(", text)}
        # _start("llm", "chat", ...): async ops started by name
        calls |= set(re.findall(r'_start\(\s*"([a-z]+)",\s*"([a-z_]+)"', text))
    return {(i, f.replace("_", "-")) for i, f in calls if f[0].islower() and i != "types"}


def test_the_python_sdk_calls_every_host_call() -> None:
    declared = {(i, f) for i, fs in _wit_interfaces().items() for f in fs}
    assert _python_sdk_calls() == declared


def _c_sdk_imports() -> set[tuple[str, str]]:
    text = (SDK_DIR / "c" / "roost.c").read_text()
    return set(re.findall(r'ROOST_IMPORT\("([a-z]+)", "([a-z-]+)"\)', text))


def test_the_c_sdk_imports_only_declared_host_calls() -> None:
    declared = {(i, f) for i, fs in _wit_interfaces().items() for f in fs}
    imports = _c_sdk_imports()
    assert imports, "no imports found in roost.c"
    assert imports <= declared


def _c_host_call_wrappers() -> set[str]:
    """The public C SDK functions whose bodies call a host import (``roost__*``)."""
    text = (SDK_DIR / "c" / "roost.c").read_text()
    wrappers = set()
    for match in re.finditer(
        r"^[a-z][^;{]*?\b(roost_[a-z_0-9]+)\([^;{]*\)\s*\{(.*?)^\}", text, re.S | re.M
    ):
        name, body = match.groups()
        if re.search(r"\broost__[a-z]+_[a-z_]+\(", body):
            wrappers.add(name)
    return wrappers


def test_the_zig_sdk_wraps_every_host_call_of_the_c_sdk() -> None:
    header = (SDK_DIR / "c" / "roost.h").read_text()
    zig = (SDK_DIR / "zig" / "roost.zig").read_text()
    public = set(re.findall(r"\b(roost_[a-z_0-9]+)\(", header))
    wrappers = _c_host_call_wrappers() & public
    assert wrappers, "no host-call wrappers found in roost.c"
    zig_externs = set(re.findall(r"^extern fn (roost_[a-z_0-9]+)\(", zig, re.M))
    assert zig_externs <= public, "roost.zig declares functions roost.h does not have"
    assert wrappers <= zig_externs, f"roost.zig does not wrap {sorted(wrappers - zig_externs)}"


def test_unknown_capability_and_unknown_grant_keys_are_rejected() -> None:
    with pytest.raises(ManifestError) as info:
        validate_grants({"telepathy": {}, "kv": {"max_value_byte": 3}, "timers": {}})
    message = str(info.value)
    assert "unknown capability 'telepathy'" in message
    assert "capabilities.kv.max_value_byte: unknown key" in message
    assert validate_grants({"timers": {"max_sleep_s": 5}})["timers"].max_sleep_s == 5  # type: ignore[attr-defined]
