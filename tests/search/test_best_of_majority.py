"""best_of_majority: frequency filter, then reward; budget safety."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testtime.budget import Budget, BudgetLedger
from testtime.context import RunContext
from testtime.errors import UserError
from testtime.models.scripted import ScriptedModel
from testtime.search.base import Problem
from testtime.search.best_of_majority import BestOfMajority
from testtime.sim.suites import get_suite
from testtime.verifiers.scripted import ScriptedPRM

PROBLEM = Problem(question="Which number?", answer="7", id="p")
# 8 samples: answer 3 x4 (most frequent), 7 x3, 9 x1 (rare but loved by the PRM).
REPLIES = ["so The answer is 3.", "ok The answer is 7.", "so The answer is 3.", "wow The answer is 9.",
           "ok The answer is 7.", "so The answer is 3.", "ok The answer is 7.", "so The answer is 3."]


def _ctx(prm: ScriptedPRM | None, tokens: int = 100_000) -> RunContext:
    return RunContext(model=ScriptedModel(REPLIES), ledger=BudgetLedger(Budget(tokens=tokens)),
                      rng=random.Random(0), seed=0, max_tokens=32, prm=prm)


def _prm() -> ScriptedPRM:
    return ScriptedPRM({"answer is 9": 0.99, "answer is 7": 0.8, "answer is 3": 0.2}, default=0.5)


async def test_rare_high_reward_answer_is_filtered_out() -> None:
    prm = _prm()
    result = await BestOfMajority(n=8, threshold=0.3).search(PROBLEM, _ctx(prm))
    # Best-of-N would return 9 (highest reward), majority 3; BoM returns 7.
    assert result.answer == "7"
    assert result.stats["eligible"] == ["3", "7"]
    assert result.stats["counts"] == {"3": 4, "7": 3, "9": 1}
    # Only samples of eligible answers were scored.
    assert result.stats["n_scored"] == 7 and prm.calls == 7
    assert result.candidates[0].answer == "7" and result.candidates[0].score == 0.8


async def test_top_k_orders_candidates_by_reward() -> None:
    result = await BestOfMajority(n=8, threshold=0.1, k=3).search(PROBLEM, _ctx(_prm()))
    assert result.stats["top_k"] == ["9", "7", "3"]
    assert [c.answer for c in result.candidates[:3]] == ["9", "7", "3"]
    assert len(result.candidates) == 8


async def test_without_scorer_ranks_by_frequency() -> None:
    result = await BestOfMajority(n=8, k=2).search(PROBLEM, _ctx(None))
    assert result.answer == "3" and result.stats["top_k"] == ["3", "7"]


async def test_budget_derived_n_stays_within_budget() -> None:
    ctx = _ctx(_prm(), tokens=600)
    result = await BestOfMajority().search(PROBLEM, ctx)
    assert result.stats["n_sampled"] >= 3
    assert ctx.ledger.spent("tokens") <= 600 and ctx.ledger.open_reservations() == 0


def test_bad_parameters_are_user_errors() -> None:
    with pytest.raises(UserError):
        BestOfMajority(threshold=0)
    with pytest.raises(UserError):
        BestOfMajority(k=0)


@settings(max_examples=25, deadline=None)
@given(tokens=st.integers(min_value=1, max_value=20_000), seed=st.integers(0, 50))
def test_budget_is_never_exceeded(tokens: int, seed: int) -> None:
    s = get_suite("calibrated")
    problem = s.problems(1, seed=seed)[0]
    ctx = s.context(Budget(tokens=tokens), seed=seed)
    asyncio.run(BestOfMajority().search(problem, ctx))
    assert ctx.ledger.spent("tokens") <= tokens
    assert ctx.ledger.open_reservations() == 0
