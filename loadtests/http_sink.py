"""A loopback HTTP server that accepts any request, answers ``200`` with an empty body and
records what it saw. ``roost bench telemetry`` uses it as the local OTLP/HTTP receiver
(an empty body is a valid OTLP export response); tests use it as a fetch target that shows
the headers the host sent.

It runs on its own threads (the standard library's ``ThreadingHTTPServer``), so it answers
exporters that post from their own threads as well as trio code.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]
    """Header names lowercased."""
    body_bytes: int


class HttpSink:
    """Where the sink listens and what it has received."""

    def __init__(self, server: ThreadingHTTPServer, keep_requests: bool) -> None:
        self._server = server
        self._keep = keep_requests
        self._lock = threading.Lock()
        self._requests: list[SeenRequest] = []
        self.posts_by_path: Counter[str] = Counter()
        self.bytes_by_path: Counter[str] = Counter()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def requests(self) -> list[SeenRequest]:
        with self._lock:
            return list(self._requests)

    def record(self, request: SeenRequest) -> None:
        with self._lock:
            if self._keep:
                self._requests.append(request)
            self.posts_by_path[request.path] += 1
            self.bytes_by_path[request.path] += request.body_bytes


@contextmanager
def run_http_sink(*, keep_requests: bool = True) -> Iterator[HttpSink]:
    """Serve on a free loopback port until the block ends. With ``keep_requests=False``
    only the counts are kept (for long benchmark runs)."""
    sink: HttpSink | None = None

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            assert sink is not None
            seen = SeenRequest(
                self.command,
                self.path,
                {k.lower(): v for k, v in self.headers.items()} if keep_requests else {},
                length,
            )
            sink.record(seen)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = do_PUT = _handle

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    sink = HttpSink(server, keep_requests)
    thread = threading.Thread(target=server.serve_forever, name="http-sink", daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
