"""A small HTTP/1.1 client for JSON and server-sent events: asyncio streams + h11.

Why not httpx here: httpx + httpcore cost about 1 ms of CPU per streamed
request (request/URL models, anyio cancel scopes per read, the pool's
matching of every queued request against every connection). A hundred
concurrent requests to a 100 ms server then took 2.6x one call on this
machine, while a raw-socket client doing the same took 1.09x
(bench/overhead.py). This module keeps only what the OpenAI-compatible
backend needs: POST with a JSON body, a whole reply or its lines as they
arrive, kept-alive connections, TLS, and the connect/read/write timeouts.
HTTP framing (Content-Length, chunked, keep-alive rules) is h11's, the
protocol library under httpcore and uvicorn; nothing is parsed by hand
except SSE line splitting.

Errors are raised as httpx's exception classes (``ConnectError``,
``ConnectTimeout``, ``ReadTimeout``, ``WriteTimeout``, ``ReadError``,
``RemoteProtocolError``) so :func:`testtime.models.retry.translate_error`
maps them exactly as it maps httpx's own; a ``ConnectError`` means the
request was never sent.

Proxies are not spoken here: :func:`proxy_for` tells the caller when the
environment names one for a URL, and the caller then uses httpx.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11
import httpx

_READ_SIZE = 65536


def proxy_for(url: str) -> str | None:
    """The proxy the environment (``HTTP(S)_PROXY``/``ALL_PROXY``, ``NO_PROXY``) names for ``url``, if any."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy:
        return None
    if urllib.request.proxy_bypass_environment(parts.hostname or "", proxies):
        return None
    return proxy


@dataclass
class Reply:
    """A whole reply: status, headers (lower-case names) and body bytes."""

    status_code: int
    headers: dict[str, str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class _Conn:
    """One kept-alive connection and its h11 state."""

    __slots__ = ("reader", "writer", "h11")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)

    def reusable(self) -> bool:
        # The server closed an idle connection (keep-alive timeout): the
        # reader has seen EOF. Sending on it would fail after the write.
        return not (self.writer.is_closing() or self.reader.at_eof())

    def close(self) -> None:
        self.writer.close()


class Http11Pool:
    """Kept-alive HTTP/1.1 connections to one origin (``http://`` or ``https://``).

    At most :attr:`max_idle` connections are kept between requests (newest
    first); the caller bounds how many requests run at once (the model's
    concurrency), so there is no queue here. One pool belongs to one event
    loop.
    """

    def __init__(self, base_url: str, headers: dict[str, str], *, connect: float, read: float, write: float,
                 max_idle: int, tls: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/") + "/"
        host_header = parts.netloc.rsplit("@", 1)[-1]
        self._headers = [("Host", host_header), *headers.items()]
        self._connect, self._read, self._write = connect, read, write
        self.max_idle = max(1, max_idle)
        self._tls = tls if self._https else None
        self._idle: deque[_Conn] = deque()
        self._closed = False

    # ------------------------------------------------------------ requests
    async def post(self, path: str, body: bytes) -> Reply:
        """POST ``body`` (JSON) to ``path``; the whole reply."""
        conn, status, headers = await self._send(path, body)
        chunks = []
        try:
            async for data in self._body(conn):
                chunks.append(data)
        except BaseException:
            conn.close()
            raise
        self._release(conn)
        return Reply(status, headers, b"".join(chunks))

    async def stream_lines(self, path: str, body: bytes) -> tuple[int, dict[str, str], AsyncIterator[str]]:
        """POST ``body`` to ``path``; status, headers and the reply's lines as they arrive.

        Read the lines to their end to give the connection back; closing the
        iterator early closes the connection (the server sees the client go).
        """
        conn, status, headers = await self._send(path, body)
        return status, headers, self._lines(conn)

    async def aclose(self) -> None:
        self._closed = True
        while self._idle:
            conn = self._idle.pop()
            conn.close()

    # ------------------------------------------------------------ plumbing
    async def _send(self, path: str, body: bytes) -> tuple[_Conn, int, dict[str, str]]:
        target = self._prefix + path.lstrip("/")
        headers = [*self._headers, ("Content-Length", str(len(body)))]
        conn = await self._acquire()
        try:
            data = conn.h11.send(h11.Request(method="POST", target=target, headers=headers))
            data += conn.h11.send(h11.Data(data=body)) + conn.h11.send(h11.EndOfMessage())
            conn.writer.write(data)
            await self._drain(conn)
            event = await self._next(conn)
        except BaseException:
            conn.close()
            raise
        if not isinstance(event, h11.Response):
            conn.close()
            raise httpx.RemoteProtocolError(f"unexpected HTTP event {type(event).__name__}")
        headers_out = {k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers}
        return conn, event.status_code, headers_out

    async def _acquire(self) -> _Conn:
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable():
                return conn
            conn.close()
        try:
            async with asyncio.timeout(self._connect):
                reader, writer = await asyncio.open_connection(
                    self._host, self._port, ssl=self._tls, server_hostname=self._host if self._tls else None,
                    limit=_READ_SIZE)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connect to {self._host}:{self._port} timed out") from None
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {self._host}:{self._port}: {exc}") from None
        return _Conn(reader, writer)

    def _release(self, conn: _Conn) -> None:
        """Back to the idle list if the exchange ended cleanly and both sides keep it alive."""
        if (self._closed or conn.h11.our_state is not h11.DONE or conn.h11.their_state is not h11.DONE
                or len(self._idle) >= self.max_idle):
            conn.close()
            return
        try:
            conn.h11.start_next_cycle()
        except h11.LocalProtocolError:
            conn.close()
            return
        self._idle.append(conn)

    async def _drain(self, conn: _Conn) -> None:
        if conn.writer.transport.get_write_buffer_size() == 0:
            return  # the whole request went out in one write: nothing to wait for
        try:
            async with asyncio.timeout(self._write):
                await conn.writer.drain()
        except TimeoutError:
            raise httpx.WriteTimeout("sending the request timed out") from None
        except OSError as exc:
            raise httpx.WriteError(f"sending the request failed: {exc}") from None

    async def _next(self, conn: _Conn) -> Any:
        """The next h11 event, reading (within the read timeout) as needed.

        A server that closes before answering gives h11's "disconnected"
        error. There is no silent resend, even on a reused connection: the
        server may have read the request and billed it, and every attempt
        must go through the ledger (the spend path retries).
        """
        while True:
            try:
                event = conn.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(str(exc)) from None
            if event is not h11.NEED_DATA:
                return event
            try:
                async with asyncio.timeout(self._read):
                    data = await conn.reader.read(_READ_SIZE)
            except TimeoutError:
                raise httpx.ReadTimeout("no data from the server within the read timeout") from None
            except OSError as exc:
                raise httpx.ReadError(f"reading the reply failed: {exc}") from None
            if not data and conn.h11.their_state is h11.SEND_RESPONSE:
                raise httpx.RemoteProtocolError("server disconnected without sending a response")
            try:
                conn.h11.receive_data(data)
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(str(exc)) from None

    async def _body(self, conn: _Conn) -> AsyncIterator[bytes]:
        while True:
            event = await self._next(conn)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            elif isinstance(event, h11.ConnectionClosed):
                raise httpx.RemoteProtocolError("server disconnected before the reply's end")

    async def _lines(self, conn: _Conn) -> AsyncIterator[str]:
        done = False
        try:
            pending = b""
            async for data in self._body(conn):
                pending += data
                if b"\n" not in data:
                    continue
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.rstrip(b"\r").decode("utf-8", "replace")
            if pending:
                yield pending.rstrip(b"\r").decode("utf-8", "replace")
            done = True
        finally:
            if done:
                self._release(conn)
            else:
                conn.close()  # stopped early or failed: the rest of the reply is unread

