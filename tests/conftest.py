"""Shared fixtures.

``llama_server``: llama-cpp-python's OpenAI-compatible server serving the
embedded SmolLM2 GGUF on 127.0.0.1 (a free port, 2 threads at most), started
once per session on first use, waited on until it answers, always stopped.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # so tests can import tests.support.* under --import-mode=importlib
    sys.path.insert(0, str(_ROOT))

SERVER_START_TIMEOUT = 90.0

# The suite runs the embedded model in-process while a llama_cpp.server, the
# sandbox or a gateway may share the same cores; two llama.cpp threads each
# oversubscribe a 2-core machine and decoding slows 10-70x. One thread keeps the
# tests' wall time stable. Users get the machine's cores by default.
os.environ.setdefault("TESTTIME_THREADS", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited early with status {proc.returncode}")
        try:
            if httpx.get(url + "/models", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"llama_cpp.server did not answer at {url} within {timeout:.0f}s")


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL (``http://127.0.0.1:PORT/v1``) of a real llama_cpp.server on the embedded model."""
    pytest.importorskip("llama_cpp.server.app", reason="needs llama-cpp-python[server] (extra `server`)")
    from testtime.models.llamacpp import embedded_gguf_path

    port = free_port()
    log = tmp_path_factory.mktemp("llama_server") / "server.log"
    threads = str(min(2, os.cpu_count() or 1))
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_gguf_path()),
           "--host", "127.0.0.1", "--port", str(port), "--n_threads", threads,
           "--n_threads_batch", threads, "--n_ctx", "1024", "--verbose", "False"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_ready(url, proc, SERVER_START_TIMEOUT)
        yield url
    except Exception:
        sys.stderr.write(log.read_text(errors="replace")[-4000:])
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
