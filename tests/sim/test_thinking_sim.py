"""The simulated thinking model and the thinking-split bench."""

from __future__ import annotations

import asyncio

import pytest

from testtime.budget import Budget, BudgetLedger
from testtime.context import RunContext
from testtime.errors import UserError
from testtime.models.base import GenerationRequest
from testtime.models.registry import load_model
from testtime.search.registry import make_strategy
from testtime.sim.policy import SimModel
from testtime.sim.tasks import generate_problems
from testtime.sim.thinking import (
    SimThinkingModel,
    ThinkingConfig,
    accuracy_at,
    markdown,
    run_split_bench,
)
from testtime.thinking import ThinkingModel, with_thinking


def test_accuracy_rises_with_thinking_and_saturates() -> None:
    cfg = ThinkingConfig()
    curve = [accuracy_at(cfg, 0.5, t) for t in (0, 50, 200, 800, 3200, 12800)]
    assert curve == sorted(curve) and curve[0] == pytest.approx(cfg.p0)
    assert curve[-1] - curve[-2] < 0.01 < curve[2] - curve[1]  # gains vanish: it saturates
    assert accuracy_at(cfg, 0.9, 5000) < accuracy_at(cfg, 0.2, 5000)  # harder tasks saturate lower


def test_sim_thinking_spec_loads_the_thinking_model_and_sim_still_loads_the_policy() -> None:
    assert isinstance(load_model("sim:thinking"), SimThinkingModel)
    assert isinstance(load_model("sim"), SimModel)
    wrapped = load_model("sim:thinking", thinking_budget=100, answer_budget=20)
    assert isinstance(wrapped, ThinkingModel) and wrapped.policy.thinking_budget == 100
    with pytest.raises(UserError, match="unknown option"):
        load_model("sim:thinking", colour="blue")


async def test_without_a_policy_it_overthinks_and_the_thinking_stays_out_of_the_answer() -> None:
    problem = generate_problems(1, seed=3)[0]
    ctx = RunContext(model=load_model("sim:thinking"))
    gen = (await ctx.generate(GenerationRequest(prompt=problem.question, max_tokens=20_000, seed=1)))[0]
    assert len(gen.thinking.split()) > 300 and gen.text.endswith(".") and "<think>" not in gen.text
    assert gen.text.split()[-4:-1] == ["The", "answer", "is"]


async def test_longer_thinking_budgets_answer_more_problems_right() -> None:
    problems = generate_problems(60, seed=5)

    async def accuracy(thinking: int) -> float:
        model = with_thinking(SimThinkingModel(), thinking_budget=thinking, answer_budget=32)
        right = 0
        for i, p in enumerate(problems):
            ctx = RunContext(model=model, ledger=BudgetLedger(Budget(tokens=20_000)), seed=i)
            result = await make_strategy("single").search(p, ctx)
            right += result.answer == p.answer
        return right / len(problems)

    short, long = await asyncio.gather(accuracy(20), accuracy(800))
    assert long > short + 0.25


async def test_split_bench_rows_stay_within_budget_and_show_the_trade_off() -> None:
    rows = await run_split_bench(budgets=[4000], shares=[0.01, 0.1, 0.5], problems=30, seed=1)
    assert [r.share for r in rows] == [0.01, 0.1, 0.5]
    assert all(r.max_spend_ratio <= 1.0 for r in rows)
    by = {r.share: r for r in rows}
    assert by[0.01].mean_samples > by[0.1].mean_samples > by[0.5].mean_samples  # many short vs few long
    assert by[0.1].accuracy > by[0.01].accuracy  # tiny thinking budgets lose, even with many votes
    assert "| 4000 | 0.10 |" in markdown(rows)
