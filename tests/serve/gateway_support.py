"""Start a real ``testtime serve`` for tests: in a thread (uvicorn.Server) or as a subprocess.

Both bind 127.0.0.1 on a free port, wait until ``/health`` answers and stop
the server on exit. Keys are made up per test run (never in code).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from testtime.testing.loopback import LoopbackOpenAIServer

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_key() -> str:
    """A made-up API key for one test run."""
    return "tt-test-" + secrets.token_hex(16)


def key_entry(name: str, key: str, **limits: str) -> dict[str, Any]:
    from testtime.serve.keys import hash_key

    return {"name": name, "hash": hash_key(key), "limits": limits}


@dataclass
class Running:
    """A started in-process gateway: its URL and its :class:`~testtime.serve.app.Gateway`."""

    url: str
    gw: Any

    @property
    def v1(self) -> str:
        return self.url + "/v1"


@contextmanager
def gateway(*, config: dict[str, Any] | None = None, **settings: Any) -> Iterator[Running]:
    """An in-process gateway (uvicorn in a thread) on 127.0.0.1."""
    import uvicorn

    from testtime.serve.app import create_app
    from testtime.serve.config import ServeConfig, ServeSettings

    port = free_port()
    st = ServeSettings(port=port, config=ServeConfig.model_validate(config or {}), **settings)
    app = create_app(st)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the gateway did not start")
        time.sleep(0.02)
    try:
        yield Running(f"http://127.0.0.1:{port}", app.state.gateway)
    finally:
        server.should_exit = True
        thread.join(15)


@contextmanager
def gateway_process(args: list[str], *, config: dict[str, Any] | None = None, tmp: Path,
                    timeout: float = 60.0) -> Iterator[str]:
    """``python -m testtime.cli serve ARGS`` as a subprocess; yields its base URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "testtime.cli", "serve", "--port", str(port), "--log-level", "warning", *args]
    if config is not None:
        path = tmp / "serve.yaml"
        path.write_text(json.dumps(config))  # JSON is YAML
        cmd += ["--config", str(path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log = tmp / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        poll = httpx.Client(timeout=1.0)  # one client: building one per poll costs CPU the workers need
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"testtime serve exited with {proc.returncode}: "
                                   f"{log.read_text(errors='replace')[-2000:]}")
            try:
                if poll.get(url + "/health").status_code == 200:
                    poll.close()
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"testtime serve did not answer: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class ToolLoopback(LoopbackOpenAIServer):
    """The loopback upstream, plus tool calls: a request with ``tools`` gets one call of the first tool."""

    def _plain(self, h: Any, body: dict[str, Any], chat: bool, cut: bool) -> None:  # noqa: D401
        tools = body.get("tools")
        if not tools:
            return super()._plain(h, body, chat, cut)
        from testtime.testing.loopback import prompt_tokens_of

        name = tools[0]["function"]["name"]
        prompt = prompt_tokens_of(body) + len(json.dumps(tools).split())
        out = {
            "id": "loopback-tools", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"),
            "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None,
                         "message": {"role": "assistant", "content": None, "tool_calls": [
                             {"id": "call_1", "type": "function",
                              "function": {"name": name, "arguments": json.dumps({"city": "Paris"})}}]}}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": 7, "total_tokens": prompt + 7},
        }
        self._count(honest_prompt_tokens=prompt, honest_completion_tokens=7, prompt_tokens=prompt,
                    completion_tokens=7, ok=1)
        h._send(200, out)
