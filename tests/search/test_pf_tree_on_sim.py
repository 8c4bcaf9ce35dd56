"""MCTS, A*, PF and entropic PF run on the simulator (sim policy + sim PRMs)."""

from __future__ import annotations

import pytest

pytest.importorskip("testtime.sim.suites")

from testtime.budget import Budget  # noqa: E402
from testtime.search.registry import make_strategy  # noqa: E402
from testtime.sim.suites import get_suite  # noqa: E402
from testtime.verifiers.answer import normalize_answer  # noqa: E402

MINE = ("mcts", "astar", "particle_filter", "entropic_pf")


@pytest.mark.parametrize("suite_name", ["calibrated", "overconfident", "verifier"])
@pytest.mark.parametrize("name", MINE)
async def test_runs_on_sim_within_budget(name: str, suite_name: str) -> None:
    suite = get_suite(suite_name)
    budget = Budget.parse("tokens=6k")
    correct = 0
    problems = suite.problems(4, seed=3)
    for i, problem in enumerate(problems):
        ctx = suite.context(budget, seed=i)
        result = await make_strategy(name).search(problem, ctx)
        assert result.answer is not None, (name, result.stopped_reason, result.text[-200:])
        assert ctx.ledger.spent("tokens") <= 6000
        assert ctx.ledger.open_reservations() == 0
        assert result.tree.number_of_nodes() > 1
        assert result.stats["prm_calls"] >= 1
        correct += normalize_answer(result.answer) == normalize_answer(problem.answer)
    # Not an accuracy benchmark (see `testtime bench`), but the PRM must lead somewhere.
    assert correct >= 1
