"""`testtime allocate` and `testtime compose` on the simulator and on files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testtime.cli import main


def _json(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


@pytest.mark.parametrize("method", ["random", "grid", "greedy", "bayes"])
def test_allocate_sim_json(capsys, method):
    out = _json(capsys, ["allocate", "--sim", "plan-solve", "--method", method, "--trials", "8", "--seed", "3",
                         "--json"])
    assert out["method"] == method and len(out["trials"]) == 8
    assert out["best"]["accuracy"] == max(t["accuracy"] for t in out["trials"])
    assert out["oracle"]["accuracy"] >= out["best_true_accuracy"]
    assert out["regret"] == pytest.approx(out["oracle"]["accuracy"] - out["best_true_accuracy"])
    limit = out["budget"]["tokens"]
    assert all(t["cost"]["tokens"] <= limit for t in out["trials"])


def test_allocate_agent_with_scripted_proposer_and_custom_budget(capsys):
    out = _json(capsys, ["allocate", "--sim", "--method", "agent", "--proposer", "scripted:not json",
                         "--trials", "6", "--budget", "tokens=3000", "--json"])
    assert out["budget"] == {"tokens": 3000}
    assert all(t["cost"]["tokens"] <= 3000 for t in out["trials"])
    assert out["stats"]["fallback_used"] >= 5 and out["stats"]["proposer_model"].startswith("scripted")


def test_allocate_table_output(capsys):
    assert main(["allocate", "--sim", "--method", "random", "--trials", "3"]) == 0
    assert "oracle optimum" in capsys.readouterr().out


@pytest.mark.parametrize("argv,msg", [
    (["allocate"], "--sim"),
    (["allocate", "--sim", "nope"], "unknown simulated task"),
    (["allocate", "--sim", "--method", "anneal"], "unknown allocation method"),
    (["allocate", "--sim", "--budget", "tokens=10"], "too small"),
    (["allocate", "--sim", "--trials", "0"], "--trials"),
    (["compose", "--sim"], "required"),
    (["compose", "--sim", "--budget", "tokens=100"], "usd="),
])
def test_errors_exit_2(capsys, argv, msg):
    assert main(argv) == 2
    assert msg in capsys.readouterr().err


def test_compose_sim_json(capsys):
    out = _json(capsys, ["compose", "--sim", "--misleading", "--budget", "usd=0.3", "--seed", "104", "--json"])
    assert out["components"] == 120
    methods = [out["composer"]["method"]] + [b["method"] for b in out["baselines"]]
    assert methods == ["composer", "retrieval", "greedy", "dp"]
    for r in [out["composer"], *out["baselines"]]:
        assert r["cost"] <= 0.3 + 1e-9 and 0 <= r["true_success"] <= 1
    assert set(out["pareto"]) == {"dominates", "dominated_by", "on_frontier"}


def test_compose_inventory_file(capsys, tmp_path: Path):
    inv = tmp_path / "inv.yaml"
    inv.write_text("""\
task: query the sales database
components:
  - {name: sql, kind: agent, description: sales database query agent, cost: 0.1, utility: 0.2}
  - {name: strong, kind: agent, description: relational store lookup, cost: 0.1, utility: 0.9}
  - {name: poet, kind: model, description: writes poems, cost: 0.05, utility: 0.0}
""")
    out = _json(capsys, ["compose", "--inventory", str(inv), "--budget", "usd=0.1", "--json"])
    # Online: the first useful candidate is admitted at the low early threshold;
    # a zero-utility component never is.
    assert out["composer"]["chosen"] and "poet" not in out["composer"]["chosen"]
    assert out["composer"]["cost"] <= 0.1 + 1e-9
    retrieval = next(b for b in out["baselines"] if b["method"] == "retrieval")
    assert retrieval["chosen"] == ["sql"]
    dp = next(b for b in out["baselines"] if b["method"] == "dp")
    assert dp["chosen"] == ["strong"]
    inv.write_text(inv.read_text().replace(", utility: 0.9", ""))
    assert main(["compose", "--inventory", str(inv), "--budget", "usd=0.1"]) == 2
    assert "utility" in capsys.readouterr().err


def test_allocate_real_task_file(capsys, tmp_path: Path):
    task = tmp_path / "task.yaml"
    task.write_text("""\
name: two-stage
inputs: {question: null}
models:
  good: "scripted:The answer is 4."
  bad: "scripted:The answer is 5."
stages:
  - {name: plan, prompt: "Plan: {inputs.question}", model: bad, max_tokens: 32}
  - {name: solve, after: [plan], prompt: "{inputs.question} {stages.plan.text}", model: bad, max_tokens: 32}
output: solve
""")
    train = tmp_path / "train.jsonl"
    train.write_text('{"inputs": {"question": "2+2?"}, "answer": "4"}\n{"question": "two plus two?", "answer": "4"}\n')
    out = _json(capsys, ["allocate", "--task", str(task), "--train", str(train), "--method", "greedy",
                         "--trials", "5", "--budget", "tokens=2000", "--levels", "1,2", "--json"])
    assert out["best"]["accuracy"] == 1.0
    assert out["best"]["allocation"]["solve"]["model"] == "good"
    assert all(t["accuracy"] == (1.0 if t["allocation"]["solve"]["model"] == "good" else 0.0)
               for t in out["trials"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"inputs": {"question": "x"}}\n')
    assert main(["allocate", "--task", str(task), "--train", str(bad), "--budget", "tokens=2000"]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err
