"""Task files: validation errors with file:line:field, and `testtime run --task`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testtime.cli import main
from testtime.errors import UserError
from testtime.orchestrator import load_task, parse_task

GOOD = """\
name: demo
budget: tokens=3k
seed: 0
inputs: {question: null}
models:
  m: "scripted:The answer is 7."
stages:
  - name: plan
    prompt: "Plan {inputs.question}"
    model: m
    share: 0.3
  - name: solve
    prompt: "{inputs.question} using {stages.plan.text}"
    model: m
    strategy: {name: self_consistency, n: 3}
"""


def _err(text: str, tmp_path: Path) -> str:
    p = tmp_path / "task.yaml"
    p.write_text(text)
    with pytest.raises(UserError) as info:
        load_task(p)
    return str(info.value)


def test_good_task_builds_a_sequence(tmp_path: Path):
    p = tmp_path / "t.yaml"
    p.write_text(GOOD)
    wf = load_task(p)
    assert list(wf.stages) == ["plan", "solve"]
    assert wf.dependencies() == {"plan": [], "solve": ["plan"]}
    assert dict(wf.stages["solve"].strategy_options) == {"n": 3}


@pytest.mark.parametrize("text, line, field, expect", [
    (GOOD.replace("share: 0.3", "share: lots"), 11, "stages[0].share", "valid number"),
    (GOOD.replace("    share: 0.3\n", "    shares: 0.3\n"), 11, "stages[0].shares", "unknown field; expected one of"),
    (GOOD.replace('    prompt: "Plan {inputs.question}"\n', ""), 8, "stages[0].prompt", "required field is missing"),
    (GOOD.replace("{name: self_consistency, n: 3}", "bogus_search"), 15, "stages[1].strategy",
     "unknown strategy 'bogus_search'"),
    (GOOD.replace("    model: m\n    strategy", "    model: nosuch\n    strategy"), 14, "stages[1].model",
     "unknown model spec"),
    (GOOD.replace("budget: tokens=3k", "budget: tokens=lots"), 2, "budget", "expected e.g."),
    (GOOD + "edges: [\"plan -> nowhere\"]\n", 16, "edges[0]", "unknown stage 'nowhere'"),
    (GOOD.replace("{stages.plan.text}", "{stages.later.text}"), 13, "stages[1].prompt", "does not run before"),
])
def test_errors_name_file_line_and_field(tmp_path: Path, text: str, line: int, field: str, expect: str):
    msg = _err(text, tmp_path)
    assert f"task.yaml:{line}: {field}" in msg
    assert expect in msg


def test_yaml_syntax_error_has_a_line(tmp_path: Path):
    msg = _err("stages:\n  - name: [oops\n", tmp_path)
    assert "task.yaml:" in msg and "not valid YAML" in msg


def test_parse_task_without_stages():
    with pytest.raises(UserError, match="stages: required field is missing"):
        parse_task("name: x\n", file="x.yaml")


def test_cli_runs_task_with_json_and_resumes(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("TESTTIME_HOME", str(tmp_path / "home"))
    task = tmp_path / "t.yaml"
    task.write_text(GOOD)
    trace = tmp_path / "t.jsonl"
    rc = main(["run", "--task", str(task), "--input", "question=2+5?", "--json", "--trace", str(trace)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["answer"] == "7" and set(out["stages"]) == {"plan", "solve"}
    # `calls` counts requests: plan's one + solve's three (scripted models have no native n).
    assert out["usage"]["by_role"]["solve"]["calls"] == 4
    assert out["usage"]["by_stage"]["plan"]["calls"] == 1 and out["budget"] == {"tokens": 3000}
    assert (tmp_path / "home" / "checkpoints.sqlite").exists()
    # Resuming a finished run re-issues nothing and reports the same spend.
    rc = main(["run", "--task", str(task), "--resume", out["run_id"], "--json"])
    again = json.loads(capsys.readouterr().out)
    assert rc == 0 and again["answer"] == "7" and again["resumed"] is True
    assert again["usage"]["calls"] == out["usage"]["calls"]
    assert main(["run", "--task", str(task), "--resume", "nope", "--json"]) == 2


def test_cli_model_and_budget_overrides(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("TESTTIME_HOME", str(tmp_path))
    task = tmp_path / "t.yaml"
    task.write_text(GOOD)
    rc = main(["run", "--task", str(task), "--input", "question=q", "--json",
               "--model", "scripted:The answer is 11.", "--budget", "tokens=900"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["answer"] == "11" and out["budget"] == {"tokens": 900}
    assert out["usage"]["tokens"] <= 900


def test_cli_missing_input_and_bad_file(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("TESTTIME_HOME", str(tmp_path))
    task = tmp_path / "t.yaml"
    task.write_text(GOOD)
    assert main(["run", "--task", str(task), "--json"]) == 2
    assert "--input question=VALUE" in capsys.readouterr().err
    assert main(["run", "--task", str(tmp_path / "missing.yaml")]) == 2


def test_cli_live_view_prints_summary_and_stages(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("TESTTIME_HOME", str(tmp_path))
    task = tmp_path / "t.yaml"
    task.write_text(GOOD)
    assert main(["run", "--task", str(task), "--input", "question=q"]) == 0
    out = capsys.readouterr().out
    assert "Answer: 7" in out and "Stages" in out and "plan" in out
