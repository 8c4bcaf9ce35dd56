"""Sampling strategies use the budget they are given, not just stay under it.

A budget-derived N draws samples while their worst case fits, more as settled
calls return slack, and shortens the last ones to what is left; the budget
invariant (spent <= limit, nothing left reserved) holds throughout.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator

import pytest

import testtime
from tests.support import FAKE_KEY
from tests.support.loopback import LoopbackServer, Reply
from tests.support.openai_server import CHAT, completion, openai_server
from testtime.budget import Budget, BudgetLedger
from testtime.cli import main
from testtime.context import RunContext
from testtime.models.base import Generation, GenerationRequest
from testtime.models.registry import load_model
from testtime.models.scripted import ScriptedModel
from testtime.search.base import UNBOUNDED_N, Problem, draw_solutions, sample_candidate
from testtime.search.registry import make_strategy
from testtime.sim.suites import get_suite

#: The pure-sampling strategies (``single`` draws one sample by design).
SAMPLING = ("self_consistency", "weighted_self_consistency", "best_of_n", "best_of_majority")
BUDGETS = (2000, 8000, 32000)
SEED = 1234  # a problem set no other test draws
PROBLEMS = 12


def _runs(suite_name: str, strategy: str, budget: int) -> list[tuple[float, RunContext]]:
    suite = get_suite(suite_name)
    problems = suite.problems(PROBLEMS, seed=SEED)
    policy, prm = suite.make_policy(), suite.make_prm()

    async def one(i: int, problem: Problem) -> tuple[float, RunContext]:
        ctx = suite.context(Budget(tokens=budget), seed=SEED * 100 + i, model=policy, prm_model=prm)
        await make_strategy(strategy).search(problem, ctx)
        return ctx.ledger.spent("tokens") / budget, ctx

    async def every() -> list[tuple[float, RunContext]]:
        return await asyncio.gather(*(one(i, p) for i, p in enumerate(problems)))

    return asyncio.run(every())


@pytest.mark.parametrize("suite", ["calibrated", "hard"])
@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("strategy", SAMPLING)
def test_sampling_strategies_spend_at_least_90_percent_of_the_budget_and_never_more(
        strategy: str, budget: int, suite: str) -> None:
    runs = _runs(suite, strategy, budget)
    ratios = [r for r, _ in runs]
    assert sum(ratios) / len(ratios) >= 0.9, (strategy, budget, suite, ratios)
    for ratio, ctx in runs:
        assert ratio <= 1.0
        assert ctx.ledger.open_reservations() == 0 and ctx.ledger.in_flight() == 0
        assert ctx.ledger.reserved("tokens") == 0
        assert ctx.stats["errors"] == 0
        if strategy == "self_consistency":
            # Sampling asks only for calls that fit: the ledger never has to refuse one.
            # (Scoring strategies may be refused the last scores; they are anytime.)
            assert ctx.stats["refusals"] == 0


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("seed", [0, 3, 8])
def test_usd_budget_best_of_n_on_sim_draws_several_samples_and_spends_90_percent(
        seed: int, capsys: pytest.CaptureFixture[str]) -> None:
    # Issue 9: this stopped budget_exhausted after one sample, at $0.0003 of $0.001.
    out = _run_cli(["run", "What is 2+3?", "--model", "sim", "--strategy", "best_of_n",
                    "--budget", "usd=0.001", "--seed", str(seed), "--json"], capsys)
    usd = out["usage"]["usd"]
    assert out["stats"]["n_sampled"] > 1 and out["usage"]["calls"] > 1
    assert 0.9 * 0.001 <= usd <= 0.001
    assert out["stopped_reason"] == "budget_exhausted"
    assert out["answer"] is not None


def test_a_user_given_n_is_a_cap_the_strategy_keeps() -> None:
    suite = get_suite("calibrated")
    problem = suite.problems(1, seed=SEED)[0]
    for name in SAMPLING:
        ctx = suite.context(Budget(tokens=32000), seed=1)
        result = asyncio.run(make_strategy(name, n=3).search(problem, ctx))
        assert result.stats["n_sampled"] == 3, name
        assert ctx.ledger.spent("tokens") < 0.25 * 32000, name


def test_max_n_caps_the_derived_n() -> None:
    suite = get_suite("calibrated")
    problem = suite.problems(1, seed=SEED)[0]
    ctx = suite.context(Budget(tokens=32000), seed=1)
    result = asyncio.run(make_strategy("self_consistency", max_n=5).search(problem, ctx))
    assert result.stats["n_sampled"] == 5 and result.stopped_reason == "done"


def test_a_budget_that_limits_nothing_a_sample_spends_draws_the_default_count() -> None:
    suite = get_suite("calibrated")
    problem = suite.problems(1, seed=SEED)[0]
    for budget in (Budget(), Budget(seconds=3600)):
        ctx = suite.context(budget, seed=1)
        result = asyncio.run(make_strategy("self_consistency").search(problem, ctx))
        assert result.stats["n_sampled"] == UNBOUNDED_N and result.stopped_reason == "done"


def test_the_last_samples_are_shortened_to_what_the_budget_still_pays_for() -> None:
    model = ScriptedModel(["one two three four five six seven eight nine ten The answer is 7."])
    ctx = RunContext(model=model, ledger=BudgetLedger(Budget(tokens=200)), rng=random.Random(0), seed=0,
                     max_tokens=100)
    cands, stopped = asyncio.run(draw_solutions(Problem(question="q?"), ctx, min_tokens=8))
    full = [r for r in model.requests if r.max_tokens == 100]
    short = [r for r in model.requests if r.max_tokens < 100]
    assert full and short and all(r.max_tokens >= 8 for r in short)
    assert stopped == "budget_exhausted" and len(cands) == len(model.requests)
    assert ctx.ledger.spent("tokens") <= 200 and ctx.ledger.open_reservations() == 0
    # What is left cannot pay for the prompt plus 8 tokens of output.
    prompt = model.input_upper_bound(model.requests[0])
    assert 200 - ctx.ledger.spent("tokens") < prompt + 8


async def test_cancelling_a_draw_mid_flight_leaves_nothing_reserved() -> None:
    started, gate = asyncio.Event(), asyncio.Event()

    async def reply(request: GenerationRequest) -> str:
        started.set()
        await gate.wait()  # never set: the search is cancelled while calls are in flight
        return "The answer is 7."

    ctx = RunContext(model=testtime.FunctionModel(reply), ledger=BudgetLedger(Budget(tokens=2000)),
                     rng=random.Random(0), seed=0, max_tokens=50)
    task = asyncio.ensure_future(make_strategy("self_consistency").search(Problem(question="q?"), ctx))
    await started.wait()
    assert ctx.ledger.in_flight() > 1  # several calls were sent at once
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ctx.ledger.open_reservations() == 0 and ctx.ledger.in_flight() == 0
    assert ctx.ledger.reserved("tokens") == 0 and ctx.ledger.spent("tokens") <= 2000


def test_a_sample_cut_at_its_length_limit_before_an_answer_does_not_vote() -> None:
    usage = testtime.Usage(output_tokens=5, calls=1)
    cut = sample_candidate(Generation(text="Step 1: add 3 to 4 to get 7. Step 2: add", finish_reason="length",
                                      usage=usage))
    assert cut.answer is None and cut.data["truncated"]
    stated = sample_candidate(Generation(text="so The answer is 7.", finish_reason="length", usage=usage))
    assert stated.answer == "7"
    ended = sample_candidate(Generation(text="it is 7", finish_reason="eos", usage=usage))
    assert ended.answer == "7"


# ------------------------------------------------ OpenAI: exact repeat bounds
@pytest.fixture
def srv() -> Iterator[LoopbackServer]:
    with openai_server() as server:
        yield server


async def test_openai_bounds_a_repeated_prompt_by_the_prompt_tokens_the_server_reported(
        srv: LoopbackServer) -> None:
    model = load_model("openai:fake", base_url=srv.url + "/v1", api_key=FAKE_KEY)
    req = GenerationRequest(prompt="What is 2 + 2? Think it through. " * 4, system="terse", max_tokens=4, seed=1)
    other = req.with_(prompt="Something else entirely, asked only once.")
    other_bound = model.input_upper_bound(other)
    assert model.input_upper_bound(req) > 9  # the byte bound, before the server has said anything

    srv.push(CHAT, Reply(body=completion(["four"], prompt_tokens=9)))
    await model.generate(req)
    assert model.input_upper_bound(req) == 9
    # Sampling parameters do not change the prompt; another prompt keeps its own bound.
    assert model.input_upper_bound(req.with_(seed=5, temperature=0.1, max_tokens=50)) == 9
    assert model.input_upper_bound(other) == other_bound
    # This server kind gets one request per sample, each billed the same prompt.
    assert not model.native_n and model.worst_case(req.with_(n=3)).input_tokens == 3 * 9

    # Never lower than what was observed.
    srv.push(CHAT, Reply(body=completion(["four"], prompt_tokens=12)))
    await model.generate(req)
    srv.push(CHAT, Reply(body=completion(["four"], prompt_tokens=7)))
    await model.generate(req)
    assert model.input_upper_bound(req) == 12
    await model.aclose()
