"""Simulated PRMs and verifier: calibration, overconfidence, cost, determinism."""

from __future__ import annotations

import random

import pytest

from testtime.budget import Budget, BudgetLedger
from testtime.context import RunContext
from testtime.errors import BudgetExhausted, UserError
from testtime.models.base import GenerationRequest
from testtime.search.base import split_steps
from testtime.sim import prm as sim_prm
from testtime.sim import verifier as sim_verifier
from testtime.sim.policy import SimModel
from testtime.sim.prm import step_correctness
from testtime.sim.suites import SUITES, get_suite
from testtime.sim.tasks import generate_tasks


async def _solutions(n_tasks: int = 30, per_task: int = 8, seed: int = 0):
    """(problem, steps, correctness) for sampled simulator solutions."""
    model = SimModel("default")
    out = []
    for task in generate_tasks(n_tasks, seed=seed, difficulty=(0.4, 0.7), steps=(4, 6)):
        gens = await model.generate(GenerationRequest(prompt=task.question, n=per_task, seed=1,
                                                      max_tokens=2000))
        for g in gens:
            steps = split_steps(g.text)
            out.append((task.problem(), steps, step_correctness(task, steps)))
    return out


def _ctx(tokens: int = 10_000_000) -> RunContext:
    return RunContext(model=SimModel("default"), ledger=BudgetLedger(Budget(tokens=tokens)),
                      rng=random.Random(0), seed=0)


async def _scores(prm: sim_prm.SimPRM, data) -> list[tuple[int, bool, float]]:
    ctx = _ctx()
    rows = []
    for problem, steps, ok in data:
        for i, s in enumerate(await prm.score_steps(problem, steps, ctx)):
            rows.append((i, ok[i], s))
    return rows


async def test_calibrated_prm_is_calibrated_and_informative() -> None:
    rows = await _scores(sim_prm.load("calibrated"), await _solutions())
    good = [s for _, ok, s in rows if ok]
    bad = [s for _, ok, s in rows if not ok]
    assert sum(good) / len(good) > 0.8 > 0.2 > sum(bad) / len(bad)
    # Calibration: among confident-looking scores, the frequency of correct
    # steps matches the mean score (within sampling error).
    hi = [(ok, s) for _, ok, s in rows if 0.6 <= s <= 0.95]
    assert len(hi) > 50
    assert sum(ok for ok, _ in hi) / len(hi) == pytest.approx(sum(s for _, s in hi) / len(hi), abs=0.12)


async def test_noisy_prm_separates_less_than_calibrated() -> None:
    data = await _solutions()

    def gap(rows: list[tuple[int, bool, float]]) -> float:
        good = [s for _, ok, s in rows if ok]
        bad = [s for _, ok, s in rows if not ok]
        return sum(good) / len(good) - sum(bad) / len(bad)

    assert gap(await _scores(sim_prm.load("noisy"), data)) < gap(await _scores(sim_prm.load("calibrated"), data)) - 0.15


async def test_overconfident_prm_pushes_early_steps_to_the_extremes() -> None:
    data = await _solutions()
    over = await _scores(sim_prm.load("overconfident"), data)
    cal = await _scores(sim_prm.load("calibrated"), data)

    def extreme(rows: list[tuple[int, bool, float]], early: bool) -> float:
        sel = [s for i, _, s in rows if (i < 2) == early]
        return sum(s < 0.001 or s > 0.999 for s in sel) / len(sel)

    assert extreme(over, early=True) > 3 * extreme(cal, early=True) > 0
    # ...and it is wrong with high confidence more often early on.
    def confident_wrong(rows: list[tuple[int, bool, float]]) -> int:
        return sum(1 for i, ok, s in rows if i < 2 and ((s > 0.99 and not ok) or (s < 0.01 and ok)))

    assert confident_wrong(over) > confident_wrong(cal)
    # Later steps behave like the calibrated PRM.
    assert extreme(over, early=False) == pytest.approx(extreme(cal, early=False), abs=0.05)


async def test_overconfident_strong_prm_is_confidently_wrong_early_only() -> None:
    data = await _solutions()
    strong = await _scores(sim_prm.load("overconfident_strong"), data)
    mild = await _scores(sim_prm.load("overconfident"), data)
    cal = await _scores(sim_prm.load("calibrated"), data)

    def confident_wrong_rate(rows: list[tuple[int, bool, float]], early: bool) -> float:
        sel = [(ok, s) for i, ok, s in rows if (i < 2) == early]
        return sum((s > 0.9 and not ok) or (s < 0.1 and ok) for ok, s in sel) / len(sel)

    # Early on, roughly 3 in 10 scores are confidently wrong: far more than
    # the mild variant and the calibrated PRM...
    early = confident_wrong_rate(strong, early=True)
    assert 0.18 < early < 0.4
    assert early > 1.5 * confident_wrong_rate(mild, early=True) > confident_wrong_rate(cal, early=True)
    # ...while later steps are scored exactly like the calibrated PRM.
    assert [s for i, _, s in strong if i >= 2] == [s for i, _, s in cal if i >= 2]


async def test_prm_scores_are_deterministic_and_cost_verify_budget() -> None:
    (problem, steps, _), *_ = await _solutions(1, 1)
    prm = sim_prm.load("calibrated")
    ctx = _ctx()
    a = await prm.score_steps(problem, steps, ctx)
    b = await sim_prm.load("calibrated").score_steps(problem, steps, ctx)
    assert a == b and len(a) == len(steps)
    assert a != await sim_prm.load("calibrated", seed=1).score_steps(problem, steps, ctx)
    by_role = ctx.ledger.usage_by_role()
    assert set(by_role) == {"verify"} and by_role["verify"].calls == 3
    assert 0 < by_role["verify"].input_tokens < 3 * sum(len(s.split()) for s in steps)
    with pytest.raises(BudgetExhausted):
        await prm.score_steps(problem, steps, _ctx(tokens=5))


async def test_verifier_error_rates() -> None:
    data = await _solutions(40, 10)
    ver = sim_verifier.load("noisy")
    ctx = _ctx()
    fp = fn = pos = neg = 0
    for problem, steps, ok in data:
        verdict = await ver.verify(problem, "\n\n".join(steps), ctx)
        assert (verdict.score >= 0.6) == verdict.passed
        if ok[-1]:
            pos += 1
            fn += not verdict.passed
        else:
            neg += 1
            fp += verdict.passed
    assert pos > 50 and neg > 50
    assert fp / neg == pytest.approx(0.2, abs=0.08)
    assert fn / pos == pytest.approx(0.2, abs=0.08)
    assert ctx.ledger.usage_by_role()["verify"].calls == len(data)


def test_loaders_and_suites_validate() -> None:
    assert sim_prm.load("").variant == "calibrated"
    assert sim_prm.load("overconfident", ctx=None, aggregation="last").aggregation == "last"
    assert sim_verifier.load("", ctx=None).config.fpr == 0.05
    with pytest.raises(UserError, match="unknown simulated PRM"):
        sim_prm.load("psychic")
    with pytest.raises(UserError, match="unknown option"):
        sim_prm.load("calibrated", wobble=1)
    with pytest.raises(UserError, match="unknown simulated verifier"):
        sim_verifier.load("oracle")
    with pytest.raises(UserError, match="unknown sim suite"):
        get_suite("impossible")
    assert {"calibrated", "overconfident", "noisy", "hard"} <= set(SUITES)
    suite = get_suite("hard")
    assert suite.problems(4, seed=1) == suite.problems(4, seed=1)
    assert all(p.meta["difficulty"] >= 0.55 for p in suite.problems(20, seed=1))
    assert get_suite("overconfident").make_prm().variant == "overconfident"
    strong = get_suite("overconfident_strong")
    assert strong.make_prm().variant == "overconfident_strong"
    assert strong.problems(5, seed=2) == get_suite("overconfident").problems(5, seed=2)
    assert get_suite("verifier").make_verifier() is not None
