"""One session as one OS process: the container-per-agent model without the container.

Runs the echo example's logic (count messages in a state dict, echo them) in plain CPython,
reading one JSON message per line on stdin and writing one JSON reply per line. The
density harness starts many of these to measure memory per session and start time on the
same machine as the host.
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    state: dict[str, int] = {}
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        state["count"] = state.get("count", 0) + 1
        print(json.dumps({"echo": json.loads(line), "count": state["count"]}), flush=True)


if __name__ == "__main__":
    main()
