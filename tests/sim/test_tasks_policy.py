"""The simulated tasks and policy: determinism, correctness rates, protocol."""

from __future__ import annotations

import random

import pytest

from testtime.budget import Budget, BudgetLedger
from testtime.context import RunContext
from testtime.errors import UserError
from testtime.models.base import GenerationRequest
from testtime.models.registry import load_model
from testtime.search.base import split_steps, step_request
from testtime.sim.policy import SimModel, count_words, parse_state, step_accuracy
from testtime.sim.prm import step_correctness
from testtime.sim.tasks import DISTRACTOR_WEIGHTS, generate_problems, generate_tasks, task_from_question
from testtime.verifiers.answer import extract_answer


def _request(question: str, **kw: object) -> GenerationRequest:
    return GenerationRequest(prompt=question, system="Think step by step.", **kw)


def test_tasks_are_deterministic_and_rebuilt_from_their_question() -> None:
    a = generate_tasks(50, seed=3)
    b = generate_tasks(50, seed=3)
    assert a == b
    assert a != generate_tasks(50, seed=4)
    for t in a:
        assert task_from_question(t.question) == t
        assert t.totals[-1] == t.answer
        assert 3 <= t.n_steps <= 8
        assert len(set(t.distractors)) == len(DISTRACTOR_WEIGHTS) and 0 not in t.distractors
    probs = generate_problems(5, seed=3)
    assert [p.answer for p in probs] == [str(t.answer) for t in a[:5]]


def test_free_form_question_gets_a_stable_task() -> None:
    t1 = task_from_question("What is the meaning of life?")
    assert t1 == task_from_question("What is the meaning of life?")
    assert t1.n_steps == 4


def test_step_accuracy_rises_with_strength_and_falls_with_difficulty() -> None:
    assert step_accuracy(0.8, 0.5) > step_accuracy(0.5, 0.5) > step_accuracy(0.2, 0.5)
    assert step_accuracy(0.5, 0.2) > step_accuracy(0.5, 0.8)


async def test_same_seed_same_samples_different_seed_differs() -> None:
    model = SimModel("default")
    q = generate_tasks(1, seed=1, difficulty=(0.6, 0.6))[0].question
    a = await model.generate(_request(q, n=4, seed=11, max_tokens=1000))
    b = await model.generate(_request(q, n=4, seed=11, max_tokens=1000))
    c = await model.generate(_request(q, n=4, seed=12, max_tokens=1000))
    assert [g.text for g in a] == [g.text for g in b]
    assert [g.text for g in a] != [g.text for g in c]
    greedy = await model.generate(_request(q, n=3, seed=5, temperature=0.0, max_tokens=1000))
    assert len({g.text for g in greedy}) == 1


@pytest.mark.parametrize(("strength", "difficulty"), [(0.35, 0.5), (0.55, 0.5), (0.75, 0.7)])
async def test_per_step_correctness_rate_matches_the_model(strength: float, difficulty: float) -> None:
    task = generate_tasks(1, seed=2, difficulty=(difficulty, difficulty), steps=(6, 6))[0]
    model = load_model("sim:default", strength=strength)
    gens = await model.generate(_request(task.question, n=400, seed=1, max_tokens=2000))
    first_ok = 0
    for g in gens:
        steps = split_steps(g.text)
        assert len(steps) == task.n_steps
        ok = step_correctness(task, steps)
        first_ok += ok[0]
        # Once a trajectory goes wrong it stays wrong, ending on a distractor.
        if False in ok:
            assert ok[ok.index(False):] == [False] * (len(ok) - ok.index(False))
            ans = int(extract_answer(g.text))
            assert ans - task.answer in task.distractors
        else:
            assert extract_answer(g.text) == str(task.answer)
    assert first_ok / 400 == pytest.approx(step_accuracy(strength, difficulty), abs=0.07)


async def test_step_requests_stop_at_the_delimiter_and_end_with_eos() -> None:
    task = generate_tasks(1, seed=5, difficulty=(0.0, 0.0), steps=(3, 3))[0]
    ctx = RunContext(model=SimModel("strong"), ledger=BudgetLedger(Budget(tokens=100_000)),
                     rng=random.Random(0), seed=0)
    problem = task.problem()
    steps: list[str] = []
    finishes = []
    for _ in range(task.n_steps):
        gen = (await ctx.generate(step_request(problem, ctx, steps, max_tokens=200)))[0]
        assert "\n\n" not in gen.text
        steps.append(gen.text)
        finishes.append(gen.finish_reason)
    assert finishes == ["stop", "stop", "eos"]
    assert parse_state(task, "\n\n".join(steps)) == (3, 0)
    assert extract_answer(steps[-1]) == str(task.answer)


async def test_usage_is_honest_and_worst_case_bounds_it() -> None:
    model = SimModel("default")
    q = generate_tasks(1, seed=7)[0].question
    for req in [_request(q, n=5, seed=1, max_tokens=1000), _request(q, n=2, seed=1, max_tokens=20),
                _request(q, n=3, seed=2, max_tokens=80, stop=("\n\n",), prefix="Step 1: add 3 to 4 to get 7.\n\n")]:
        gens = await model.generate(req)
        assert len(gens) == req.n
        total_in = sum(g.usage.input_tokens for g in gens)
        assert total_in == model.billed_input(req)  # the prompt is billed once per call
        for g in gens:
            assert g.usage.output_tokens == count_words(g.text) <= req.max_tokens
        worst = model.worst_case(req)
        assert sum(g.usage.tokens for g in gens) <= worst.tokens
        assert sum(g.usage.usd for g in gens) <= worst.usd + 1e-12
    short = await model.generate(_request(q, n=1, seed=1, max_tokens=20))
    assert short[0].finish_reason == "length" and extract_answer(short[0].text) != q


async def test_logprobs_are_lower_on_slipped_steps() -> None:
    task = generate_tasks(1, seed=9, difficulty=(0.6, 0.6), steps=(1, 1))[0]
    gens = await SimModel("default").generate(_request(task.question, n=300, seed=3, max_tokens=200,
                                                       logprobs=True))
    good = [g.mean_logprob() for g in gens if extract_answer(g.text) == str(task.answer)]
    bad = [g.mean_logprob() for g in gens if extract_answer(g.text) != str(task.answer)]
    assert good and bad
    # A weak signal by default (AUROC 0.65, see test_honest_sim.py), but the right direction.
    assert sum(good) / len(good) > sum(bad) / len(bad) + 0.03


def test_named_policies_and_bad_options() -> None:
    weak, default, strong = (load_model(s) for s in ("sim:weak", "sim", "sim:strong"))
    assert weak.config.strength < default.config.strength < strong.config.strength
    assert weak.price.output < strong.price.output
    assert default.spec == "sim:default"
    with pytest.raises(UserError, match="unknown simulated policy"):
        load_model("sim:genius")
    with pytest.raises(UserError, match="unknown option"):
        load_model("sim", temperature_bias=2)


async def test_revision_request_still_answers_the_tagged_question() -> None:
    """A multi-turn request ending in verifier feedback is about the first, tagged question."""
    problem = generate_problems(1, seed=3)[0]
    model = SimModel()
    plain = GenerationRequest(prompt=problem.question, max_tokens=600, temperature=0)
    revision = GenerationRequest(
        messages=({"role": "user", "content": problem.question},
                  {"role": "assistant", "content": "The answer is 0."},
                  {"role": "user", "content": "That is wrong: the total is off. Try again."}),
        max_tokens=600, temperature=0)
    options = set()
    for req in (plain, revision):
        text = (await model.generate(req))[0].text
        options.add(extract_answer(text))
    task = task_from_question(problem.question)
    allowed = {str(task.answer), *map(str, task.distractors)}
    assert options <= allowed, (options, allowed)
