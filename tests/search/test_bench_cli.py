"""`testtime bench --sim` (the alias of `--dataset sim:SUITE`) end to end on a tiny configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testtime.cli import main
from testtime.search import registry
from testtime.sim.bench import parse_budgets, run_bench
from testtime.sim.suites import get_suite
from testtime.verifiers.answer import normalize_answer


def test_bench_json_rows(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["bench", "--sim", "--suite", "overconfident", "--strategies", "single,best_of_n,beam",
                 "--budgets", "1k,4k", "--problems", "3", "--seed", "2", "--out", str(tmp_path), "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    rows = out["rows"]
    assert [(r["strategy"], r["budget"]) for r in rows] == [
        ("single", "tokens=1000"), ("single", "tokens=4000"), ("best_of_n", "tokens=1000"),
        ("best_of_n", "tokens=4000"), ("beam", "tokens=1000"), ("beam", "tokens=4000")]
    # Accuracy is what the stored answers say, checked against the suite's references.
    refs = {p.id: p.answer for p in get_suite("overconfident").problems(3)}
    stored = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    for r in rows:
        mine = [s for s in stored if s["strategy"] == r["strategy"] and s["budget"] == r["budget"]]
        assert [s["seed"] for s in mine] == [2, 2, 2]
        right = sum(normalize_answer(s["answer"]) == normalize_answer(refs[s["problem_id"]]) for s in mine)
        assert r["accuracy"] == round(right / 3, 4) and r["correct"] == right
        assert 0 < r["max_spend_ratio"] <= 1
        assert r["mean_tokens"] <= int(r["budget"].split("=")[1])
    assert rows[0]["verify_tokens"] == 0  # single never calls the PRM
    assert rows[-1]["verify_tokens"] > 0  # beam scores its steps with the suite's PRM


def test_bench_table_and_deterministic(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "--sim", "--strategies", "self_consistency", "--budgets", "2k", "--problems", "4"]
    assert main(args) == 0
    assert "self_consistency" in capsys.readouterr().out
    assert main([*args, "--json"]) == 0
    first = json.loads(capsys.readouterr().out)["rows"]
    assert main([*args, "--json"]) == 0
    second = json.loads(capsys.readouterr().out)["rows"]
    strip = lambda rows: [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]  # noqa: E731
    assert strip(first) == strip(second)


@pytest.mark.parametrize("argv", [
    ["bench"],
    ["bench", "--sim", "--strategies", "telepathy"],
    ["bench", "--sim", "--budgets", "lots"],
    ["bench", "--sim", "--suite", "nope"],
    ["bench", "--sim", "--problems", "0"],
    ["bench", "--sim", "--dataset", "sim:hard"],
])
def test_bench_bad_input_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "error" in capsys.readouterr().err


async def test_missing_strategy_module_is_skipped_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.STRATEGIES, "ghost", "testtime.search.ghost_not_here:Ghost")
    report = await run_bench(strategies="ghost,single", budgets="1k", problems=2)
    assert [r.strategy for r in report.rows] == ["single"]
    assert any("ghost" in n and "not in this install" in n for n in report.notes)


def test_parse_budgets() -> None:
    assert parse_budgets("2k, 8k,32000") == [2000, 8000, 32000]
