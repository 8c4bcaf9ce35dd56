"""``--strategy auto``: probe, bin by difficulty, choose from the table, stay in budget."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testtime.budget import Budget, BudgetLedger
from testtime.context import RunContext
from testtime.errors import UserError
from testtime.models.scripted import ScriptedModel
from testtime.search.auto import Auto
from testtime.search.base import Problem
from testtime.search.registry import make_strategy
from testtime.search.tune import TABLE_KIND, load_table
from testtime.sim.suites import get_suite


def _entry(strategy: str, **options: object) -> dict:
    return {"strategy": strategy, "options": dict(options), "label": strategy, "accuracy": 1.0, "tokens": 1.0}


def _table(tmp_path: Path, hard: str, easy: str, *, probe_small: bool = True) -> str:
    table = {
        "v": 1, "kind": TABLE_KIND,
        "probe": {"n": 4, "feature": "agreement", "use": {"1000": probe_small, "4000": True}},
        "bins": [{"name": "hard", "upper": 0.5}, {"name": "easy", "upper": None}],
        "budgets": [1000, 4000],
        "policy": {"hard": {"1000": _entry(hard), "4000": _entry(hard)},
                   "easy": {"1000": _entry(easy), "4000": _entry(easy)}},
        "all": {"1000": _entry("single"), "4000": _entry("single")},
    }
    path = tmp_path / "table.json"
    path.write_text(json.dumps(table))
    return str(path)


# Scripted probe outcomes: every sample of the easy question agrees, the
# hard question's samples all disagree.
MODEL_REPLIES = {
    "EASY": ["Step 1: 3 + 4 = 7.\n\nThe answer is 7."],
    "HARD": ["The answer is 1.", "The answer is 2.", "The answer is 3.", "The answer is 4.", "The answer is 5."],
}


def _ctx(model: ScriptedModel, tokens: int) -> RunContext:
    return RunContext(model=model, ledger=BudgetLedger(Budget(tokens=tokens)), rng=random.Random(0), seed=0,
                      max_tokens=40)


async def test_auto_chooses_different_strategies_for_easy_and_hard_problems(tmp_path: Path) -> None:
    table = _table(tmp_path, hard="self_consistency", easy="probe")
    easy_model, hard_model = ScriptedModel(MODEL_REPLIES), ScriptedModel(MODEL_REPLIES)
    easy = await Auto(table=table).search(Problem(question="EASY: 3 + 4?", answer="7"), _ctx(easy_model, 4000))
    hard = await Auto(table=table).search(Problem(question="HARD: guess", answer="3"), _ctx(hard_model, 4000))
    assert easy.stats["auto"]["bin"] == "easy" and easy.stats["auto"]["strategy"] == "probe"
    assert hard.stats["auto"]["bin"] == "hard" and hard.stats["auto"]["strategy"] == "self_consistency"
    assert easy.stats["auto"]["agreement"] == 1.0 and hard.stats["auto"]["agreement"] == 0.25
    assert easy.answer == "7"
    # The easy one stopped after its probes; the hard one kept sampling, probes included.
    assert len(easy_model.requests) == 4 and len(easy.candidates) == 4
    assert len(hard_model.requests) > 4 and len(hard.candidates) == len(hard_model.requests)


async def test_auto_runs_the_chosen_tree_strategy_on_what_remains(tmp_path: Path) -> None:
    suite = get_suite("mixed")
    problem = suite.problems(1, seed=3)[0]
    table = _table(tmp_path, hard="beam", easy="beam")
    ctx = suite.context(Budget(tokens=6000), seed=1)
    result = await Auto(table=table).search(problem, ctx)
    info = result.stats["auto"]
    assert info["strategy"] == "beam" and info["probes"] == 4
    assert 0 < info["probe_tokens"] < ctx.ledger.spent("tokens") <= 6000
    # The beam's own tree is the result's; the probes stay listed as candidates.
    assert result.tree.number_of_nodes() > 5 and len(result.candidates) >= 4


async def test_auto_skips_the_probe_where_the_table_says_it_does_not_pay(tmp_path: Path) -> None:
    table = _table(tmp_path, hard="self_consistency", easy="probe", probe_small=False)
    model = ScriptedModel(MODEL_REPLIES)
    result = await Auto(table=table).search(Problem(question="EASY: 3 + 4?", answer="7"), _ctx(model, 1200))
    assert result.stats["auto"]["probed"] is False and result.stats["auto"]["strategy"] == "single"
    assert len(model.requests) == 1


def test_default_table_ships_with_the_package_and_is_used_by_default() -> None:
    table = load_table()
    assert table["kind"] == TABLE_KIND and len(table["bins"]) >= 2
    assert table["fitted_on"]["datasets"] == ["sim:mixed"]
    strategies = {e["strategy"] for b in table["policy"].values() for e in b.values()}
    assert len(strategies) >= 2  # the table does choose per difficulty
    assert make_strategy("auto").policy_table() == table
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert 'packages = ["testtime"]' in pyproject  # hatch ships every file under testtime/, JSON included


def test_a_missing_or_foreign_table_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="testtime tune"):
        Auto(table=str(tmp_path / "nope.json")).policy_table()
    (tmp_path / "x.json").write_text('{"rows": []}')
    with pytest.raises(UserError, match="not an auto policy table"):
        Auto(table=str(tmp_path / "x.json")).policy_table()
    with pytest.raises(UserError):
        Auto(probe_share=0)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tokens=st.integers(min_value=50, max_value=12_000), index=st.integers(0, 5), seed=st.integers(0, 99))
def test_auto_never_spends_more_than_its_budget(tokens: int, index: int, seed: int) -> None:
    suite = get_suite("mixed")
    problem = suite.problems(6, seed=7)[index]

    async def run() -> RunContext:
        ctx = suite.context(Budget(tokens=tokens), seed=seed)
        await Auto().search(problem, ctx)
        return ctx

    ctx = asyncio.run(run())
    assert ctx.ledger.spent("tokens") <= tokens
    assert not ctx.ledger.open_reservations()
    assert not ctx.ledger.overdrawn


async def test_without_a_prm_auto_falls_back_to_voting_instead_of_failing(tmp_path: Path) -> None:
    suite = get_suite("mixed")
    problem = suite.problems(1, seed=2)[0]
    ctx = RunContext(model=suite.make_policy(), ledger=BudgetLedger(Budget(tokens=4000)),
                     rng=random.Random(0), seed=0, max_tokens=600, step_max_tokens=80)
    table = _table(tmp_path, hard="particle_filter", easy="particle_filter")  # PF needs a PRM
    result = await Auto(table=table).search(problem, ctx)
    assert result.answer is not None and ctx.ledger.spent("tokens") <= 4000
    info = result.stats["auto"]
    assert info["mean_score"] is None  # nothing to score the probes with: agreement alone
    assert info["fallback"] == "particle_filter needs a PRM; self_consistency instead"
    assert len(result.candidates) > 4  # the probes plus the votes drawn after them
