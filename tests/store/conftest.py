"""The store backends that ``tests/store/test_conformance.py`` runs against: that suite is what a
new store backend must pass.

Each backend is one entry of :data:`BACKENDS`: a factory that opens a store keeping its data
under a given directory. To add a backend, write its factory and add it there; every
conformance test then runs once per backend (the test ids name it: ``test_x[sqlite]``).

A factory's contract:

- given an empty directory, it opens a new, empty store (a server-backed store derives a
  database or schema name from the directory, and may create it);
- opened again on the same directory after the first store was closed, it sees everything
  the first one committed (the reopen tests);
- it closes the store when its context exits.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from roost.store import StateStore, open_sqlite_store
from roost.store.postgres import open_postgres_store

StoreFactory = Callable[[Path], AbstractAsyncContextManager[StateStore]]
"""Opens a store keeping its data under a directory; closes it on exit."""


@asynccontextmanager
async def _sqlite(directory: Path) -> AsyncIterator[StateStore]:
    async with open_sqlite_store(directory / "roost.db") as store:
        yield store


_POSTGRES: list[str] = []
"""The URL of the session's throwaway PostgreSQL server, once started."""


@asynccontextmanager
async def _postgres(directory: Path) -> AsyncIterator[StateStore]:
    # One schema per directory: a new directory is a new, empty store; the same one reopens.
    schema = "t_" + hashlib.sha256(str(directory).encode()).hexdigest()[:24]
    async with open_postgres_store(_POSTGRES[0], schema=schema) as store:
        yield store


BACKENDS: dict[str, StoreFactory] = {
    "sqlite": _sqlite,
    "postgres": _postgres,
}
"""Every store backend, by name. Adding a backend means adding one entry here."""


@pytest.fixture(params=sorted(BACKENDS))
def open_store(request: pytest.FixtureRequest) -> StoreFactory:
    """The backend under test (the one parametrized fixture of the conformance suite)."""
    if request.param == "postgres":
        _POSTGRES[:] = [request.getfixturevalue("postgres_server")]
    return BACKENDS[request.param]


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """Where the test's store keeps its data (an empty directory)."""
    directory = tmp_path / "store"
    directory.mkdir()
    return directory


@pytest.fixture
async def store(open_store: StoreFactory, store_dir: Path) -> AsyncIterator[StateStore]:
    """A new, empty store of the backend under test, closed after the test."""
    async with open_store(store_dir) as opened:
        yield opened
