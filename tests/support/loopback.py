"""A scripted loopback HTTP server for backend tests.

Each request to a path takes the next scripted :class:`Reply` for that path
(or the path's default when the script is empty) and is recorded with its
arrival time, headers and JSON body. The server listens on 127.0.0.1 with
an OS-chosen port and runs in a daemon thread; use it as a context manager
so it always stops.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """One scripted response: status, JSON body, extra headers, and a delay before answering."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Recorded:
    """A request the server received."""

    t: float
    method: str
    path: str
    headers: dict[str, str]
    body: Any


DefaultFn = Callable[[dict[str, Any]], Reply]


class LoopbackServer:
    """Scripted HTTP server on 127.0.0.1 (port chosen by the OS)."""

    def __init__(self, defaults: dict[str, DefaultFn] | None = None) -> None:
        self.defaults: dict[str, DefaultFn] = dict(defaults or {})
        self.script: dict[str, deque[Reply]] = defaultdict(deque)
        self.requests: list[Recorded] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --------------------------------------------------------- scripting
    def push(self, path: str, *replies: Reply) -> None:
        """Queue replies for the next requests to ``path``."""
        with self._lock:
            self.script[path].extend(replies)

    def requests_to(self, path: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def _next(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        with self._lock:
            self.requests.append(Recorded(t=time.monotonic(), method=method, path=path,
                                          headers=headers, body=body))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if self.script[path]:
                return self.script[path].popleft()
        fn = self.defaults.get(path)
        if fn is None:
            return Reply(status=404, body={"error": {"message": f"no route {path}"}})
        return fn(body if isinstance(body, dict) else {})

    # --------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("server not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LoopbackServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                path = self.path.split("?", 1)[0]
                reply = server._next(method, path, {k.lower(): v for k, v in self.headers.items()}, body)
                if reply.delay:
                    time.sleep(reply.delay)
                payload = json.dumps(reply.body if reply.body is not None else {}).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(payload)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def do_POST(self) -> None:
                self._handle("POST")

            def do_GET(self) -> None:
                self._handle("GET")

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name="loopback-server")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
