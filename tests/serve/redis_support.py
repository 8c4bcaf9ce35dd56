"""A private ``redis-server`` for tests: 127.0.0.1, a free port, no persistence.

Tests that need Redis call :func:`redis_server` (a context manager yielding a
``redis://`` URL); when the binary or the ``redis`` package is missing it
skips with a reason that says which (``pytest -rs`` prints it).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


def redis_available() -> str | None:
    """None when a real Redis can be started here, else why not."""
    if shutil.which("redis-server") is None:
        return "redis-server binary not found on PATH (apt-get install redis-server)"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "the redis Python package is missing (pip install 'testtime[redis]')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def redis_server() -> Iterator[str]:
    """Start ``redis-server`` on 127.0.0.1 and yield its URL; stop it on exit."""
    reason = redis_available()
    if reason:
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    import redis

    with tempfile.TemporaryDirectory(prefix="tt-redis-") as workdir:
        port = _free_port()
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir, "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        url = f"redis://127.0.0.1:{port}/0"
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    redis.Redis.from_url(url).ping()
                    break
                except redis.ConnectionError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server on port {port} did not start "
                                           f"(exit {proc.poll()})") from None
                    time.sleep(0.05)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
