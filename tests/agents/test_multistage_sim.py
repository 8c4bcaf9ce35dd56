"""The simulated multi-stage tasks encode the AgentTTS regularities."""

from __future__ import annotations

import itertools

from testtime.agents.allocation import Allocation
from testtime.sim.multistage import suite


def test_optimum_is_the_brute_force_maximum():
    task = suite()[0]
    space = task.space()
    opt, acc = task.optimum()
    brute = max(task.accuracy(a) for a in space.enumerate())
    assert acc == brute
    assert space.fits(opt)


def test_stages_prefer_different_models_across_the_suite():
    prefs = set()
    for task in suite():
        opt, _ = task.optimum()
        prefs |= {c.model for c in opt.choices}
    assert len(prefs) >= 2


def test_returns_saturate_then_fall():
    task = suite()[1]
    st = task.stages[0]
    model = next(iter(st.curves))
    ks = [1, 2, 4, 8, 16, 64]
    values = [task.stage_success(0, model, k) for k in ks]
    assert values[1] > values[0]
    assert values[-1] < max(values)  # past the saturation point more samples hurt


def test_stages_interact():
    task = suite()[1]
    space = task.space()
    base = space.cheapest()
    better_first = base.with_choice(0, type(base.choices[0])(model=base.choices[0].model, samples=4))
    # The downstream stage's success depends on the upstream stage's quality.
    p_down_base = task.stage_success(1, base.choices[1].model, 1, task.stage_success(0, base.choices[0].model, 1))
    p_down_better = task.stage_success(1, base.choices[1].model, 1, task.stage_success(0, better_first.choices[0].model, 4))
    assert p_down_better > p_down_base


async def test_evaluator_is_deterministic_and_noisy():
    task = suite()[0]
    alloc = next(iter(task.space().enumerate()))
    ev = task.evaluator(n_train=40, seed=3)
    a, b = await ev(alloc), await ev(alloc)
    assert a == b
    assert (await task.evaluator(n_train=None)(alloc)) == task.accuracy(alloc)
    accs = {await task.evaluator(n_train=40, seed=s)(alloc) for s in range(6)}
    assert len(accs) > 1


def test_allocation_keys_distinguish_choices():
    keys = {Allocation.of(c).key() for c in itertools.product([("a", 1), ("b", 2)], repeat=2)}
    assert len(keys) == 4
