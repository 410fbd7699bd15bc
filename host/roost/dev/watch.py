"""Noticing edits: a polling watcher of an agent's directory.

Polling the modification times and sizes of a few dozen files every 0.1 s costs next to
nothing and behaves the same on every platform and file system (editors that save by
renaming, network mounts, containers), with no extra dependency.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import trio

POLL_S = 0.1
"""How often the files are looked at."""
SETTLE_S = 0.05
"""After a change, wait this long for the rest of a save (editors write in steps)."""
WATCHED_SUFFIXES = frozenset({".py", ".toml", ".c", ".h", ".zig"})
_SKIPPED_DIRS = frozenset({"__pycache__", ".roost", ".git", ".venv", "zig-cache", ".zig-cache"})

Snapshot = dict[Path, tuple[int, int]]


def snapshot(directory: Path, extra: Iterable[Path] = ()) -> Snapshot:
    """Modification time and size of the watched files under ``directory`` and of
    ``extra`` files."""
    found: Snapshot = {}
    for path in [*_files(directory), *extra]:
        try:
            stat = path.stat()
        except OSError:
            continue
        found[path] = (stat.st_mtime_ns, stat.st_size)
    return found


def _files(directory: Path) -> Iterable[Path]:
    pending = [directory]
    while pending:
        current = pending.pop()
        try:
            entries = list(current.iterdir())
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir():
                if entry.name not in _SKIPPED_DIRS and not entry.name.startswith("."):
                    pending.append(entry)
            elif entry.suffix in WATCHED_SUFFIXES:
                yield entry


async def changes(
    directory: Path,
    extra: Iterable[Path] = (),
    *,
    poll_s: float = POLL_S,
    since: Snapshot | None = None,
) -> AsyncIterator[set[Path]]:
    """Yield the set of files that changed (added, edited or removed), once per save, since
    ``since`` (a :func:`snapshot`; default: now)."""
    extra = tuple(extra)
    before = (
        since if since is not None else await trio.to_thread.run_sync(snapshot, directory, extra)
    )
    while True:
        await trio.sleep(poll_s)
        now = await trio.to_thread.run_sync(snapshot, directory, extra)
        if now == before:
            continue
        await trio.sleep(SETTLE_S)
        now = await trio.to_thread.run_sync(snapshot, directory, extra)
        changed = {p for p in now.keys() | before.keys() if now.get(p) != before.get(p)}
        before = now
        if changed:
            yield changed
