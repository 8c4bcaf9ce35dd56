"""best_of_n on scripted models/PRMs and under random budgets on the simulator."""

from __future__ import annotations

import asyncio
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from testtime.budget import Budget, BudgetLedger
from testtime.context import RunContext
from testtime.models.scripted import ScriptedModel
from testtime.search.base import Problem
from testtime.search.best_of_n import BestOfN
from testtime.sim.suites import get_suite
from testtime.verifiers.scripted import ScriptedPRM, ScriptedVerifier

GOOD = "good start\n\ngood middle\n\nThe answer is 7."
BAD = "bad start\n\nbad middle\n\nThe answer is 3."
PROBLEM = Problem(question="What is 3 + 4?", answer="7", id="p")


def _ctx(tokens: int = 100_000, **kw: object) -> RunContext:
    model = ScriptedModel([BAD, BAD, GOOD, BAD])  # majority says 3
    return RunContext(model=model, ledger=BudgetLedger(Budget(tokens=tokens)), rng=random.Random(0),
                      seed=0, max_tokens=64, **kw)


async def test_prm_picks_the_good_solution_majority_would_miss() -> None:
    ctx = _ctx(prm=ScriptedPRM({"good": 0.9, "bad": 0.2}, default=0.5))
    result = await BestOfN(n=8).search(PROBLEM, ctx)
    assert result.answer == "7"
    assert result.stats["selection"] == "prm" and result.stats["n_sampled"] == 8
    assert result.candidates[0].score == 0.5  # min over steps (the answer step scores 0.5)
    assert result.tree.number_of_nodes() == 9


async def test_verifier_is_preferred_over_prm() -> None:
    ctx = _ctx(prm=ScriptedPRM({"bad": 0.99}, default=0.1), verifier=ScriptedVerifier(reference=True))
    result = await BestOfN(n=4).search(PROBLEM, ctx)
    assert result.answer == "7" and result.stats["selection"] == "verifier"


async def test_without_scorer_falls_back_to_majority() -> None:
    result = await BestOfN(n=8).search(PROBLEM, _ctx())
    assert result.answer == "3" and result.stats["selection"] == "majority"


async def test_derived_n_uses_the_budget_and_stays_within_it() -> None:
    ctx = _ctx(tokens=1500, prm=ScriptedPRM({"good": 0.9, "bad": 0.2}, default=0.5, tokens_per_step=5))
    result = await BestOfN().search(PROBLEM, ctx)
    assert result.stopped_reason == "budget_exhausted"
    assert result.stats["n_sampled"] >= 4
    assert result.stats["n_scored"] == result.stats["n_sampled"]
    assert ctx.ledger.spent("tokens") <= 1500
    assert ctx.ledger.usage_by_role()["verify"].tokens > 0
    assert result.answer == "7"


async def test_tiny_budget_returns_without_overspending() -> None:
    ctx = _ctx(tokens=30, prm=ScriptedPRM({}, default=0.5))
    result = await BestOfN().search(PROBLEM, ctx)
    assert result.stopped_reason == "budget_exhausted"
    assert ctx.ledger.spent("tokens") <= 30 and ctx.ledger.open_reservations() == 0


@settings(max_examples=25, deadline=None)
@given(tokens=st.integers(min_value=1, max_value=20_000), seed=st.integers(0, 50),
       suite=st.sampled_from(["calibrated", "verifier"]))
def test_budget_is_never_exceeded(tokens: int, seed: int, suite: str) -> None:
    s = get_suite(suite)
    problem = s.problems(1, seed=seed)[0]
    ctx = s.context(Budget(tokens=tokens), seed=seed)
    result = asyncio.run(BestOfN().search(problem, ctx))
    assert ctx.ledger.spent("tokens") <= tokens
    assert ctx.ledger.open_reservations() == 0
    assert result.stopped_reason in {"done", "budget_exhausted"}


