"""A throwaway PostgreSQL server for tests and load tests: ``initdb`` into a temporary
folder, ``pg_ctl start`` on a free loopback port, ``pg_ctl stop`` and delete at the end.

PostgreSQL refuses to run as root; as root (CI), the server runs as the ``postgres``
system user that Debian's package creates (``runuser -u postgres``), in a folder it owns.
:func:`postgres_binaries` says whether the server binaries are here at all (Debian package
``postgresql``; they live in ``/usr/lib/postgresql/<version>/bin``).

    python -m loadtests.pg_server      # start one, print its URL, stop on Ctrl-C
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_SYSTEM_USER = "postgres"


def postgres_binaries() -> Path | None:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``, or None."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True
            ).stdout.strip()
            candidates.append(Path(out))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(os.path.realpath(initdb)).parent)
    for folder in candidates:
        if all((folder / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def why_not() -> str | None:
    """Why a throwaway server cannot start here (None when it can)."""
    if postgres_binaries() is None:
        return (
            "PostgreSQL server binaries not found (install the Debian package `postgresql`; "
            "looked for initdb, pg_ctl and postgres in pg_config --bindir and "
            "/usr/lib/postgresql/*/bin)"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(_SYSTEM_USER)
        except KeyError:
            return "running as root without a `postgres` system user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root without `runuser` to start the server as `postgres`"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ScratchPostgres:
    url: str
    """``postgresql://postgres@127.0.0.1:PORT/postgres`` (trust auth on loopback)."""
    port: int
    data_dir: Path
    log: Path


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", _SYSTEM_USER, "--", *command]
    return command


@contextlib.contextmanager
def scratch_postgres(
    *, fsync: bool = False, max_connections: int = 200
) -> Iterator[ScratchPostgres]:
    """Start a new server in a temporary folder and stop it (and delete the folder) at the
    end. ``fsync=False`` (tests) skips flushing to disk: fast, and enough for anything but
    power loss; benchmarks pass ``fsync=True``."""
    reason = why_not()
    if reason is not None:
        raise RuntimeError(reason)
    bindir = postgres_binaries()
    assert bindir is not None
    root = Path(tempfile.mkdtemp(prefix="roost-pg-"))
    try:
        if os.geteuid() == 0:
            user = pwd.getpwnam(_SYSTEM_USER)
            os.chown(root, user.pw_uid, user.pw_gid)
        data = root / "data"
        log = root / "server.log"
        subprocess.run(
            _as_server_user(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
        )
        port = free_port()
        options = (
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 "
            f"-c max_connections={max_connections} -c fsync={'on' if fsync else 'off'} "
            "-c shared_buffers=256MB"
        )
        started = subprocess.run(
            _as_server_user(
                [
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(log),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            ),
            capture_output=True,
            text=True,
        )
        if started.returncode != 0:
            text = log.read_text(errors="replace") if log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {started.stderr}\n{text}")
        try:
            yield ScratchPostgres(
                url=f"postgresql://postgres@127.0.0.1:{port}/postgres",
                port=port,
                data_dir=data,
                log=log,
            )
        finally:
            subprocess.run(
                _as_server_user(
                    [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]
                ),
                capture_output=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    with scratch_postgres(fsync=True) as server:
        print(server.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            while True:
                time.sleep(3600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
