"""A scripted loopback HTTP server for backend tests.

Each request to a path takes the next scripted :class:`Reply` for that path
(or the path's default when the script is empty) and is recorded with its
arrival time, headers and JSON body. The server listens on 127.0.0.1 with
an OS-chosen port and runs in a daemon thread; use it as a context manager
so it always stops.

A reply with ``stream`` is sent as Server-Sent Events over chunked
transfer encoding, and can misbehave on purpose: ``cut_after`` drops the
connection after that many events (``clean_cut``: end the body properly
instead, as if the stream were complete), ``stall_after`` goes silent for
``stall`` seconds (or until the server stops). A server-wide ``adapt``
hook may rewrite replies, e.g. stream a plain JSON body when the request
asked for a stream.
"""

from __future__ import annotations

import json
import socket
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
    #: SSE events: a dict (``data: JSON``), an ``(event, dict)`` pair or a raw ``data`` string.
    stream: list[Any] | None = None
    #: Send ``data: [DONE]`` after the events (OpenAI style).
    done: bool = True
    cut_after: int | None = None
    clean_cut: bool = False
    stall_after: int | None = None
    stall: float = 30.0
    #: Seconds between events.
    event_delay: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Recorded:
    """A request the server received."""

    t: float
    method: str
    path: str
    headers: dict[str, str]
    body: Any


DefaultFn = Callable[[dict[str, Any]], Reply]
AdaptFn = Callable[[Reply, Any], Reply]


def sse_bytes(event: Any) -> bytes:
    """One Server-Sent Event."""
    if isinstance(event, tuple):
        name, data = event
        return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
    if isinstance(event, str):
        return f"data: {event}\n\n".encode()
    return f"data: {json.dumps(event)}\n\n".encode()


class LoopbackServer:
    """Scripted HTTP server on 127.0.0.1 (port chosen by the OS)."""

    def __init__(self, defaults: dict[str, DefaultFn] | None = None, adapt: AdaptFn | None = None) -> None:
        self.defaults: dict[str, DefaultFn] = dict(defaults or {})
        self.adapt = adapt
        #: SSE events written to clients (all requests).
        self.events_sent = 0
        self._stopping = threading.Event()
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
            reply = self.script[path].popleft() if self.script[path] else None
        if reply is None:
            fn = self.defaults.get(path)
            if fn is None:
                return Reply(status=404, body={"error": {"message": f"no route {path}"}})
            reply = fn(body if isinstance(body, dict) else {})
        return self.adapt(reply, body) if self.adapt is not None else reply

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
                    server._stopping.wait(reply.delay)
                if reply.stream is not None:
                    try:
                        self._stream(reply)
                    except (BrokenPipeError, ConnectionResetError, OSError):
                        self.close_connection = True  # the client went away (cancel/timeout tests)
                    finally:
                        with server._lock:
                            server.in_flight -= 1
                    return
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

            def _stream(self, reply: Reply) -> None:
                self.send_response(reply.status)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.send_header("cache-control", "no-cache")
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.flush()
                events = [sse_bytes(e) for e in reply.stream or ()]
                if reply.done:
                    events.append(sse_bytes("[DONE]"))
                for k, data in enumerate(events):
                    if reply.cut_after is not None and k >= reply.cut_after:
                        if reply.clean_cut:
                            break
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)  # no terminating chunk
                        return
                    if reply.stall_after is not None and k == reply.stall_after:
                        server._stopping.wait(reply.stall)
                    if reply.event_delay and k:
                        server._stopping.wait(reply.event_delay)
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()
                    with server._lock:
                        server.events_sent += 1
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

            def do_POST(self) -> None:
                self._handle("POST")

            def do_GET(self) -> None:
                self._handle("GET")

        self._stopping.clear()
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name="loopback-server")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wake stalled and delayed replies
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
