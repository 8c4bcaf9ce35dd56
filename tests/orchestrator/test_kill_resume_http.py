"""SIGKILL a `testtime run --task` subprocess mid-stage over real HTTP, then `--resume` at once.

The stage samples n=8 solutions from an OpenAI-compatible loopback server
(``native_n: false``: eight separate requests) under a budget that affords
only five worst cases at once, so the budget decides the rounds. The server
answers one request at a time, slowly, and counts every request and the
tokens it processed. We kill the run once the call journal shows some calls
done and some still pending, resume it right away, and compare with an
uninterrupted run of the same task and seed.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from testtime.models.base import GenerationRequest
from testtime.models.registry import load_model
from testtime.orchestrator.checkpoint import CallJournal
from testtime.search.base import DEFAULT_SYSTEM
from testtime.testing.loopback import LoopbackOpenAIServer

ROOT = Path(__file__).resolve().parents[2]
QUESTION = "What is 6 times 7?"
MAX_TOKENS = 48
N = 8
#: Seconds the server takes per request; it serves one request at a time.
SERVICE_S = 0.3


class _SlowServer:
    """A loopback OpenAI server that answers one request at a time, with seed-dependent answers."""

    def __init__(self) -> None:
        self._turn = threading.Lock()
        self.srv = LoopbackOpenAIServer(reply=self._reply)

    def _reply(self, body: dict) -> str:
        with self._turn:
            time.sleep(SERVICE_S)
        return f"Some work here. The answer is {int(body.get('seed') or 0) % 3}."

    def quiet(self, timeout: float = 30.0) -> None:
        """Wait until every request received has been answered (or its client was gone)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.srv.served
            if s.requests == s.ok + s.client_gone + sum(s.faults.values()):
                return
            time.sleep(0.05)
        raise AssertionError(f"server still busy: {self.srv.served}")


@pytest.fixture
def server():
    s = _SlowServer()
    try:
        yield s
    finally:
        s.srv.close()


def _task(tmp_path: Path, base_url: str) -> Path:
    task = tmp_path / "task.yaml"
    task.write_text(f"""\
name: killhttp
seed: 11
models:
  m: {{spec: "openai:loopback", base_url: "{base_url}", options: {{native_n: false}}}}
stages:
  - name: solve
    prompt: "{QUESTION}"
    model: m
    max_tokens: {MAX_TOKENS}
    strategy: {{name: self_consistency, n: {N}}}
""")
    return task


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "testtime.cli", "run", *args]


def _env(home: Path) -> dict[str, str]:
    env = {**os.environ, "TESTTIME_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("OPENAI_BASE_URL", None)
    return env


def _run(args: list[str], home: Path) -> dict:
    out = subprocess.run(_cli(*args), capture_output=True, text=True, timeout=180, cwd=ROOT,
                         env=_env(home))
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def _journal_counts(db: Path) -> tuple[dict[str, int], str | None]:
    if not db.exists():
        return {}, None
    try:
        con = sqlite3.connect(str(db), timeout=1)
        try:
            rows = con.execute("SELECT status, COUNT(*), MIN(run_id) FROM testtime_calls GROUP BY status").fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return {}, None
    return {s: c for s, c, _ in rows}, (rows[0][2] if rows else None)


def _events(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def test_sigkill_mid_fan_out_then_resume_sends_only_unfinished_calls_and_matches(tmp_path: Path, server):
    srv = server.srv
    task = _task(tmp_path, srv.base_url)
    model = load_model("openai:loopback", base_url=srv.base_url, native_n=False)
    worst = model.worst_case(GenerationRequest(prompt=QUESTION, system=DEFAULT_SYSTEM,
                                               max_tokens=MAX_TOKENS)).tokens
    limit = int(5.5 * worst)
    assert N * worst > limit  # the budget binds: all eight worst cases do not fit at once
    budget = f"tokens={limit}"

    # The uninterrupted run, for reference.
    ref = _run(["--task", str(task), "--json", "--budget", budget], tmp_path / "ref")
    server.quiet()
    full = srv.served
    assert full.requests == N and ref["stages"]["solve"]["status"] == "done"
    assert ref["usage"].get("errors", 0) == 0 and ref["usage"].get("retries", 0) == 0, ref["usage"]

    # The same run, killed once some of its calls are done and others in flight.
    home, trace = tmp_path / "crash", tmp_path / "crash.jsonl"
    db = home / "checkpoints.sqlite"
    proc = subprocess.Popen(_cli("--task", str(task), "--json", "--budget", budget, "--trace", str(trace)),
                            cwd=ROOT, env=_env(home),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            counts, _ = _journal_counts(db)
            if counts.get("done", 0) >= 2 and counts.get("pending", 0) >= 1:
                break
            if proc.poll() is not None:
                raise AssertionError("the run finished before it could be killed")
            time.sleep(0.01)
        else:
            raise AssertionError("the run never had calls done and in flight")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    counts, run_id = _journal_counts(db)
    done, pending = counts.get("done", 0), counts.get("pending", 0)
    assert run_id and done >= 1 and pending >= 1, counts
    assert not any(e["kind"] == "run_end" for e in _events(trace)), "killed too late"
    sent_before_kill = srv.served.requests - full.requests
    in_flight = sent_before_kill - done  # reached the server, never journaled done

    # Resume at once (the server is still busy with the killed run's requests).
    n_events = len(_events(trace))
    resumed = _run(["--task", str(task), "--resume", run_id, "--json", "--trace", str(trace)], home)
    server.quiet()
    after = srv.served
    sent_by_resume = after.requests - full.requests - sent_before_kill

    # Only the calls that had not completed were sent again.
    assert sent_by_resume == N - done
    assert after.requests - full.requests == N + in_flight
    # Same answers as the uninterrupted run with the same seed.
    assert resumed["resumed"] is True and resumed["run_id"] == run_id
    assert resumed["usage"].get("errors", 0) == 0, resumed["usage"]
    assert resumed["answer"] == ref["answer"] is not None
    assert resumed["stages"]["solve"]["answer"] == ref["stages"]["solve"]["answer"]
    assert resumed["stopped_reason"] == ref["stopped_reason"]
    # Spend: at least what the server processed for both processes (the calls
    # in flight at the kill are charged at their worst case).
    served_tokens = after.honest_tokens - full.honest_tokens
    assert resumed["usage"]["tokens"] >= served_tokens
    assert resumed["usage"]["tokens"] >= ref["usage"]["tokens"] + pending * worst
    with CallJournal(db, run_id) as journal:
        journaled = sum(u.tokens for roles in journal.totals().values() for u in roles.values())
    assert resumed["usage"]["tokens"] == journaled
    # The trace tells what happened: replays and the abandoned calls.
    later = _events(trace)[n_events:]
    replays = [e for e in later if e["kind"] == "model_call" and e.get("replayed")]
    assert len(replays) == done
    abandoned = [e for e in later if e["kind"] == "abandoned_calls"]
    assert len(abandoned) == 1 and abandoned[0]["count"] == pending
    assert abandoned[0]["usage"]["tokens"] == pending * worst
