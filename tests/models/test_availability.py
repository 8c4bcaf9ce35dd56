"""`testtime models`: one row per backend, saying whether it is usable and why."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.openai_server import openai_server
from testtime.models.availability import check_all, render_table
from testtime.models.registry import BACKENDS


def test_models_json_lists_every_backend() -> None:
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")}
    proc = subprocess.run([sys.executable, "-m", "testtime.cli", "models", "--json"], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["backend"] for r in rows] == list(BACKENDS)
    by = {r["backend"]: r for r in rows}
    assert by["anthropic"]["usable"] is False and "ANTHROPIC_API_KEY" in by["anthropic"]["why"]
    assert by["openai"]["usable"] is False and "OPENAI_API_KEY" in by["openai"]["why"]
    assert by["scripted"]["usable"] is True
    assert all(isinstance(r["why"], str) and r["why"] for r in rows)


def test_key_presence_and_server_probe(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key-not-real")
    with openai_server() as srv:
        rows = {r["backend"]: r for r in check_all(base_url=srv.url + "/v1")}
    assert rows["anthropic"]["usable"] and "test-key-not-real" not in json.dumps(rows)
    assert rows["openai"]["usable"] and "reachable" in rows["openai"]["why"]
    from tests.conftest import free_port

    down = {r["backend"]: r for r in check_all(base_url=f"http://127.0.0.1:{free_port()}/v1")}
    assert down["openai"]["usable"] is False and "not reachable" in down["openai"]["why"]
    render_table(list(rows.values()))
    assert "anthropic" in capsys.readouterr().out
