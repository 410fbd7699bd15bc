"""Roost's pytest plugin (entry point ``pytest11: roost``): fixtures that run an agent in a
real host on virtual time. See :mod:`roost.testing` and ``docs/testing.md``.

Fixtures:

- ``roost_host``: a :class:`~roost.testing.HostUnderTest` with the kind of
  ``roost_manifest`` deployed, on a fresh data directory;
- ``agent``: its agent ``KIND/test`` (:class:`~roost.testing.AgentUnderTest`);
- ``fake_llm``: the scripted model provider it talks to (:class:`~roost.testing.FakeLlm`);
- ``roost_manifest``: the manifest to deploy, by default ``agent.toml`` beside the test file
  (or in a directory above it); override the fixture to choose another;
- ``roost_cache_dir``: where builds are cached (``ROOST_CACHE_DIR``, else ``~/.cache/roost``).

Tests that use them run under trio (pytest-trio) with a ``MockClock``, whether or not the
project sets ``trio_mode``. ``--roost-build release`` (or ``roost_build = release`` in the
pytest configuration) tests the production component of a Python agent instead of the dev
runtime.

This module is loaded by every pytest run where roost is installed, so it imports nothing
heavy until a test asks for a fixture.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest

if TYPE_CHECKING:
    from ._fake_llm import FakeLlm
    from ._harness import AgentUnderTest, HostUnderTest

_FIXTURES = frozenset({"roost_host", "agent", "fake_llm"})
_BUILD_MODES = ("dev", "release")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("roost", "Roost agents")
    group.addoption(
        "--roost-build",
        choices=_BUILD_MODES,
        default=None,
        help="how Python agents are built for the roost fixtures: dev (the dev runtime, "
        "default: edits need no build) or release (the production component)",
    )
    parser.addini("roost_build", "dev or release (see --roost-build)", default="dev")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run async tests that use the roost fixtures under trio with a MockClock."""
    for item in items:
        function = getattr(item, "obj", None)
        if not inspect.iscoroutinefunction(function) or not _uses_roost(item):
            continue
        if not item.config.pluginmanager.hasplugin("trio"):
            raise pytest.UsageError(
                f"{item.nodeid} uses roost's fixtures, which run under trio: install "
                "pytest-trio (pip install 'roost[testing]')"
            )
        item.add_marker(pytest.mark.trio(run=_run_with_mock_clock), append=False)


def _uses_roost(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    for name in _FIXTURES & set(info.names_closure):
        definitions = info.name2fixturedefs.get(name) or ()
        if definitions and definitions[-1].func.__module__ == __name__:
            return True
    return False


def _run_with_mock_clock(fn: Any, *, clock: Any = None, instruments: Any = ()) -> Any:
    import trio
    from trio.testing import MockClock

    return trio.run(fn, clock=clock or MockClock(), instruments=instruments)


@pytest.fixture
def roost_manifest(request: pytest.FixtureRequest) -> Path:
    """``agent.toml`` beside the test file, or in the nearest directory above it."""
    start = Path(request.path).parent
    for directory in (start, *start.parents):
        candidate = directory / "agent.toml"
        if candidate.is_file():
            return candidate
        if directory == request.config.rootpath:
            break
    raise pytest.UsageError(
        f"no agent.toml in {start} or above it (up to {request.config.rootpath}); put the "
        "test beside its agent's manifest, or override the roost_manifest fixture"
    )


@pytest.fixture(scope="session")
def roost_cache_dir() -> Path:
    """Where builds and compiled components are cached, shared with ``roost`` itself."""
    from ..config import load_config

    return load_config().cache_dir


@pytest.fixture
def roost_build(request: pytest.FixtureRequest) -> str:
    chosen = request.config.getoption("--roost-build") or request.config.getini("roost_build")
    if chosen not in _BUILD_MODES:
        raise pytest.UsageError(f"roost_build must be dev or release, not {chosen!r}")
    return str(chosen)


@pytest.fixture
async def roost_host(
    roost_manifest: Path,
    roost_cache_dir: Path,
    roost_build: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> AsyncIterator[HostUnderTest]:
    """A real host with the kind of ``roost_manifest`` deployed."""
    from ._harness import open_test_host

    mode: Literal["dev", "release"] = "release" if roost_build == "release" else "dev"
    async with open_test_host(
        roost_manifest,
        data_dir=tmp_path / "roost-data",
        cache_dir=roost_cache_dir,
        build=mode,
        show_progress=partial(_shown_progress, request.config),
    ) as host:
        yield host


@contextmanager
def _shown_progress(config: pytest.Config, label: str) -> Iterator[None]:
    """Progress of a build or compilation the test waits for, shown through pytest's output
    capture: a first test that builds is not silent for half a minute."""
    from .._progress import progress

    capture = config.pluginmanager.getplugin("capturemanager")
    with (
        capture.global_and_fixture_disabled() if capture else nullcontext(),
        progress(label, lead="\n"),
    ):
        yield


@pytest.fixture
def agent(roost_host: HostUnderTest) -> AgentUnderTest:
    """The agent ``KIND/test`` of the kind under test."""
    return roost_host.agent()


@pytest.fixture
def fake_llm(roost_host: HostUnderTest) -> FakeLlm:
    """The scripted model provider the host's llm capability talks to."""
    return roost_host.llm
