"""A fault-injecting HTTP proxy on 127.0.0.1 for OpenAI-compatible servers.

Put it between a client and a real server (``llama_cpp.server``, vLLM, the
loopback server) to see how the client copes with a flaky network::

    with FaultProxy("http://127.0.0.1:8080", FaultSchedule(p429=0.3, p500=0.2, pcut=0.05, seed=1)) as proxy:
        model = load_model("openai:smollm2", base_url=proxy.base_url)

Each ``POST`` takes the fault its index draws from the schedule (see
:class:`~testtime.testing.loopback.FaultSchedule`):

* ``"429"``: answered by the proxy with ``Retry-After`` (nothing forwarded);
* ``"500"`` / ``"408"``: answered by the proxy (nothing forwarded);
* ``"timeout"``: the proxy waits ``stall`` seconds, then drops the connection
  (nothing forwarded);
* ``"cut"``: forwarded; the reply is cut mid-way (a JSON body after half its
  bytes, an SSE stream after half its events, at least one);
* ``"slow"``: forwarded after ``slow`` seconds.

``GET`` requests (``/models`` probes) pass through untouched unless
``fault_gets`` is set. SSE responses are relayed event by event (chunked),
JSON bodies whole.

:attr:`FaultProxy.forwarded` (a :class:`Forwarded` snapshot) counts what the
client actually received in full: responses, and the usage parsed from the
JSON bodies and final SSE usage chunks it relayed. Cut replies are listed in
:attr:`Forwarded.cuts` with the request body and the content chunks the
client got before the cut, so a test can tell exactly what a careful client
must have charged for them.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlparse

from testtime.testing.loopback import FaultFn, FaultSchedule, LoopbackHTTP, QuietHandler, send_json

_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
        "transfer-encoding", "upgrade", "content-length"}


@dataclass(frozen=True, slots=True)
class CutReply:
    """A forwarded reply the proxy cut: what was asked and what got through."""

    body: dict[str, Any]
    stream: bool
    content_chunks: int  # SSE events with generated text delivered before the cut
    upstream_usage: dict[str, int] | None  # what the upstream reported for the whole call


@dataclass(slots=True)
class Forwarded:
    """What the proxy relayed, counted on its side.

    Attributes:
        requests: POSTs received (every attempt).
        forwarded: POSTs sent upstream.
        ok: replies relayed in full with status 200.
        errors: non-200 upstream replies relayed in full.
        faults: injected faults by kind.
        prompt_tokens / completion_tokens: usage in the replies relayed in full.
        no_usage: replies relayed in full that carried no usage.
        cuts: the replies it cut (see :class:`CutReply`).
    """

    requests: int = 0
    forwarded: int = 0
    ok: int = 0
    errors: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    no_usage: int = 0
    cuts: list[CutReply] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def copy(self) -> Forwarded:
        return replace(self, faults=dict(self.faults), cuts=list(self.cuts))


def _drop(h: BaseHTTPRequestHandler) -> None:
    h.close_connection = True
    try:
        h.wfile.flush()
    except OSError:
        pass
    try:
        h.connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _usage_of(obj: Any) -> dict[str, int] | None:
    usage = obj.get("usage") if isinstance(obj, dict) else None
    if not isinstance(usage, dict):
        return None
    return {"prompt_tokens": int(usage.get("prompt_tokens") or 0),
            "completion_tokens": int(usage.get("completion_tokens") or 0)}


def _has_content(obj: Any) -> bool:
    for c in (obj.get("choices") or []) if isinstance(obj, dict) else []:
        delta = c.get("delta") or {}
        if delta.get("content") or delta.get("reasoning_content") or c.get("text"):
            return True
    return False


class FaultProxy(LoopbackHTTP):
    """Threaded proxy to ``upstream`` (a base URL; its path prefix is kept) with seeded faults.

    Args:
        upstream: e.g. ``"http://127.0.0.1:8080/v1"``; request paths are
            relayed as they come (``/v1/chat/completions`` -> upstream host).
        faults: a :class:`FaultSchedule` or ``(index, body) -> kind | None``.
        fault_gets: inject faults into GET requests too.
        upstream_timeout: seconds to wait for the upstream.
    """

    def __init__(self, upstream: str, faults: FaultSchedule | FaultFn | None = None, *,
                 fault_gets: bool = False, upstream_timeout: float = 120.0) -> None:
        u = urlparse(upstream)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"FaultProxy needs an http:// upstream, got {upstream!r}")
        self.upstream_host = u.hostname
        self.upstream_port = u.port or 80
        self.upstream_path = u.path.rstrip("/")
        self.faults = faults
        self.fault_gets = fault_gets
        self.upstream_timeout = upstream_timeout
        self._stats = Forwarded()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._active = 0  # requests being handled now
        self._gets = 0
        proxy = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                proxy._handle_counted(self, "GET")

            def do_POST(self) -> None:
                proxy._handle_counted(self, "POST")

        self._serve(Handler)

    # ---------------------------------------------------------------- views

    @property
    def base_url(self) -> str:
        """The proxy's URL with the upstream's path prefix (``http://127.0.0.1:PORT/v1``)."""
        return f"http://127.0.0.1:{self.port}{self.upstream_path}"

    @property
    def forwarded(self) -> Forwarded:
        """What was relayed so far, once the requests being handled now have finished (up to 5 s).

        A client can read the last bytes of a reply (and its caller read these
        counts) before the proxy's thread has recorded that reply, so a
        snapshot waits for handlers still writing.
        """
        with self._idle:
            self._idle.wait_for(lambda: self._active == 0, timeout=5.0)
            return self._stats.copy()

    def reset_counts(self) -> None:
        with self._lock:
            self._stats = Forwarded()

    # ------------------------------------------------------------- handling
    def _handle_counted(self, h: BaseHTTPRequestHandler, method: str) -> None:
        with self._lock:
            self._active += 1
        try:
            self._handle(h, method)
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            body = {}
        kind = None
        if method == "POST" or self.fault_gets:
            with self._lock:
                index = self._stats.requests if method == "POST" else 10**9 + self._gets
                if method == "POST":
                    self._stats.requests += 1
                else:
                    self._gets += 1
            if self.faults is not None:
                kind = self.faults(index, body if isinstance(body, dict) else {})
            if kind is not None:
                with self._lock:
                    self._stats.faults[kind] = self._stats.faults.get(kind, 0) + 1
        sched = self.faults if isinstance(self.faults, FaultSchedule) else None
        try:
            if kind == "429":
                wait = sched.retry_after if sched else 0.05
                send_json(h, 429, {"error": {"message": "rate limited (proxy)", "type": "rate_limit_error",
                                                   "code": "rate_limit_exceeded"}},
                                {"Retry-After": f"{wait:g}"})
                return
            if kind in ("408", "500"):
                send_json(h, int(kind), {"error": {"message": f"injected {kind} (proxy)",
                                                         "type": "server_error"}})
                return
            if kind == "timeout":
                time.sleep(sched.stall if sched else 0.3)
                _drop(h)
                return
            if kind == "slow":
                time.sleep(sched.slow if sched else 0.05)
            self._forward(h, method, raw, body if isinstance(body, dict) else {}, cut=kind == "cut")
        except OSError:
            h.close_connection = True

    def _forward(self, h: BaseHTTPRequestHandler, method: str, raw: bytes, body: dict[str, Any],
                 *, cut: bool) -> None:
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=self.upstream_timeout)
        headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP and k.lower() != "host"}
        headers["Host"] = f"{self.upstream_host}:{self.upstream_port}"
        if raw:
            headers["Content-Length"] = str(len(raw))
        try:
            try:
                conn.request(method, h.path, body=raw or None, headers=headers)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                send_json(h, 502, {"error": {"message": f"upstream unreachable: {exc}"}})
                return
            if method == "POST":
                with self._lock:
                    self._stats.forwarded += 1
            ctype = resp.getheader("Content-Type", "")
            if "text/event-stream" in ctype:
                self._relay_sse(h, resp, body, cut)
            else:
                self._relay_body(h, resp, body, cut, count=method == "POST")
        finally:
            conn.close()

    def _relay_body(self, h: BaseHTTPRequestHandler, resp: http.client.HTTPResponse, body: dict[str, Any],
                    cut: bool, *, count: bool) -> None:
        data = resp.read()
        h.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in _HOP:
                h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        try:
            obj = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            obj = None
        usage = _usage_of(obj)
        if cut and count:
            h.wfile.write(data[: len(data) // 2])
            _drop(h)
            with self._lock:
                self._stats.cuts.append(CutReply(body=body, stream=False, content_chunks=0, upstream_usage=usage))
            return
        h.wfile.write(data)
        h.wfile.flush()
        if not count:
            return
        self._count_relayed(resp.status, usage)

    def _count_relayed(self, status: int, usage: dict[str, int] | None) -> None:
        """Count one reply relayed in full (its usage, when the upstream gave one)."""
        with self._lock:
            if status == 200:
                self._stats.ok += 1
                if usage is None:
                    self._stats.no_usage += 1
                else:
                    self._stats.prompt_tokens += usage["prompt_tokens"]
                    self._stats.completion_tokens += usage["completion_tokens"]
            else:
                self._stats.errors += 1

    def _relay_sse(self, h: BaseHTTPRequestHandler, resp: http.client.HTTPResponse, body: dict[str, Any],
                   cut: bool) -> None:
        # Read the whole upstream stream's events as they come; relay each one.
        events: list[bytes] = []
        h.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in _HOP:
                h.send_header(k, v)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        limit: int | None = None
        if cut:
            # Cut after about half the events: the whole stream is read first to know its length.
            events = _read_events(resp)
            limit = max(len(events) // 2, 1)
        usage: dict[str, int] | None = None
        content = 0
        sent = 0
        source = iter(events) if cut else _iter_events(resp)
        upstream_usage: dict[str, int] | None = None
        for ev in source:
            obj = _parse_event(ev)
            ev_usage = _usage_of(obj)
            if ev_usage is not None:
                upstream_usage = ev_usage
            if limit is not None and sent >= limit:
                continue  # keep reading to learn the upstream's usage
            try:
                h.wfile.write(b"%x\r\n%s\r\n" % (len(ev), ev))
                h.wfile.flush()
            except OSError:
                h.close_connection = True
                return
            sent += 1
            if _has_content(obj):
                content += 1
            if ev_usage is not None:
                usage = ev_usage
        if limit is not None and sent >= limit and sent < len(events):
            _drop(h)
            with self._lock:
                self._stats.cuts.append(CutReply(body=body, stream=True, content_chunks=content,
                                                 upstream_usage=upstream_usage))
            return
        try:
            h.wfile.write(b"0\r\n\r\n")
            h.wfile.flush()
        except OSError:
            h.close_connection = True
            return
        self._count_relayed(resp.status, usage)


def _iter_events(resp: http.client.HTTPResponse) -> Any:
    """SSE events (each ending with a blank line, bytes included) as they arrive."""
    buf = b""
    while True:
        line = resp.readline()
        if not line:
            if buf.strip():
                yield buf
            return
        buf += line
        if line in (b"\n", b"\r\n"):
            if buf.strip():
                yield buf
            buf = b""


def _read_events(resp: http.client.HTTPResponse) -> list[bytes]:
    return list(_iter_events(resp))


def _parse_event(ev: bytes) -> Any:
    for line in ev.splitlines():
        if line.startswith(b"data:"):
            payload = line[5:].strip()
            if payload == b"[DONE]":
                return None
            try:
                return json.loads(payload)
            except (json.JSONDecodeError, UnicodeDecodeError):
                return None
    return None
