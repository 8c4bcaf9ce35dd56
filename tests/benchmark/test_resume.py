"""A sweep killed with SIGKILL halfway loses nothing: the rerun runs only unfinished cells."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.benchmark.helpers import rows_without_timings, write_math_jsonl
from testtime.benchmark.report import without_timings
from testtime.benchmark.store import ResultsStore, cell_key

ROOT = Path(__file__).resolve().parents[2]

# The sweep runs in a child process; its model logs one line per call and,
# when KILL_AFTER is set, SIGKILLs its own process at that call.
SCRIPT = '''
import os, signal, sys
sys.path.insert(0, {root!r})
from testtime.benchmark.sweep import SweepSpec, run_sweep
from testtime.models.scripted import FunctionModel
from tests.benchmark.helpers import coin_reply

log, kill_after = sys.argv[2], int(os.environ.get("KILL_AFTER", "0"))
calls = 0

def reply(req):
    global calls
    calls += 1
    with open(log, "a") as fh:
        fh.write(req.metadata.get("problem_id", "") + "\\n")
    if kill_after and calls == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
    return coin_reply(req, 0.5)

run_sweep(SweepSpec(dataset={data!r}, model=FunctionModel(reply, name="coin"), strategies="single,best_of_n",
                    budgets="tokens=300,600", seeds="0,1", out=sys.argv[1], concurrency=1))
'''


def _run(script: Path, out: Path, log: Path, kill_after: int = 0) -> int:
    env = {**os.environ, "KILL_AFTER": str(kill_after), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(script), str(out), str(log)], env=env, cwd=ROOT,
                          timeout=120).returncode


def _calls(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_sigkill_then_rerun_runs_only_unfinished_cells_and_reports_the_same(tmp_path: Path) -> None:
    data = write_math_jsonl(tmp_path / "m.jsonl", 6)
    script = tmp_path / "sweep.py"
    script.write_text(SCRIPT.format(root=str(ROOT), data=str(data)))

    ref_out, ref_log = tmp_path / "ref", tmp_path / "ref.log"
    assert _run(script, ref_out, ref_log) == 0
    ref_rows = ResultsStore(ref_out).rows()
    assert len(ref_rows) == 6 * 2 * 2 * 2
    calls_per_cell = {cell_key(r): r["usage"]["calls"] for r in ref_rows}
    assert _calls(ref_log) == sum(calls_per_cell.values())

    out, log = tmp_path / "run", tmp_path / "run.log"
    half = _calls(ref_log) // 2
    assert _run(script, out, log, kill_after=half) == -signal.SIGKILL
    done = {cell_key(r) for r in ResultsStore(out).rows()}
    assert 0 < len(done) < len(ref_rows)
    first_calls = _calls(log)
    assert first_calls == half

    assert _run(script, out, log) == 0
    rerun_calls = _calls(log) - first_calls
    # Exactly the calls of the cells that were not finished (the one in flight included): none re-run.
    assert rerun_calls == sum(n for key, n in calls_per_cell.items() if key not in done)
    assert rows_without_timings(ResultsStore(out).rows()) == rows_without_timings(ref_rows)
    ref_report = json.loads((ref_out / "report.json").read_text())
    report = json.loads((out / "report.json").read_text())
    assert without_timings(report) == without_timings(ref_report)
    assert (out / "report.md").read_text().count("|") == (ref_out / "report.md").read_text().count("|")
