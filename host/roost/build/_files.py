"""Build outputs written so that a reader never sees part of one."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path


def copy_atomically(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` so that a reader of ``target`` gets the old file or the
    new one, never a part: the copy is made beside it and renamed over it. Hosts started
    side by side from one manifest each build it into the same output (from the cache)
    while the others read it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.partial")
    try:
        shutil.copyfile(source, partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
