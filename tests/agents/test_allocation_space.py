"""The allocation space: costs, validity, repair, and the budget invariant."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testtime.agents.allocation import Allocation, AllocationSpace, ModelOption, Stage, StageChoice
from testtime.budget import Budget
from testtime.errors import UserError
from testtime.sim.multistage import sim_task


def _space(tokens: int = 1000) -> AllocationSpace:
    stages = [Stage(name="a", options=(ModelOption(name="s", tokens_per_sample=10, usd_per_sample=0.001),
                                       ModelOption(name="l", tokens_per_sample=100, usd_per_sample=0.01))),
              Stage(name="b", options=(ModelOption(name="s", tokens_per_sample=20),
                                       ModelOption(name="l", tokens_per_sample=200)))]
    return AllocationSpace(stages, Budget(tokens=tokens), (1, 2, 4, 8))


def test_cost_and_fit():
    sp = _space(1000)
    alloc = Allocation.of([("l", 4), ("l", 2)])
    assert sp.cost(alloc) == {"tokens": 800.0, "usd": pytest.approx(0.04)}
    assert sp.fits(alloc) and sp.is_valid(alloc)
    assert not sp.fits(Allocation.of([("l", 8), ("l", 2)]))
    assert not sp.is_valid(Allocation.of([("x", 1), ("s", 1)]))
    assert not sp.is_valid(Allocation.of([("s", 3), ("s", 1)]))  # 3 is not on the ladder


def test_bad_budgets_are_user_errors():
    with pytest.raises(UserError, match="drop calls"):
        _space_with(Budget(calls=3))
    with pytest.raises(UserError, match="tokens or usd"):
        _space_with(Budget(seconds=3))
    with pytest.raises(UserError, match="too small"):
        _space(10)


def _space_with(budget: Budget) -> AllocationSpace:
    stages = [Stage(name="a", options=(ModelOption(name="s", tokens_per_sample=10),))]
    return AllocationSpace(stages, budget)


def test_enumerate_is_exactly_the_feasible_set():
    sp = _space(400)
    feasible = list(sp.enumerate())
    assert all(sp.fits(a) for a in feasible)
    assert len(feasible) == sum(1 for m1 in "sl" for k1 in (1, 2, 4, 8) for m2 in "sl" for k2 in (1, 2, 4, 8)
                                if sp.fits(Allocation.of([(m1, k1), (m2, k2)])))


@settings(max_examples=80, deadline=None)
@given(tokens=st.integers(min_value=30, max_value=3000),
       raw=st.lists(st.tuples(st.sampled_from(["s", "l", "nope"]), st.integers(min_value=-3, max_value=100)),
                    min_size=2, max_size=2))
def test_repair_always_fits_the_budget(tokens, raw):
    sp = _space(tokens)
    alloc = Allocation(choices=tuple(StageChoice(model=m, samples=k) for m, k in raw))
    fixed = sp.repair(alloc)
    assert sp.is_valid(fixed)
    assert sp.cost(fixed)["tokens"] <= tokens


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(min_value=0, max_value=10_000))
def test_random_and_neighbors_fit(seed):
    sp = sim_task("plan-solve-verify").space()
    rng = random.Random(seed)
    alloc = sp.random(rng)
    assert sp.is_valid(alloc)
    assert all(sp.is_valid(n) for n in sp.neighbors(alloc))
