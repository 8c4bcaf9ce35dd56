"""`testtime run` on the embedded SmolLM2-135M model: real inference, real budget."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "testtime.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_embedded_model_answers_through_testtime_run() -> None:
    proc = run_cli("run", "What is 2 + 2?", "--model", "local", "--strategy", "single",
                        "--max-tokens", "48", "--seed", "0", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["model"].startswith("local")
    assert data["usage"]["output_tokens"] > 0 and data["usage"]["calls"] == 1
    assert data["candidates"][0]["text"].strip()  # the model really wrote something
    assert data["usage"]["usd"] == 0


def test_tiny_token_budget_is_never_exceeded_on_the_real_model() -> None:
    proc = run_cli("run", "Explain why the sky is blue.", "--model", "local",
                        "--budget", "tokens=200", "--seed", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert 0 < data["usage"]["tokens"] <= 200
    assert data["stopped_reason"] == "budget_exhausted"


def test_live_view_on_the_real_model_prints_summary() -> None:
    proc = run_cli("run", "Say hello.", "--model", "local", "--strategy", "single",
                        "--max-tokens", "16", "--budget", "tokens=400")
    assert proc.returncode == 0, proc.stderr
    assert "Answer:" in proc.stdout and "Spend" in proc.stdout
