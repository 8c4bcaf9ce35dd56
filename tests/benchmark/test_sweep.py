"""Sweeps on a math JSONL with models right with a known probability."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.benchmark.helpers import coin_model, coin_reply, write_math_jsonl
from testtime.benchmark.report import summarize
from testtime.benchmark.stats import pass_at_k
from testtime.benchmark.store import ResultsStore
from testtime.benchmark.sweep import SweepSpec, parse_budgets, run_sweep
from testtime.errors import UserError


def _within(observed: float, p: float, n: int, sigmas: float = 4.0) -> bool:
    return abs(observed - p) <= sigmas * math.sqrt(p * (1 - p) / n) + 1e-9


def test_accuracy_and_pass_at_k_match_the_known_probabilities(tmp_path: Path, math_jsonl: Path) -> None:
    p = 0.35
    out = tmp_path / "out"
    outcome = run_sweep(SweepSpec(dataset=str(math_jsonl), model=coin_model(p), strategies="single,best_of_n",
                                  budgets="tokens=400", options={"best_of_n": {"n": 4}}, out=out, concurrency=8))
    assert outcome.ran == 600 and not outcome.errors
    report = json.loads((out / "report.json").read_text())
    by = {r["strategy"]: r for r in report["rows"]}
    assert _within(by["single"]["accuracy"], p, 300)
    # best_of_n's 4 independent samples cover more: pass@k ~ 1 - (1-p)^k.
    cov = next(c for c in report["pass_at_k"] if c["strategy"] == "best_of_n")
    assert cov["k"] == [1, 2, 4]
    for k, value in zip(cov["k"], cov["pass_at_k"], strict=False):
        expect = 1 - (1 - p) ** k
        assert _within(value, expect, 300), (k, value, expect)
    assert by["best_of_n"]["mean_samples"] == 4
    # The interval brackets the estimate and is not vacuous.
    s = by["single"]
    assert s["ci_low"] < s["accuracy"] < s["ci_high"] and s["ci_high"] - s["ci_low"] < 0.15


def test_two_models_with_different_skill_are_told_apart(tmp_path: Path) -> None:
    data = write_math_jsonl(tmp_path / "m.jsonl", 200, seed=3)
    accs = {}
    for p in (0.2, 0.8):
        out = tmp_path / f"o{p}"
        run_sweep(SweepSpec(dataset=str(data), model=coin_model(p), strategies="self_consistency",
                            budgets="tokens=300", options={"self_consistency": {"n": 3}}, out=out))
        rows = ResultsStore(out).rows()
        accs[p] = sum(bool(r["correct"]) for r in rows) / len(rows)
    # Majority of 3 with distinct wrong answers: right iff >= 2 right, or 1 right seen first among 3 distinct.
    for p, acc in accs.items():
        maj = 3 * p * p * (1 - p) + p ** 3
        first_of_distinct = p * (1 - p) ** 2  # one right, two distinct wrong: tie, first seen wins (1/3 each)
        assert _within(acc, maj + first_of_distinct, 200), (p, acc)


def test_rows_follow_the_store_schema_and_samples_are_graded(tmp_path: Path) -> None:
    data = write_math_jsonl(tmp_path / "m.jsonl", 5)
    out = tmp_path / "o"
    run_sweep(SweepSpec(dataset=str(data), model=coin_model(0.5), strategies="best_of_n", budgets="tokens=300,600",
                        seeds="0,1", out=out))
    rows = ResultsStore(out).rows()
    assert len(rows) == 5 * 2 * 2
    keys = {"v", "config_hash", "dataset", "problem_id", "strategy", "budget", "seed", "answer", "correct",
            "stopped_reason", "usage", "seconds", "trace_id", "samples", "difficulty"}
    for r in rows:
        assert set(r) == keys
        assert r["usage"]["tokens"] <= int(r["budget"].split("=")[1])
        assert {"tokens", "usd", "calls", "by_role"} <= set(r["usage"])
        assert r["samples"] and all(set(s) == {"answer", "correct", "score"} for s in r["samples"])
        ref = next(json.loads(line)["answer"] for line in data.read_text().splitlines()
                   if json.loads(line)["id"] == r["problem_id"])
        for s in r["samples"]:
            assert s["correct"] == (s["answer"] == ref)
    # Seeds change the draws; the same seed gives the same draws at every budget's first sample.
    by = {(r["problem_id"], r["budget"], r["seed"]): r for r in rows}
    assert any(by[(f"add-{i}", "tokens=600", 0)]["samples"] != by[(f"add-{i}", "tokens=600", 1)]["samples"]
               for i in range(5))
    summary = summarize(rows)
    assert [r["budget"] for r in summary["rows"]] == ["tokens=300", "tokens=600"]
    for cov in summary["pass_at_k"]:
        cells = [r for r in rows if r["budget"] == cov["budget"]]
        n_min = min(len(r["samples"]) for r in cells)
        expect = sum(pass_at_k(len(r["samples"]), sum(s["correct"] for s in r["samples"]), n_min)
                     for r in cells) / len(cells)
        assert cov["k"][-1] == n_min and cov["pass_at_k"][-1] == pytest.approx(expect, abs=1e-4)


def test_changed_configuration_is_refused_but_more_cells_are_added(tmp_path: Path) -> None:
    data = write_math_jsonl(tmp_path / "m.jsonl", 4)
    out = tmp_path / "o"
    base = dict(dataset=str(data), model=coin_model(0.5), strategies="single", budgets="tokens=300", out=out)
    assert run_sweep(SweepSpec(**base)).ran == 4
    grown = run_sweep(SweepSpec(**{**base, "budgets": "tokens=300,600", "seeds": "0,1",
                                   "strategies": "single,best_of_n"}))
    assert (grown.skipped, grown.ran) == (4, 2 * 2 * 2 * 4 - 4)
    with pytest.raises(UserError, match="different configuration"):
        run_sweep(SweepSpec(**{**base, "max_tokens": 50}))
    data.write_text(data.read_text().replace('"add-0"', '"sum-0"'))
    with pytest.raises(UserError, match=r"changed: dataset_hash"):
        run_sweep(SweepSpec(**base))
    again = run_sweep(SweepSpec(**base, fresh=True))
    assert (again.skipped, again.ran) == (0, 4) and len(ResultsStore(out).rows()) == 4


def test_sweep_budget_stops_cleanly_and_is_never_passed(tmp_path: Path) -> None:
    data = write_math_jsonl(tmp_path / "m.jsonl", 20)
    out = tmp_path / "o"
    outcome = run_sweep(SweepSpec(dataset=str(data), model=coin_model(0.5), strategies="best_of_n",
                                  budgets="tokens=500", sweep_budget="tokens=3000", out=out, concurrency=4))
    rows = ResultsStore(out).rows()
    spent = sum(r["usage"]["tokens"] for r in rows)
    assert spent <= 3000 and outcome.sweep["spent"]["tokens"] == spent
    assert 0 < len(rows) < 20 and outcome.ran == len(rows)
    assert outcome.stopped and f"{len(rows)} of 20 cells are done" in outcome.stopped
    assert "larger --sweep-budget" in outcome.stopped


def test_sweep_budget_needs_cells_it_can_bound(tmp_path: Path) -> None:
    data = write_math_jsonl(tmp_path / "m.jsonl", 2)
    with pytest.raises(UserError, match="limits calls but the cell budget"):
        run_sweep(SweepSpec(dataset=str(data), model=coin_model(0.5), strategies="single", budgets="tokens=300",
                            sweep_budget="calls=10", out=tmp_path / "o"))


def test_parse_budgets_forms() -> None:
    assert parse_budgets("tokens=2k,8k,32k") == ["tokens=2000", "tokens=8000", "tokens=32000"]
    assert parse_budgets("2k,8k") == ["tokens=2000", "tokens=8000"]
    assert parse_budgets("usd=0.001,0.01") == ["usd=0.001", "usd=0.01"]
    assert parse_budgets("tokens=8k+seconds=60,usd=0.5") == ["tokens=8000,seconds=60", "usd=0.5"]
    for bad in ("lots", "tokens=0", ","):
        with pytest.raises(UserError):
            parse_budgets(bad)


def test_a_cell_that_spends_then_raises_is_charged_to_the_sweep(tmp_path: Path) -> None:
    # Every other call crashes (not a retryable API error), so each cell pays for
    # one sample and then raises: its spend must stay on the sweep ledger.
    from testtime.models.base import GenerationRequest
    from testtime.models.scripted import FunctionModel

    billed: list[int] = []

    def reply(req: GenerationRequest):
        if len(model.requests) % 2 == 0:
            raise RuntimeError("backend crashed mid-cell")
        gen = model._finish(req, coin_reply(req, 1.0))
        billed.append(gen.usage.tokens)
        return gen

    model = FunctionModel(reply, name="flaky")
    data = write_math_jsonl(tmp_path / "m.jsonl", 20)
    outcome = run_sweep(SweepSpec(dataset=str(data), model=model, strategies="best_of_n", budgets="tokens=500",
                                  options={"best_of_n": {"batch": 1}}, sweep_budget="tokens=1000",
                                  out=tmp_path / "o", concurrency=1))
    assert outcome.ran == 0  # no cell finished, so none was stored
    assert outcome.errors and all("backend crashed" in e for e in outcome.errors)
    assert billed and outcome.sweep["spent"]["tokens"] == sum(billed)
    assert 0 < outcome.sweep["spent"]["tokens"] <= 1000
    # Released holds would keep the gate open for all 20 cells; charged ones close it.
    assert len(outcome.errors) < 20 and outcome.stopped
