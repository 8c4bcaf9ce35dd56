"""``testtime tune``: fitting auto's policy table from a results store."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from testtime.cli import main
from testtime.errors import UserError
from testtime.search.tune import bin_of, choose, fit_table, load_table, probe_feature, probe_stats


def _row(pid: str, strategy: str, budget: int, correct: bool, tokens: float, *, seed: int = 0,
         samples: list[dict] | None = None) -> dict:
    return {"v": 1, "config_hash": "x", "dataset": "toy", "problem_id": pid, "strategy": strategy,
            "budget": f"tokens={budget}", "seed": seed, "answer": "1" if correct else "0", "correct": correct,
            "stopped_reason": "done", "usage": {"tokens": tokens}, "seconds": 0.1, "trace_id": None,
            "samples": samples or [], "difficulty": None}


def _synthetic() -> list[dict]:
    """40 problems: 20 'easy' (probe samples agree on the right answer), 20
    'hard' (they disagree). At 8k, beam solves every hard one and half of the
    easy ones; best_of_n solves every easy one and no hard one; at 2k,
    best_of_n is best everywhere."""
    rows = []
    for i in range(40):
        easy = i < 20
        pid = f"p{i}"
        answers = ["1", "1", "1", "1", "1", "1"] if easy else ["2", "3", "4", "1", "5", "6"]
        samples = [{"answer": a, "correct": a == "1", "score": None} for a in answers]
        rows.append(_row(pid, "best_of_n", 2000, easy, 2000 * 0.98, samples=samples))
        rows.append(_row(pid, "best_of_n", 8000, easy, 8000 * 0.98, samples=samples * 4))  # 24 samples
        rows.append(_row(pid, "beam", 8000, (not easy) or i % 2 == 0, 5000))
        rows.append(_row(pid, "beam", 2000, False, 1500))
        rows.append(_row(pid, "mcts", 8000, easy, 3000))  # ties best_of_n on easy, cheaper
        rows.append(_row(pid, "mcts", 2000, False, 1500))
    return rows


def test_tune_recovers_the_known_best_strategy_per_bin_and_budget() -> None:
    table = fit_table(_synthetic(), probe_n=4, bins=2)
    assert table["probe"]["feature"] == "agreement"  # the samples carry no scores
    assert bin_of(table, 1.0) == "easy" and bin_of(table, 0.25) == "hard"
    hard, easy = table["policy"]["hard"], table["policy"]["easy"]
    # beam runs after the probe (4 of the 24 samples of the 8k best_of_n row,
    # the largest-budget sampler: 1,307 tokens), so it is judged at
    # 8000 - 1307 tokens, interpolated on log budget between its 2k (0.0)
    # and 8k (1.0) accuracy, and charged the probe.
    probe_cost = 8000 * 0.98 * 4 / 24
    assert hard["8000"]["strategy"] == "beam"
    w = math.log((8000 - probe_cost) / 2000) / math.log(4)
    assert hard["8000"]["accuracy"] == pytest.approx(w, abs=1e-3)
    assert hard["8000"]["tokens"] == pytest.approx(w * 5000 + (1 - w) * 1500 + probe_cost, abs=0.1)
    # On easy problems the probe alone and best_of_n (which pools the probes)
    # are perfect at 8k; the tie goes to the fewest tokens: the probe.
    assert easy["8000"]["strategy"] == "probe"
    assert [r["label"] for r in easy["8000"]["ranking"][:3]] == ["probe", "best_of_n", "mcts"]
    assert hard["2000"]["strategy"] == "best_of_n" or hard["2000"]["accuracy"] == 0.0
    # Unbinned, nothing beats 0.75 at 8k (beam), so binning pays from 8k on only.
    assert table["all"]["8000"]["strategy"] == "beam" and table["all"]["8000"]["accuracy"] == 0.75
    assert table["in_sample_accuracy"]["8000"] == pytest.approx((hard["8000"]["accuracy"] + 1.0) / 2, abs=1e-3)
    assert table["probe"]["use"] == {"2000": False, "8000": True}
    assert choose(table, "hard", 7000)["strategy"] == "beam"
    assert choose(table, None, 2500)["strategy"] == "best_of_n"


def test_tune_tie_tolerance_prefers_cheaper_strategies() -> None:
    rows = []
    for i in range(20):
        wrong = [{"answer": str(k), "correct": False, "score": None} for k in range(2, 8)]
        rows.append(_row(f"p{i}", "best_of_n", 4000, False, 3900, samples=wrong))  # probes: always wrong
        rows.append(_row(f"p{i}", "beam", 4000, True, 3000))                      # 20/20, dearer
        rows.append(_row(f"p{i}", "astar", 4000, i != 0, 800))                     # 19/20, cheap
    assert fit_table(rows, bins=1)["all"]["4000"]["strategy"] == "beam"
    assert fit_table(rows, bins=1, tie=0.05)["all"]["4000"]["strategy"] == "astar"
    assert fit_table(rows, bins=1, tie=0.04)["all"]["4000"]["strategy"] == "beam"


def test_probe_features_match_what_auto_computes() -> None:
    stats = probe_stats(["7", "7", None, "8"], [0.9, 0.7, None, 0.2])
    assert stats["agreement"] == 0.5 and stats["mean_score"] == pytest.approx(0.6)
    assert probe_feature(stats, "agreement") == 0.5
    assert probe_feature(stats, "agreement+score") == pytest.approx(0.55)
    assert probe_feature(probe_stats(["1"], [None]), "agreement+score") == 1.0


def test_tune_never_chooses_auto_itself() -> None:
    rows = _synthetic() + [_row(f"p{i}", 'auto(table="t.json")', b, True, 10)
                           for i in range(40) for b in (2000, 8000)]
    table = fit_table(rows, bins=2)
    labels = {e["label"] for b in table["policy"].values() for e in b.values()}
    assert not any(lab.startswith("auto") for lab in labels | {e["label"] for e in table["all"].values()})


def test_tune_refuses_stores_it_cannot_fit() -> None:
    with pytest.raises(UserError, match="sampling strategy"):
        fit_table([_row("p", "beam", 2000, True, 10)])
    mixed = _synthetic() + [dict(_row("q", "beam", 2000, True, 10), dataset="other")]
    with pytest.raises(UserError, match="several datasets"):
        fit_table(mixed)
    assert fit_table(mixed, dataset="toy", bins=2)["fitted_on"]["datasets"] == ["toy"]


def test_tune_cli_writes_a_table_auto_can_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "run"
    store.mkdir()
    lines = [json.dumps(r) for r in _synthetic()]
    (store / "results.jsonl").write_text("\n".join(lines) + "\n" + lines[0][:30])  # a torn last line
    out = tmp_path / "table.json"
    assert main(["tune", str(store), "--bins", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| 8,000 |" in text and "beam" in text
    assert load_table(out)["policy"]["hard"]["8000"]["strategy"] == "beam"
    assert main(["tune", str(tmp_path / "missing.jsonl")]) == 2
    assert "cannot read results store" in capsys.readouterr().err


def test_a_bin_keeps_the_best_single_strategy_unless_another_is_clearly_better() -> None:
    rows = []
    for i in range(40):
        easy = i < 20
        answers = ["1"] * 6 if easy else ["2", "3", "4", "5", "6", "7"]
        samples = [{"answer": a, "correct": False, "score": None} for a in answers]  # probes: always wrong
        for budget in (4000, 16000):
            rows.append(_row(f"p{i}", "best_of_n", budget, False, budget - 100, samples=samples))
            rows.append(_row(f"p{i}", "beam", budget, i % 2 == 0, 3000))  # 10/20 in each bin
            # mcts: 11/20 on easy ones (one problem more than beam: noise), 4/20 on hard ones.
            rows.append(_row(f"p{i}", "mcts", budget, (i % 2 == 0 or i == 1) if easy else i % 5 == 0, 3000))
    plain = fit_table(rows, bins=2, confidence=0.0)
    assert plain["all"]["16000"]["strategy"] == "beam"
    assert plain["policy"]["easy"]["16000"]["strategy"] == "mcts"  # argmax chases the one-problem edge
    held = fit_table(rows, bins=2)  # default confidence 1: 0.05 is well under one standard error
    assert held["policy"]["easy"]["16000"]["strategy"] == "beam"
    assert held["policy"]["hard"]["16000"]["strategy"] == "beam"
    assert held["probe"]["use"]["16000"] is False  # nothing gained by probing: auto just runs beam
