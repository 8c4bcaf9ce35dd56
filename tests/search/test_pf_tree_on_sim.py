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
    problems = suite.problems(4, seed=3)
    for i, problem in enumerate(problems):
        ctx = suite.context(budget, seed=i)
        result = await make_strategy(name).search(problem, ctx)
        assert result.answer is not None, (name, result.stopped_reason, result.text[-200:])
        assert ctx.ledger.spent("tokens") <= 6000
        assert ctx.ledger.open_reservations() == 0
        assert result.tree.number_of_nodes() > 1
        assert result.stats["prm_calls"] >= 1
        assert all(isinstance(d.get("score"), float) for n, d in result.tree.nodes(data=True) if n), name


class _InvertedPRM:
    """Wraps a sim PRM and reports 1 - score: a PRM that points the wrong way."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.aggregation = inner.aggregation

    async def score_steps(self, problem, steps, ctx):
        return [1.0 - s for s in await self.inner.score_steps(problem, steps, ctx)]

    async def score(self, problem, steps, ctx):
        from testtime.verifiers.base import aggregate

        return aggregate(await self.score_steps(problem, steps, ctx), self.aggregation)


@pytest.mark.parametrize("name", MINE)
async def test_the_prm_steers_the_search(name: str) -> None:
    # Not an accuracy benchmark (see `testtime bench`): the same search with
    # a near-oracle PRM must beat itself with that PRM inverted, on the same
    # hard problems and budget -- the PRM's scores decide what is kept.
    from testtime.sim.prm import PRMConfig, SimPRM

    oracle = PRMConfig(mu=3.0, sigma=0.3, early_sigma=0.3)
    suite = get_suite("hard")
    problems = suite.problems(10, seed=3)
    correct = {}
    for label in ("oracle", "inverted"):
        correct[label] = 0
        for i, problem in enumerate(problems):
            prm = SimPRM("oracle", oracle)
            ctx = suite.context(Budget.parse("tokens=6k"), seed=i,
                                prm_model=prm if label == "oracle" else _InvertedPRM(prm))
            result = await make_strategy(name).search(problem, ctx)
            correct[label] += normalize_answer(result.answer) == normalize_answer(problem.answer)
    assert correct["oracle"] >= correct["inverted"] + 2, correct
