"""A loopback server speaking the OpenAI chat-completions API, with fixed latency.

For benchmarks and tests that need real HTTP without a real model: every
request sleeps ``latency`` seconds, then answers with ``reply`` (a string or a
function of the request JSON). It binds 127.0.0.1 on a free port, serves from
a thread per request, and stops on ``close()`` / context exit.

Example::

    with LoopbackOpenAIServer(latency=0.1, reply="The answer is 4.") as srv:
        model = load_model("openai:fake", base_url=srv.base_url)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = str | Callable[[dict[str, Any]], str]


class _Server(ThreadingHTTPServer):
    # socketserver's default listen backlog is 5: a burst of 100 connects
    # would overflow it and stall on TCP SYN retransmits (~1 s).
    request_queue_size = 1024
    daemon_threads = True


class LoopbackOpenAIServer:
    """Serves ``POST /v1/chat/completions`` and ``GET /v1/models`` on 127.0.0.1."""

    def __init__(self, *, latency: float = 0.0, reply: Reply = "The answer is 42.",
                 model: str = "loopback") -> None:
        self.latency = latency
        self.reply = reply
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; with Nagle on, the body
            # waits for the client's delayed ACK (~40 ms) on kept-alive sockets.
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except json.JSONDecodeError:
                    self._send(400, {"error": {"message": "bad json"}})
                    return
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                with server._lock:
                    server.requests.append(body)
                if server.latency:
                    time.sleep(server.latency)
                self._send(200, server._completion(body))

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        n = int(body.get("n") or 1)
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 256)
        text = self.reply(body) if callable(self.reply) else self.reply
        words = text.split()
        finish = "stop"
        if len(words) > max_tokens:
            text, finish = " ".join(words[:max_tokens]), "length"
        out = max(1, len(text.split()))
        prompt = sum(len(str(m.get("content", "")).split()) + 4 for m in body.get("messages", []))
        return {
            "id": f"loopback-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": text},
                 "finish_reason": finish, "logprobs": None}
                for i in range(n)
            ],
            "usage": {"prompt_tokens": prompt, "completion_tokens": out * n,
                      "total_tokens": prompt + out * n},
        }

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> LoopbackOpenAIServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


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
    args = parser.parse_args()
    server = LoopbackOpenAIServer(latency=args.latency, reply=args.reply)
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
