"""Knapsack composition: ZCL threshold, DP optimum, composer vs baselines."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testtime.agents.components import Component, Inventory
from testtime.agents.knapsack import (
    OnlineKnapsackComposer,
    dp_optimum,
    greedy_baseline,
    pareto,
    retrieval_baseline,
    zcl_threshold,
)
from testtime.errors import UserError
from testtime.sim.inventory import make_inventory


def test_zcl_threshold_values():
    L, U = 0.5, 20.0
    assert zcl_threshold(0.0, L, U) == pytest.approx(L / math.e)
    assert zcl_threshold(1.0, L, U) == pytest.approx(U)
    beta = 1.0 / (1.0 + math.log(U / L))  # where the threshold crosses L
    assert zcl_threshold(beta, L, U) == pytest.approx(L)
    assert zcl_threshold(0.5, L, U) == pytest.approx(math.sqrt(U * math.e / L) * L / math.e)
    vals = [zcl_threshold(z / 10, L, U) for z in range(11)]
    assert vals == sorted(vals)
    with pytest.raises(UserError):
        zcl_threshold(0.5, 2.0, 1.0)
    with pytest.raises(UserError):
        zcl_threshold(1.5, L, U)


def _brute(inv: Inventory, values: dict[str, float], budget: float) -> float:
    best = 0.0
    comps = inv.components
    for r in range(len(comps) + 1):
        for subset in itertools.combinations(comps, r):
            names = {c.name for c in subset}
            if sum(c.cost for c in subset) > budget:
                continue
            if any(set(c.conflicts) & names for c in subset):
                continue
            if any(req not in names for c in subset for req in c.requires):
                continue
            best = max(best, sum(values[c.name] for c in subset))
    return best


@settings(max_examples=60, deadline=None)
@given(costs=st.lists(st.integers(min_value=1, max_value=9), min_size=3, max_size=8),
       vals=st.lists(st.floats(min_value=0, max_value=1), min_size=8, max_size=8),
       budget=st.integers(min_value=1, max_value=25), links=st.integers(min_value=0, max_value=3))
def test_dp_matches_brute_force(costs, vals, budget, links):
    n = len(costs)
    conflicts: dict[int, set[int]] = {i: set() for i in range(n)}
    requires: dict[int, set[int]] = {i: set() for i in range(n)}
    if links >= 1 and n >= 2:
        conflicts[0].add(1)
        conflicts[1].add(0)
    if links >= 2 and n >= 4:
        requires[2].add(3)
    if links >= 3 and n >= 5:
        requires[4].add(2)
        conflicts[4].add(0)
        conflicts[0].add(4)
    comps = tuple(Component(name=f"c{i}", kind="tool", description="", cost=float(costs[i]),
                            requires=tuple(f"c{j}" for j in sorted(requires[i])),
                            conflicts=tuple(f"c{j}" for j in sorted(conflicts[i]))) for i in range(n))
    inv = Inventory(components=comps)
    values = {f"c{i}": vals[i] for i in range(n)}
    got = dp_optimum(inv, values, float(budget))
    assert got.cost <= budget
    assert sum(values[c.name] for c in got.chosen) == pytest.approx(_brute(inv, values, budget))


async def _all(sim, budget):
    ev = sim.evaluator(seed=0)
    inv = sim.inventory
    out = [await OnlineKnapsackComposer().compose(inv, sim.task, budget, ev, seed=1),
           await retrieval_baseline(inv, sim.task, budget, ev),
           await greedy_baseline(inv, sim.task, budget, ev),
           dp_optimum(inv, sim.true_values(), budget)]
    return out


async def test_composer_beats_retrieval_when_descriptions_mislead():
    comp, retr = 0.0, 0.0
    for seed in range(100, 106):
        sim = make_inventory(seed=seed, misleading=True)
        res = await _all(sim, 0.3)
        comp += sim.true_success(res[0].chosen)
        retr += sim.true_success(res[1].chosen)
    assert comp > retr + 0.05 * 6


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(min_value=100, max_value=10_000), budget=st.floats(min_value=0.02, max_value=1.0),
       misleading=st.booleans())
async def test_no_method_exceeds_the_budget_or_breaks_constraints(seed, budget, misleading):
    sim = make_inventory(n=100, seed=seed, misleading=misleading)
    for comp in await _all(sim, budget):
        assert sum(c.cost for c in comp.chosen) <= budget + 1e-9
        names = {c.name for c in comp.chosen}
        assert len(names) == len(comp.chosen)
        for c in comp.chosen:
            assert not set(c.conflicts) & names
            assert set(c.requires) <= names


async def test_composer_log_follows_the_threshold_rule():
    sim = make_inventory(seed=101)
    comp = await OnlineKnapsackComposer(samples=10).compose(sim.inventory, sim.task, 0.3, sim.evaluator(), seed=0)
    L, U = OnlineKnapsackComposer(samples=10).bounds(sim.inventory)
    tested = [e for e in comp.log if "threshold" in e]
    assert tested and comp.tests == len(tested)
    for e in tested:
        assert e["threshold"] == pytest.approx(zcl_threshold(e["z"], L, U), rel=1e-4)
        assert e["admitted"] == (e["value"] > 0 and e["density"] >= e["threshold"])


def test_pareto_position():
    pts = {"composer": (0.2, 0.5), "retrieval": (0.3, 0.4), "dp": (0.3, 0.6), "greedy": (0.2, 0.5)}
    p = pareto(pts, "composer")
    assert p == {"dominates": ["retrieval"], "dominated_by": [], "on_frontier": True}
    assert pareto({"composer": (0.3, 0.4), "dp": (0.2, 0.5)}, "composer")["dominated_by"] == ["dp"]
