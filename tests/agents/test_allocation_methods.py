"""Every allocation method on the simulator with fixed seeds."""

from __future__ import annotations

import pytest

from testtime.agents.allocation import make_allocator, search_allocation
from testtime.errors import UserError
from testtime.models.scripted import ScriptedModel
from testtime.sim.multistage import sim_task

METHODS = ["random", "grid", "greedy", "bayes", "agent"]


def _allocator(method: str):
    if method == "agent":
        # A proposer that never writes JSON: the agent runs on its fallback.
        return make_allocator("agent", model=ScriptedModel(["no idea"]))
    return make_allocator(method)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("task_name", ["plan-solve", "retrieve-answer"])
async def test_method_gets_near_the_optimum(method, task_name):
    task = sim_task(task_name)
    _, opt = task.optimum()
    for seed in (0, 1):
        result = await search_allocation(task.space(), task.evaluator(n_train=None), _allocator(method),
                                         trials=40, seed=seed)
        assert len(result.trials) == 40
        assert task.accuracy(result.best.allocation) >= 0.93 * opt


@pytest.mark.parametrize("method", METHODS)
async def test_no_trial_exceeds_the_budget_or_repeats(method):
    task = sim_task("code-test-repair")
    space = task.space()
    result = await search_allocation(space, task.evaluator(n_train=30, seed=2), _allocator(method),
                                     trials=25, seed=5)
    keys = [t.allocation.key() for t in result.trials]
    assert len(set(keys)) == len(keys)
    for t in result.trials:
        assert space.is_valid(t.allocation)
        assert t.cost["tokens"] <= task.budget.tokens


async def test_seeded_runs_repeat():
    task = sim_task("plan-solve-verify")
    runs = []
    for _ in range(2):
        r = await search_allocation(task.space(), task.evaluator(n_train=50), make_allocator("bayes"),
                                    trials=12, seed=7)
        runs.append([t.allocation.key() for t in r.trials])
    assert runs[0] == runs[1]


async def test_agent_beats_random_on_average_with_few_trials():
    # The fallback's regularity-guided search should not be worse than random search.
    total = {"agent": 0.0, "random": 0.0}
    for task_name in ("plan-solve", "plan-solve-verify", "code-test-repair"):
        task = sim_task(task_name)
        for seed in range(3):
            for m in total:
                r = await search_allocation(task.space(), task.evaluator(n_train=None), _allocator(m),
                                            trials=15, seed=seed)
                total[m] += task.accuracy(r.best.allocation)
    assert total["agent"] > total["random"]


def test_unknown_method_is_a_user_error():
    with pytest.raises(UserError, match="choose one of"):
        make_allocator("simulated-annealing")


async def test_trials_must_be_positive():
    task = sim_task("plan-solve")
    with pytest.raises(UserError):
        await search_allocation(task.space(), task.evaluator(), make_allocator("random"), trials=0)
