"""Progress of slow steps (builds, native compilation) on stderr, so none is silent.

:func:`progress` wraps a step that may take long: if it is still running after
``GRACE_S``, it says what is happening, then keeps showing that it is alive about every
second (a counter on a terminal; dots elsewhere, so that logs get one line), and says how
long it took. A step that ends within the grace period prints nothing, as a cached build
does. It runs on a thread of its own, so it works around blocking calls and trio code alike.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

GRACE_S = 1.0
"""A step shows nothing until it has run this long."""
TICK_S = 1.0


@contextmanager
def progress(
    label: str, *, stream: TextIO | None = None, grace_s: float = GRACE_S, lead: str = ""
) -> Iterator[None]:
    """Show ``label`` (``"building agent.py with componentize-py"``) while the block runs;
    ``lead`` is written once before anything else is (a newline, to start a line of its
    own)."""
    out = stream if stream is not None else sys.stderr
    done = threading.Event()
    started = time.monotonic()
    shown = threading.Event()
    terminal = _is_terminal(out)

    def tick() -> None:
        if done.wait(grace_s):
            return
        shown.set()
        _write(out, lead + (f"{label} ..." if not terminal else f"\r{label} ... {grace_s:.0f}s"))
        while not done.wait(TICK_S):
            elapsed = time.monotonic() - started
            _write(out, f"\r{label} ... {elapsed:.0f}s" if terminal else ".")

    thread = threading.Thread(target=tick, name="roost-progress", daemon=True)
    thread.start()
    failed = True
    try:
        yield
        failed = False
    finally:
        done.set()
        thread.join()
        if shown.is_set():
            elapsed = time.monotonic() - started
            outcome = "failed" if failed else "done"
            prefix = f"\r{label} ... " if terminal else " "
            _write(out, f"{prefix}{outcome} in {elapsed:.1f}s\n")


def _write(out: TextIO, text: str) -> None:
    try:
        out.write(text)
        out.flush()
    except (OSError, ValueError):
        pass


def _is_terminal(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False
