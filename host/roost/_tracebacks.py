"""Guest tracebacks that point home.

A Python agent built for production names its files relative to its directory
(``File "agent.py", line 12``): the component does not know where they came from, and
without a file system it has no source lines to show. The host knows the directory when
the kind was deployed from a manifest with a ``source``; :func:`with_source_paths` names
the files by their real paths there and adds each frame's source line.
"""

from __future__ import annotations

import re
from pathlib import Path

_FRAME_RE = re.compile(r'^(?P<indent>\s*)File "(?P<file>[^"]+)", line (?P<line>\d+)(?P<rest>.*)$')


def with_source_paths(traceback_text: str, source_dir: Path) -> str:
    """``traceback_text`` with relative file names that exist under ``source_dir`` made
    absolute, and the source line under every such frame that lacks one."""
    lines = traceback_text.splitlines()
    out: list[str] = []
    for index, line in enumerate(lines):
        match = _FRAME_RE.match(line)
        relative = match.group("file") if match else ""
        if not match or relative.startswith(("/", "<")):
            out.append(line)
            continue
        path = source_dir / relative
        try:
            if not path.is_file():
                out.append(line)
                continue
            text = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError, ValueError):
            out.append(line)
            continue
        indent = match.group("indent")
        out.append(f'{indent}File "{path}", line {match.group("line")}{match.group("rest")}')
        number = int(match.group("line"))
        following = lines[index + 1] if index + 1 < len(lines) else ""
        has_source = following.startswith(indent + "  ") and not _FRAME_RE.match(following)
        if not has_source and 0 < number <= len(text) and text[number - 1].strip():
            out.append(f"{indent}  {text[number - 1].strip()}")
    return "\n".join(out) + ("\n" if traceback_text.endswith("\n") else "")
