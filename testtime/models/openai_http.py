"""A lean HTTP client for the OpenAI chat/completions API (httpx, no SDK).

The ``openai`` SDK costs ~0.5 s of CPU to import (its typed models and an
aiohttp transport), more than a whole 8-sample run's requests (bench/client.py);
the backend needs two endpoints, JSON bodies and server-sent events. This
module sends exactly what the SDK would (``extra_body`` merged into the
body, ``Authorization: Bearer``) over one ``httpx.AsyncClient`` per model and
event loop, with its pool sized for the model's concurrency.

Replies come back as :class:`Obj` (a dict with attribute access, missing
fields reading as None, as the SDK's models do). Errors are raised as
:class:`APIStatusError` (an HTTP error status) and :class:`APIError` (an
error event inside a stream), named like the SDK's so
:func:`testtime.models.retry.translate_error` maps them the same way; httpx's
own timeouts and connection errors pass through and are mapped as before.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from typing import Any


class Obj(dict):  # type: ignore[type-arg]
    """A JSON object with attribute access: ``chunk.choices[0].delta.content``; absent keys are None."""

    __slots__ = ()

    def __getattr__(self, key: str) -> Any:
        return _wrap(self.get(key))

    @property
    def model_extra(self) -> dict[str, Any]:
        """Every field (the SDK keeps fields it does not model, like vLLM's ``stop_reason``, here)."""
        return self


def _wrap(value: Any) -> Any:
    if isinstance(value, dict) and not isinstance(value, Obj):
        return Obj(value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


class APIError(Exception):
    """The server reported an error inside a stream that started with 200."""

    def __init__(self, message: str, *, body: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.body = body
        inner = body.get("error", body) if isinstance(body, dict) else None
        self.code = inner.get("code") if isinstance(inner, dict) else None
        self.type = inner.get("type") if isinstance(inner, dict) else None


class APIStatusError(APIError):
    """An HTTP error status; ``body`` is the parsed JSON (or the text), ``response`` the httpx response."""

    def __init__(self, message: str, *, status_code: int, body: Any, response: Any) -> None:
        super().__init__(message, body=body)
        self.status_code = status_code
        self.response = response


class LeanClient:
    """The connections of one model to one OpenAI-compatible base URL.

    Requests go over :class:`testtime.models.http11.Http11Pool` (asyncio +
    h11, about 0.1 ms of CPU a request against httpx's 1 ms; see that
    module). When the environment names a proxy for the URL
    (``HTTPS_PROXY``, ``ALL_PROXY``, minus ``NO_PROXY``), they go through
    httpx instead, which speaks proxies; ``shards`` httpx pools then share
    the connections round-robin, because one httpcore pool of N
    connections costs O(N^2) CPU for N concurrent requests.
    """

    def __init__(self, base_url: str, api_key: str, *, connect: float, read: float, write: float,
                 max_connections: int, shards: int | None = None) -> None:
        from testtime.models.http11 import Http11Pool, proxy_for

        verify = tls_verify(base_url)
        headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        # As the SDK does: the organization and project a key belongs to, from the environment.
        for env, header in (("OPENAI_ORG_ID", "OpenAI-Organization"), ("OPENAI_PROJECT_ID", "OpenAI-Project")):
            if os.environ.get(env):
                headers[header] = os.environ[env]
        self.max_connections = max_connections
        self.via_proxy = proxy_for(base_url) is not None
        self._pool: Any = None
        self._pools: list[Any] = []
        self._next = 0
        if not self.via_proxy:
            self._pool = Http11Pool(base_url, headers, connect=connect, read=read, write=write,
                                    max_idle=max_connections, tls=verify or None)
            return
        import httpx

        if shards is None:
            shards = max(1, min(8, max_connections // 8))
        per = max(1, -(-max_connections // shards))
        self._pools = [
            httpx.AsyncClient(
                base_url=base_url.rstrip("/") + "/",
                headers=headers,
                timeout=httpx.Timeout(connect=connect, read=read, write=write, pool=None),
                limits=httpx.Limits(max_connections=per, max_keepalive_connections=per),
                verify=verify,
            )
            for _ in range(shards)
        ]

    @property
    def _http(self) -> Any:
        self._next = (self._next + 1) % len(self._pools)
        return self._pools[self._next]

    @staticmethod
    def body(kw: dict[str, Any]) -> dict[str, Any]:
        """The JSON body for SDK-style keyword arguments (``extra_body`` merged in)."""
        out = {k: v for k, v in kw.items() if k != "extra_body" and v is not None}
        out.update(kw.get("extra_body") or {})
        return out

    async def post(self, path: str, body: dict[str, Any]) -> Obj:
        """One plain request; the parsed reply."""
        data = json.dumps(body).encode()
        if self._pool is not None:
            resp: Any = await self._pool.post(path, data)
        else:
            resp = await self._http.post(path, content=data)
        text = resp.text
        if resp.status_code >= 400:
            raise _status_error(resp, text)
        try:
            parsed = json.loads(text, object_hook=Obj)
        except ValueError as exc:
            raise APIError(f"the server sent a reply that is not JSON: {text[:200]!r}") from exc
        if isinstance(parsed, dict) and parsed.get("error") and not parsed.get("choices"):
            raise _status_error(resp, text)
        return parsed

    async def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[Obj]:
        """Server-sent events of one streamed request, each parsed; closing stops the request."""
        data = json.dumps(body).encode()
        resp: Any = None
        if self._pool is not None:
            status, headers, lines = await self._pool.stream_lines(path, data)
        else:
            http = self._http  # one pool for the whole request
            resp = await http.send(http.build_request("POST", path, content=data), stream=True)
            status, headers, lines = resp.status_code, resp.headers, resp.aiter_lines()
        try:
            if status >= 400:
                text = "\n".join([line async for line in lines])
                raise _status_error(_ErrorReply(status, headers), text)
            async for line in lines:
                if not line.startswith("data:"):
                    continue  # comments, event names, blank separators
                payload = line[5:].strip()
                if payload == "[DONE]":
                    await _read_to_end(lines)
                    return
                try:
                    event = json.loads(payload, object_hook=Obj)
                except ValueError:
                    continue  # a keep-alive or a malformed line: the end check catches a real cut
                if isinstance(event, dict) and event.get("error"):
                    err = event["error"]
                    message = err.get("message") if isinstance(err, dict) else str(err)
                    raise APIError(str(message or "error"), body=err)
                yield event
        finally:
            await lines.aclose()
            if resp is not None:
                await resp.aclose()

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
        for pool in self._pools:
            await pool.aclose()


# How long to wait, after [DONE], for a stream's end: reading it gives the
# connection back for the next request (a reply closed unread drops its
# connection: 100 requests then took 3x one call); a server that sends
# [DONE] and keeps the stream open loses only its connection.
_END_GRACE_S = 1.0


async def _read_to_end(lines: Any) -> None:
    import httpx

    try:
        async with asyncio.timeout(_END_GRACE_S):
            async for _ in lines:
                pass
    except (TimeoutError, httpx.HTTPError, OSError):
        pass  # the reply is complete; only the connection is lost


class _ErrorReply:
    """Status and headers of an error reply (what ``translate_error`` reads: ``Retry-After``)."""

    def __init__(self, status_code: int, headers: Any) -> None:
        self.status_code = status_code
        self.headers = headers


_TLS: Any = None


def tls_verify(url: str) -> Any:
    """httpx's ``verify`` for ``url``: the shared verifying context for https, False for plain http.

    httpx loads the CA bundle for every client it builds (~15 ms of CPU
    each), even one that will only speak plain HTTP; a plain-http URL never
    does TLS (redirects are not followed), so it gets none.
    """
    return _tls_context() if url.lower().startswith("https:") else False


def _tls_context() -> Any:
    """One default-verifying TLS context for every pool of the process."""
    global _TLS
    if _TLS is None:
        import ssl

        try:
            import certifi

            _TLS = ssl.create_default_context(cafile=certifi.where())
        except ImportError:
            _TLS = ssl.create_default_context()
    return _TLS


def _status_error(resp: Any, text: str) -> APIStatusError:
    try:
        body: Any = json.loads(text)
    except ValueError:
        body = text
    return APIStatusError(f"Error code: {resp.status_code} - {body}", status_code=resp.status_code, body=body,
                          response=resp)
