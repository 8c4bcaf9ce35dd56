"""The lean HTTP/1.1 client (testtime.models.http11) against servers that misbehave at the byte level."""

from __future__ import annotations

import asyncio
import json
import socket
import socketserver
import threading
import urllib.request
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from testtime.models.http11 import Http11Pool, proxy_for
from testtime.models.openai_http import LeanClient
from testtime.models.retry import translate_error
from testtime.testing.loopback import LoopbackHTTP, LoopbackOpenAIServer, QuietHandler


class RawServer:
    """A TCP server on 127.0.0.1 whose ``answer(sock, n)`` writes the raw reply to request ``n``.

    It reads one request (headers + Content-Length body) at a time from each
    connection and stops serving a connection when ``answer`` returns False.
    """

    def __init__(self, answer: Callable[[socket.socket, int], bool]) -> None:
        self.requests = 0
        self.connections = 0
        lock = threading.Lock()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with lock:
                    outer.connections += 1
                buf = b""
                while True:
                    while b"\r\n\r\n" not in buf:
                        data = self.request.recv(65536)
                        if not data:
                            return
                        buf += data
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    length = int([ln.split(b":")[1] for ln in head.split(b"\r\n")
                                  if ln.lower().startswith(b"content-length")][0])
                    while len(buf) < length:
                        buf += self.request.recv(65536)
                    buf = buf[length:]
                    with lock:
                        n = outer.requests
                        outer.requests += 1
                    if not answer(self.request, n):
                        return

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._srv = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._srv.serve_forever, daemon=True)
        self._thread.start()
        self.base_url = f"http://127.0.0.1:{self._srv.server_address[1]}/v1"

    def close(self) -> None:
        self._srv.shutdown()
        self._srv.server_close()

    def __enter__(self) -> RawServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _chunked(*events: str) -> bytes:
    out = b""
    for e in events:
        data = f"data: {e}\n\n".encode()
        out += b"%x\r\n%s\r\n" % (len(data), data)
    return out


def _chunk(text: str) -> str:
    return json.dumps({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})


SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def _pool(url: str, *, read: float = 10.0) -> Http11Pool:
    return Http11Pool(url, {"Content-Type": "application/json"}, connect=5.0, read=read, write=5.0, max_idle=4)


def _client(url: str, *, read: float = 10.0) -> LeanClient:
    return LeanClient(url, "tt-test-key", connect=5.0, read=read, write=5.0, max_connections=4)


STREAM = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def _texts(client: LeanClient) -> list[str]:
    return [c.choices[0].delta.content async for c in client.stream("chat/completions", STREAM)
            if c.choices and c.choices[0].delta.content]


async def test_sequential_streams_reuse_one_kept_alive_connection() -> None:
    with LoopbackOpenAIServer(reply="The answer is 4.") as srv:
        client = _client(srv.base_url)
        try:
            texts = [await _texts(client) for _ in range(5)]
        finally:
            await client.aclose()
        assert srv.served.requests == 5 and srv.connections == 1
    assert all("".join(t) == "The answer is 4." for t in texts)


async def test_a_stream_closed_early_drops_its_connection_and_the_next_request_opens_one() -> None:
    with LoopbackOpenAIServer(reply="one two three four five six") as srv:
        client = _client(srv.base_url)
        try:
            stream = client.stream("chat/completions", STREAM)
            first = await stream.__anext__()
            await stream.aclose()  # the consumer stops after one chunk
            rest = await _texts(client)
        finally:
            await client.aclose()
        connections = srv.connections
    assert first.choices[0].delta.content == "one "
    assert "".join(rest) == "one two three four five six" and connections == 2


async def test_connection_close_replies_are_not_reused() -> None:
    def answer(sock: socket.socket, n: int) -> bool:
        body = json.dumps({"n": n}).encode()
        sock.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        return False

    with RawServer(answer) as srv:
        pool = _pool(srv.base_url)
        try:
            replies = [await pool.post("x", b"{}") for _ in range(3)]
        finally:
            await pool.aclose()
        assert srv.connections == 3
    assert [json.loads(r.content)["n"] for r in replies] == [0, 1, 2]


async def test_an_idle_connection_the_server_closed_is_replaced_without_an_error() -> None:
    # The server answers and then closes (a keep-alive timeout of zero), without saying so.
    def answer(sock: socket.socket, n: int) -> bool:
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return False

    with RawServer(answer) as srv:
        pool = _pool(srv.base_url)
        try:
            replies = []
            for _ in range(3):
                replies.append(await pool.post("x", b"{}"))
                await asyncio.sleep(0.1)  # the server's FIN arrives while the connection is idle
        finally:
            await pool.aclose()
        assert srv.requests == 3 and srv.connections == 3
    assert [r.content for r in replies] == [b"ok"] * 3


async def test_a_server_that_keeps_the_stream_open_after_done_still_gives_the_whole_answer() -> None:
    release = threading.Event()

    def answer(sock: socket.socket, n: int) -> bool:
        sock.sendall(SSE_HEAD + _chunked(_chunk("The answer "), _chunk("is 4."), "[DONE]"))
        release.wait(30)  # never sends the final chunk while the client waits
        return False

    with RawServer(answer) as srv:
        client = _client(srv.base_url, read=60.0)
        try:
            texts = await asyncio.wait_for(_texts(client), 20)
        finally:
            release.set()
            await client.aclose()
    assert "".join(texts) == "The answer is 4."


async def test_a_cut_chunked_stream_is_a_remote_protocol_error_mapped_as_retryable() -> None:
    def answer(sock: socket.socket, n: int) -> bool:
        sock.sendall(SSE_HEAD + _chunked(_chunk("The answer ")) + b"40\r\ndata: {\"cho")
        sock.shutdown(socket.SHUT_WR)
        return False

    with RawServer(answer) as srv:
        client = _client(srv.base_url)
        got: list[str] = []
        try:
            with pytest.raises(httpx.RemoteProtocolError) as info:
                async for c in client.stream("chat/completions", STREAM):
                    got.append(c.choices[0].delta.content)
        finally:
            await client.aclose()
    assert got == ["The answer "]
    mapped = translate_error(info.value, backend="openai", model="m")
    assert mapped is not None and mapped.retryable and mapped.sent


async def test_a_server_that_stalls_after_its_headers_is_a_read_timeout() -> None:
    release = threading.Event()

    def answer(sock: socket.socket, n: int) -> bool:
        sock.sendall(SSE_HEAD)
        release.wait(30)
        return False

    with RawServer(answer) as srv:
        client = _client(srv.base_url, read=0.3)
        try:
            with pytest.raises(httpx.ReadTimeout) as info:
                await _texts(client)
        finally:
            release.set()
            await client.aclose()
    mapped = translate_error(info.value, backend="openai", model="m")
    assert mapped is not None and mapped.retryable and "timed out" in str(mapped)


async def test_a_server_that_closes_before_answering_is_an_error_and_is_not_resent() -> None:
    def answer(sock: socket.socket, n: int) -> bool:
        return False  # read the request, then close: it may have been billed

    with RawServer(answer) as srv:
        pool = _pool(srv.base_url)
        try:
            with pytest.raises(httpx.RemoteProtocolError):
                await pool.post("x", b"{}")
        finally:
            await pool.aclose()
        assert srv.requests == 1


async def test_nothing_listening_is_a_connect_error_that_says_the_request_was_not_sent() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pool = _pool(f"http://127.0.0.1:{port}/v1")
    with pytest.raises(httpx.ConnectError) as info:
        await pool.post("x", b"{}")
    mapped = translate_error(info.value, backend="openai", model="m")
    assert mapped is not None and mapped.retryable and not mapped.sent


async def test_a_reply_larger_than_one_read_arrives_whole() -> None:
    big = json.dumps({"choices": [{"message": {"content": "x" * 300_000}}]}).encode()

    def answer(sock: socket.socket, n: int) -> bool:
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big) + big)
        return True

    with RawServer(answer) as srv:
        client = _client(srv.base_url)
        try:
            reply = await client.post("chat/completions", {"model": "m"})
        finally:
            await client.aclose()
    assert len(reply.choices[0].message.content) == 300_000


class _ForwardProxy(LoopbackHTTP):
    """A plain-HTTP forward proxy: relays absolute-URL requests and counts them."""

    def __init__(self) -> None:
        self.relayed: list[str] = []
        outer = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                outer.relayed.append(self.path)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                req = urllib.request.Request(self.path, data=body, method="POST",
                                             headers={k: v for k, v in self.headers.items()
                                                      if k.lower() not in ("host", "proxy-connection")})
                opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
                with opener.open(req, timeout=10) as resp:
                    data = resp.read()
                    self.send_response(resp.status)
                    self.send_header("Content-Type", resp.headers.get("Content-Type", "text/plain"))
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

        self._serve(Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def test_a_proxy_named_in_the_environment_is_used_through_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    with LoopbackOpenAIServer(reply="The answer is 4.") as srv, _ForwardProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        assert proxy_for(srv.base_url) == proxy.url
        client = _client(srv.base_url)
        try:
            texts = await _texts(client)
        finally:
            await client.aclose()
        assert srv.served.requests == 1
    assert client.via_proxy and "".join(texts) == "The answer is 4."
    assert proxy.relayed == [srv.base_url + "/chat/completions"]


def test_no_proxy_exempts_a_host_from_the_environment_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,internal.example")
    assert proxy_for("https://api.example.com/v1") == "http://proxy.invalid:3128"
    assert proxy_for("https://internal.example/v1") is None
    assert proxy_for("http://127.0.0.1:8000/v1") is None
