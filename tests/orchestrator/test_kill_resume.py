"""A workflow killed with SIGKILL mid-run resumes from its checkpoint.

The target (kill_target.py) runs three stages on a FunctionModel with 0.25 s
latency. We kill it once stage ``a`` has ended and stage ``b`` has made a call
(seen in the trace file), resume it, and compare with an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from testtime.budget import Budget
from testtime.orchestrator.checkpoint import CallJournal

TARGET = Path(__file__).with_name("kill_target.py")
ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> dict:
    out = subprocess.run([sys.executable, str(TARGET), *args], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line being written when we read
    return out


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    reference = _run(str(tmp_path / "ref.sqlite"), str(tmp_path / "ref.jsonl"), "ref")

    db, trace = tmp_path / "ck.sqlite", tmp_path / "run.jsonl"
    proc = subprocess.Popen([sys.executable, str(TARGET), str(db), str(trace), "crash"], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ev = _events(trace)
            a_done = any(e["kind"] == "stage_end" and e["stage"] == "a" for e in ev)
            b_called = any(e["kind"] == "model_call" and e["stage"] == "b" for e in ev)
            if a_done and b_called:
                break
            if proc.poll() is not None:
                raise AssertionError("the target finished before it could be killed")
            time.sleep(0.02)
        else:
            raise AssertionError("stage b never started")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    before = _events(trace)
    assert not any(e["kind"] == "run_end" for e in before), "killed too late: the run had finished"
    n_before = len(before)
    with CallJournal(db, "crash") as journal:
        done_at_kill = journal.counts().get("done", 0)

    resumed = _run(str(db), str(trace), "crash", "--resume")
    after = _events(trace)[n_before:]

    # Same final answer as the uninterrupted run with the same seed.
    assert resumed["answer"] == reference["answer"]
    assert {k: v["answer"] for k, v in resumed["stages"].items()} == \
        {k: v["answer"] for k, v in reference["stages"].items()}
    assert resumed["resumed"] is True and resumed["run_id"] == "crash"
    # Finished stage a was not re-run: no stage_start and no model call for it.
    assert not any(e.get("stage") == "a" and e["kind"] in ("stage_start", "model_call") for e in after)
    assert any(e["kind"] == "run_resumed" and "a" in e["completed_stages"] for e in after)
    # The resumed process sent only the calls the killed one had not completed: stage a's
    # and those of b journaled done were not sent again (checkpointed or replayed).
    assert resumed["process_calls"] == reference["process_calls"] - done_at_kill
    # Spend across both processes (journal = every settled call) stays within the budget,
    # and the resumed run's usage counts the pre-crash spend.
    limit = Budget.parse("tokens=6000").tokens
    with CallJournal(db, "crash") as journal:
        total = sum(u.tokens for roles in journal.totals().values() for u in roles.values())
    assert resumed["usage"]["tokens"] == total
    assert total <= limit
    pre_crash = sum(e["usage"]["tokens"] for e in before if e["kind"] == "model_call")
    assert resumed["usage"]["tokens"] >= pre_crash > 0
