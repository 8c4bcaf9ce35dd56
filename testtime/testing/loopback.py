"""A loopback server speaking the OpenAI chat-completions API, honest or adversarial.

For benchmarks and tests that need real HTTP without a real model: every
request sleeps ``latency`` seconds, then answers with ``reply`` (a string or a
function of the request JSON). It binds 127.0.0.1 on a free port, serves from
a thread per request, and stops on ``close()`` / context exit.

Tokens are whitespace-separated words: a reply of 5 words is 5 completion
tokens per choice, and each message counts its words + 4 as prompt tokens.
``stream: true`` requests get one SSE chunk per word (choices interleaved),
and a final usage chunk when ``stream_options.include_usage`` is set.

Adversarial modes (keyword arguments, all off by default):

* ``usage_scale=k``: report k x the completion tokens really generated.
* ``omit_usage=True``: no ``usage`` field, no usage chunk.
* ``choices_cap=c``: return at most c choices whatever ``n`` asks.
* ``cut_after=k``: cut every streamed response after k chunks (a plain JSON
  response is cut mid-body).
* ``faults``: a :class:`FaultSchedule` (seeded probabilities) or a callable
  ``(request_index, body) -> kind | None`` choosing a fault per request, kind
  one of ``"408"``, ``"429"`` (with ``Retry-After``), ``"500"``,
  ``"timeout"`` (stall, then drop the connection with no response),
  ``"cut"`` (cut the response mid-way), ``"slow"`` (answer after a delay).
  A callable's faults wait ``stall`` (timeout) and ``retry_after`` (429)
  seconds; a schedule brings its own.
* ``chunk_delay``: seconds between SSE chunks (so a client can act mid-stream).

``honor_stop=True`` ends each reply at the first of the request's ``stop``
strings (``finish_reason: "stop"``), as real servers do; with a ``reply``
function of the request that thinks in ``<think>`` tags, that makes a
think-tag model a thinking policy can cut (tests/core/test_thinking.py).

What the server did is counted under a lock in :attr:`served` (a
:class:`Served` snapshot): requests received, responses completed, faults by
kind, the usage it *reported*, and the honest counts (prompt processed and
completion tokens generated for every request that reached generation; for
a cut stream, the tokens actually sent).

Example::

    with LoopbackOpenAIServer(latency=0.1, reply="The answer is 4.") as srv:
        model = load_model("openai:fake", base_url=srv.base_url)
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = str | Callable[[dict[str, Any]], str]
FaultFn = Callable[[int, dict[str, Any]], "str | None"]

#: Fault kinds a schedule can draw.
FAULT_KINDS = ("408", "429", "500", "timeout", "cut", "slow")


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultSchedule:
    """Seeded per-request fault probabilities (deterministic by request index).

    Request ``i`` draws from ``random.Random(f"{seed}:{i}")``, so the same
    seed gives the same faults for the same arrival order whatever the
    thread timing. Probabilities are tried in the order 408, 429, 500,
    timeout, cut, slow and must sum to <= 1.

    Attributes:
        retry_after: the ``Retry-After`` seconds sent with a 429.
        stall: seconds a ``timeout`` fault waits before dropping the connection.
        slow: extra seconds a ``slow`` fault waits before answering normally.
    """

    p408: float = 0.0
    p429: float = 0.0
    p500: float = 0.0
    ptimeout: float = 0.0
    pcut: float = 0.0
    pslow: float = 0.0
    seed: int = 0
    retry_after: float = 0.05
    stall: float = 0.3
    slow: float = 0.05

    def __post_init__(self) -> None:
        probs = (self.p408, self.p429, self.p500, self.ptimeout, self.pcut, self.pslow)
        if any(p < 0 for p in probs) or sum(probs) > 1 + 1e-9:
            raise ValueError(f"fault probabilities must be >= 0 and sum to <= 1, got {probs}")

    def __call__(self, index: int, body: dict[str, Any] | None = None) -> str | None:
        x = random.Random(f"{self.seed}:{index}").random()
        for kind, p in zip(FAULT_KINDS, (self.p408, self.p429, self.p500, self.ptimeout,
                                         self.pcut, self.pslow), strict=True):
            if x < p:
                return kind
            x -= p
        return None


@dataclass(slots=True)
class Served:
    """What a loopback server (or proxy) did, counted on its side.

    Attributes:
        requests: completion requests received (every attempt, faults included).
        ok: responses delivered in full with status 200.
        faults: injected faults by kind.
        prompt_tokens / completion_tokens: usage *reported* in bodies or usage
            chunks actually sent.
        honest_prompt_tokens / honest_completion_tokens: what was really
            processed and generated (a cut stream counts the tokens it sent;
            a cut JSON body its full generation).
        chunks: SSE content chunks written.
        client_gone: responses the client abandoned mid-way (cancellation).
    """

    requests: int = 0
    ok: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    honest_prompt_tokens: int = 0
    honest_completion_tokens: int = 0
    chunks: int = 0
    client_gone: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def honest_tokens(self) -> int:
        return self.honest_prompt_tokens + self.honest_completion_tokens

    def copy(self) -> Served:
        return replace(self, faults=dict(self.faults))


class _Server(ThreadingHTTPServer):
    # socketserver's default listen backlog is 5: a burst of 100 connects
    # would overflow it and stall on TCP SYN retransmits (~1 s).
    request_queue_size = 1024
    daemon_threads = True
    block_on_close = False
    connections = 0  # TCP connections accepted (kept-alive ones count once)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections += 1  # the serving thread only: no lock needed
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that drops its connection (cancelled, cut, timed out) is
        # expected here; anything else still prints.
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def send_json(h: BaseHTTPRequestHandler, code: int, body: dict[str, Any],
              headers: dict[str, str] | None = None) -> None:
    """Answer ``h``'s request with ``body`` as JSON (status ``code``, extra ``headers``)."""
    data = json.dumps(body).encode()
    h.send_response(code)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(data)))
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(data)


class QuietHandler(BaseHTTPRequestHandler):
    """A kept-alive HTTP/1.1 request handler with Nagle off and no request log."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the body
    # waits for the client's delayed ACK (~40 ms) on kept-alive sockets.
    disable_nagle_algorithm = True

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def _send(self, code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        send_json(self, code, body, headers)


class LoopbackHTTP:
    """A threaded HTTP server on 127.0.0.1 (an OS-chosen port) that stops on ``close()`` / exit.

    Subclasses build their request handler class and call :meth:`_serve`.
    """

    def _serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._httpd = _Server(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def connections(self) -> int:
        """TCP connections accepted so far (a kept-alive connection counts once)."""
        return int(self._httpd.connections)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _ClientGone(Exception):
    pass


def prompt_tokens_of(body: dict[str, Any]) -> int:
    """The loopback tokenizer for a request: words + 4 per message (or the prompt's words)."""
    if "messages" in body:
        return sum(len(str(m.get("content", "")).split()) + 4 for m in body.get("messages") or [])
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        prompt = " ".join(map(str, prompt))
    return len(str(prompt).split()) + 4


class LoopbackOpenAIServer(LoopbackHTTP):
    """Serves ``POST /v1/chat/completions``, ``POST /v1/completions`` and ``GET /v1/models`` on 127.0.0.1."""

    def __init__(
        self,
        *,
        latency: float = 0.0,
        reply: Reply = "The answer is 42.",
        model: str = "loopback",
        owned_by: str | None = None,
        usage_scale: float = 1.0,
        omit_usage: bool = False,
        choices_cap: int | None = None,
        cut_after: int | None = None,
        faults: FaultSchedule | FaultFn | None = None,
        chunk_delay: float = 0.0,
        stall: float = 0.3,
        retry_after: float = 0.05,
        honor_stop: bool = False,
    ) -> None:
        self.honor_stop = honor_stop
        self.latency = latency
        self.reply = reply
        self.model = model
        self.owned_by = owned_by
        self.usage_scale = usage_scale
        self.omit_usage = omit_usage
        self.choices_cap = choices_cap
        self.cut_after = cut_after
        self.faults = faults
        self.chunk_delay = chunk_delay
        # Waits of faults chosen by a callable (a FaultSchedule brings its own).
        self.stall = stall
        self.retry_after = retry_after
        self.requests: list[dict[str, Any]] = []
        self._served = Served()
        self._lock = threading.Lock()
        server = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    entry: dict[str, Any] = {"id": server.model, "object": "model"}
                    if server.owned_by:
                        entry["owned_by"] = server.owned_by
                    self._send(200, {"object": "list", "data": [entry]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except json.JSONDecodeError:
                    self._send(400, {"error": {"message": "bad json"}})
                    return
                path = self.path.rstrip("/")
                if path.endswith("/chat/completions"):
                    chat = True
                elif path.endswith("/completions"):
                    chat = False
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                server._handle(self, body, chat)

        self._serve(Handler)

    # ---------------------------------------------------------------- views
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def served(self) -> Served:
        """A consistent copy of the server-side counts."""
        with self._lock:
            return self._served.copy()

    @property
    def request_count(self) -> int:
        with self._lock:
            return self._served.requests

    def reset_counts(self) -> None:
        with self._lock:
            self._served = Served()
            self.requests.clear()

    # ------------------------------------------------------------- handling
    def _fault_for(self, index: int, body: dict[str, Any]) -> str | None:
        if self.faults is None:
            return None
        kind = self.faults(index, body)
        if kind is not None and kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {FAULT_KINDS}")
        return kind

    def _count(self, **add: int) -> None:
        with self._lock:
            for k, v in add.items():
                setattr(self._served, k, getattr(self._served, k) + v)

    def _handle(self, h: BaseHTTPRequestHandler, body: dict[str, Any], chat: bool) -> None:
        with self._lock:
            index = self._served.requests
            self._served.requests += 1
            self.requests.append(body)
        kind = self._fault_for(index, body)
        if kind is not None:
            with self._lock:
                self._served.faults[kind] = self._served.faults.get(kind, 0) + 1
        sched = self.faults if isinstance(self.faults, FaultSchedule) else None
        if self.latency:
            time.sleep(self.latency)
        if kind == "slow":
            time.sleep(sched.slow if sched else 0.05)
        if kind in ("408", "500"):
            msg = "request timeout" if kind == "408" else "internal error (injected)"
            h._send(int(kind), {"error": {"message": msg, "type": "server_error"}})  # type: ignore[attr-defined]
            return
        if kind == "429":
            wait = sched.retry_after if sched else self.retry_after
            h._send(429, {"error": {"message": "rate limited (injected)", "type": "rate_limit_error",  # type: ignore[attr-defined]
                                    "code": "rate_limit_exceeded"}},
                    {"Retry-After": f"{wait:g}"})
            return
        if kind == "timeout":
            time.sleep(sched.stall if sched else self.stall)
            _drop(h)
            return
        cut = kind == "cut"
        if body.get("stream"):
            self._stream(h, body, chat, cut)
        else:
            self._plain(h, body, chat, cut)

    def _texts(self, body: dict[str, Any]) -> tuple[list[str], list[str], int]:
        n = max(int(body.get("n") or 1), 1)
        if self.choices_cap is not None:
            n = max(min(n, self.choices_cap), 1)
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 256)
        text = self.reply(body) if callable(self.reply) else self.reply
        stops = body.get("stop") or []
        if self.honor_stop and stops:
            cuts = [i for s in ([stops] if isinstance(stops, str) else stops) if s and (i := text.find(s)) >= 0]
            if cuts:
                text = text[: min(cuts)]
        words = text.split() or ["ok"]
        finish = "stop"
        if len(words) > max_tokens:
            words, finish = words[:max_tokens], "length"
        return [" ".join(words)] * n, [finish] * n, len(words)

    def _usage(self, prompt: int, completion: int) -> dict[str, int]:
        reported = int(round(completion * self.usage_scale))
        return {"prompt_tokens": prompt, "completion_tokens": reported, "total_tokens": prompt + reported}

    def _plain(self, h: BaseHTTPRequestHandler, body: dict[str, Any], chat: bool, cut: bool) -> None:
        texts, finishes, words = self._texts(body)
        prompt = prompt_tokens_of(body)
        honest_out = words * len(texts)
        if chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": t},
                        "finish_reason": f, "logprobs": None}
                       for i, (t, f) in enumerate(zip(texts, finishes, strict=True))]
        else:
            choices = [{"index": i, "text": t, "finish_reason": f, "logprobs": None}
                       for i, (t, f) in enumerate(zip(texts, finishes, strict=True))]
        out: dict[str, Any] = {
            "id": f"loopback-{len(self.requests)}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": choices,
        }
        usage = None if self.omit_usage else self._usage(prompt, honest_out)
        if usage is not None:
            out["usage"] = usage
        self._count(honest_prompt_tokens=prompt, honest_completion_tokens=honest_out)
        if cut or self.cut_after is not None:
            data = json.dumps(out).encode()
            try:
                h.send_response(200)
                h.send_header("Content-Type", "application/json")
                h.send_header("Content-Length", str(len(data)))
                h.end_headers()
                h.wfile.write(data[: len(data) // 2])
                h.wfile.flush()
            except OSError:
                pass
            _drop(h)
            return
        try:
            h._send(200, out)  # type: ignore[attr-defined]
        except OSError:
            self._count(client_gone=1)
            return
        if usage is not None:
            self._count(prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"])
        self._count(ok=1)

    def _stream(self, h: BaseHTTPRequestHandler, body: dict[str, Any], chat: bool, cut: bool) -> None:
        texts, finishes, words = self._texts(body)
        prompt = prompt_tokens_of(body)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage")) and not self.omit_usage
        n = len(texts)
        split = [t.split() for t in texts]
        limit = self.cut_after
        if cut and limit is None:
            limit = max(words * n // 2, 1)
        rid = f"loopback-{len(self.requests)}"
        obj = "chat.completion.chunk" if chat else "text_completion"
        model = body.get("model", self.model)
        sent = 0
        self._count(honest_prompt_tokens=prompt)
        try:
            h.send_response(200)
            h.send_header("Content-Type", "text/event-stream")
            h.send_header("Cache-Control", "no-cache")
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()

            def event(payload: dict[str, Any] | str) -> None:
                text = payload if isinstance(payload, str) else json.dumps(payload)
                data = f"data: {text}\n\n".encode()
                try:
                    h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    h.wfile.flush()
                except OSError as exc:
                    raise _ClientGone from exc

            def choice(i: int, piece: str | None, finish: str | None) -> dict[str, Any]:
                if chat:
                    delta: dict[str, Any] = {} if piece is None else {"content": piece}
                    if piece is not None and sent < n:
                        delta["role"] = "assistant"
                    return {"index": i, "delta": delta, "finish_reason": finish, "logprobs": None}
                return {"index": i, "text": piece or "", "finish_reason": finish, "logprobs": None}

            for w in range(words):
                for i in range(n):
                    if limit is not None and sent >= limit:
                        raise _Cut
                    piece = split[i][w] + (" " if w < words - 1 else "")
                    if self.chunk_delay:
                        time.sleep(self.chunk_delay)
                    event({"id": rid, "object": obj, "created": 0, "model": model,
                           "choices": [choice(i, piece, None)]})
                    sent += 1
                    self._count(chunks=1, honest_completion_tokens=1)
            if limit is not None and sent >= limit and self.cut_after is not None:
                # cut_after counts content chunks; a stream that fits is cut before its end.
                raise _Cut
            for i in range(n):
                event({"id": rid, "object": obj, "created": 0, "model": model,
                       "choices": [choice(i, None, finishes[i])]})
            usage = self._usage(prompt, words * n) if include_usage else None
            if usage is not None:
                event({"id": rid, "object": obj, "created": 0, "model": model, "choices": [],
                       "usage": usage})
            event("[DONE]")
            h.wfile.write(b"0\r\n\r\n")
            h.wfile.flush()
        except _Cut:
            _drop(h)
            return
        except (_ClientGone, OSError):
            self._count(client_gone=1)
            h.close_connection = True
            return
        if usage is not None:
            self._count(prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"])
        self._count(ok=1)



#: The misbehaviours :func:`misbehaving_server` builds, by name.
MISBEHAVIOURS = ("honest", "over-reporting", "no-usage", "fewer-choices", "cut-stream", "error-storm")


def misbehaving_server(mode: str, *, reply: Any, seed: int = 0, p_cut: float = 0.5, p_timeout: float = 0.1,
                       **kw: Any) -> LoopbackOpenAIServer:
    """A loopback server (native ``n``, as vLLM) that misbehaves as ``mode`` of :data:`MISBEHAVIOURS`.

    ``over-reporting`` bills 50x the tokens, ``no-usage`` omits usage,
    ``fewer-choices`` returns one choice whatever ``n`` asks, ``cut-stream``
    cuts a ``p_cut`` share of replies, ``error-storm`` answers with seeded
    408/429/500 and ``p_timeout`` stalls; ``kw`` goes to the server.
    """
    kw = {"reply": reply, "owned_by": "vllm", **kw}
    if mode == "over-reporting":
        kw["usage_scale"] = 50
    elif mode == "no-usage":
        kw["omit_usage"] = True
    elif mode == "fewer-choices":
        kw["choices_cap"] = 1
    elif mode == "cut-stream":
        kw["faults"] = FaultSchedule(pcut=p_cut, seed=seed)
    elif mode == "error-storm":
        kw["faults"] = FaultSchedule(p408=0.1, p429=0.2, p500=0.2, ptimeout=p_timeout, seed=seed,
                                     retry_after=0.01, stall=0.05)
    elif mode != "honest":
        raise ValueError(f"unknown misbehaviour {mode!r}; known: {', '.join(MISBEHAVIOURS)}")
    return LoopbackOpenAIServer(**kw)


class _Cut(Exception):
    pass


def _drop(h: BaseHTTPRequestHandler) -> None:
    """Close the client connection abruptly (no more bytes, no clean end of body)."""
    h.close_connection = True
    try:
        h.wfile.flush()
    except OSError:
        pass
    try:
        h.connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def main() -> None:
    """``python -m testtime.testing.loopback --latency 0.1``: serve until killed.

    Prints the base URL on the first line of stdout, so a benchmark can run
    the server in its own process (no GIL shared with the client).
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="loopback OpenAI-compatible server")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--reply", default="The answer is 42.")
    parser.add_argument("--owned-by", default=None, help="owned_by reported by GET /models (e.g. vllm)")
    parser.add_argument("--usage-scale", type=float, default=1.0, help="report k x the completion tokens")
    parser.add_argument("--omit-usage", action="store_true", help="never report usage")
    parser.add_argument("--choices-cap", type=int, default=None, help="return at most this many choices")
    parser.add_argument("--cut-after", type=int, default=None, help="cut streams after k chunks")
    args = parser.parse_args()
    server = LoopbackOpenAIServer(latency=args.latency, reply=args.reply, owned_by=args.owned_by,
                                  usage_scale=args.usage_scale, omit_usage=args.omit_usage,
                                  choices_cap=args.choices_cap, cut_after=args.cut_after)
    print(server.base_url, flush=True)
    try:
        server._thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        sys.exit(0)


if __name__ == "__main__":
    main()
