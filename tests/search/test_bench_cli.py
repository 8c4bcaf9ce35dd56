"""`testtime bench --sim` end to end on a tiny configuration."""

from __future__ import annotations

import json

import pytest

from testtime.cli import main
from testtime.search import registry
from testtime.sim.bench import parse_budgets, run_bench


def test_bench_json_rows(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "--sim", "--suite", "overconfident", "--strategies", "single,best_of_n,beam",
                 "--budgets", "1k,4k", "--problems", "3", "--seed", "2", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    rows = out["rows"]
    assert [(r["strategy"], r["budget"]) for r in rows] == [
        ("single", 1000), ("single", 4000), ("best_of_n", 1000), ("best_of_n", 4000),
        ("beam", 1000), ("beam", 4000)]
    for r in rows:
        assert {"strategy", "budget", "accuracy", "mean_tokens", "max_spend_ratio", "prm"} <= set(r)
        assert 0 <= r["accuracy"] <= 1
        assert 0 < r["max_spend_ratio"] <= 1
        assert r["mean_tokens"] <= r["budget"]
    assert rows[0]["prm"] is None  # single never calls the PRM
    assert rows[-1]["prm"] == "sim:overconfident"


def test_bench_table_and_deterministic(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "--sim", "--strategies", "self_consistency", "--budgets", "2k", "--problems", "4"]
    assert main(args) == 0
    assert "self_consistency" in capsys.readouterr().out
    assert main([*args, "--json"]) == 0
    first = json.loads(capsys.readouterr().out)["rows"]
    assert main([*args, "--json"]) == 0
    second = json.loads(capsys.readouterr().out)["rows"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(first) == strip(second)


@pytest.mark.parametrize("argv", [
    ["bench"],
    ["bench", "--sim", "--strategies", "telepathy"],
    ["bench", "--sim", "--budgets", "lots"],
    ["bench", "--sim", "--suite", "nope"],
    ["bench", "--sim", "--problems", "0"],
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
