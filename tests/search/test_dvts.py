"""dvts: independent PRM-guided subtrees; final pick; budget safety."""

from __future__ import annotations

import asyncio
import importlib.util
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testtime.budget import Budget, BudgetLedger
from testtime.context import RunContext
from testtime.errors import UserError
from testtime.search.base import Problem
from testtime.search.dvts import DVTS
from testtime.sim.suites import get_suite
from testtime.verifiers.scripted import ScriptedPRM

_spec = importlib.util.spec_from_file_location("beam_helpers", Path(__file__).with_name("test_beam.py"))
_beam = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_beam)

PROBLEM = Problem(question="What is 3 + 4?", answer="7", id="p")


def _ctx(tokens: int = 100_000) -> RunContext:
    return RunContext(model=_beam.stepper(), ledger=BudgetLedger(Budget(tokens=tokens)),
                      rng=random.Random(0), seed=0, prm=ScriptedPRM({"good": 0.9, "bad": 0.1}, default=0.5),
                      max_tokens=64, step_max_tokens=16)


@pytest.mark.parametrize("select", ["weighted", "prm"])
async def test_subtrees_follow_the_prm(select: str) -> None:
    ctx = _ctx()
    result = await DVTS(subtrees=3, expansions=4, select=select).search(PROBLEM, ctx)
    assert result.answer == "7"
    assert result.stats["subtrees"] == 3
    tags = {d.get("subtree") for _, d in result.tree.nodes(data=True) if d.get("parent") is not None}
    assert tags == {0, 1, 2}
    # Each subtree is an independent beam rooted at the empty solution.
    assert len(list(result.tree.successors(0))) == 3 * 4
    assert len(result.candidates) >= 3


async def test_each_subtree_gets_its_own_share() -> None:
    ctx = _ctx(tokens=900)
    await DVTS(subtrees=3, expansions=4).search(PROBLEM, ctx)
    kids = ctx.ledger.children
    assert len(kids) == 3
    assert all(k.budget.tokens == 300 for k in kids)
    assert all(k.spent("tokens") <= 300 for k in kids)
    assert ctx.ledger.spent("tokens") <= 900


async def test_needs_a_prm() -> None:
    ctx = _ctx()
    ctx.prm = None
    with pytest.raises(UserError):
        await DVTS().search(PROBLEM, ctx)


@settings(max_examples=20, deadline=None)
@given(tokens=st.integers(min_value=1, max_value=20_000), seed=st.integers(0, 50),
       subtrees=st.sampled_from([None, 1, 4]))
def test_budget_is_never_exceeded(tokens: int, seed: int, subtrees: int | None) -> None:
    s = get_suite("overconfident")
    problem = s.problems(1, seed=seed)[0]
    ctx = s.context(Budget(tokens=tokens), seed=seed)
    result = asyncio.run(DVTS(subtrees=subtrees).search(problem, ctx))
    assert ctx.ledger.spent("tokens") <= tokens
    assert ctx.ledger.open_reservations() == 0
    assert result.stopped_reason in {"done", "budget_exhausted"}
