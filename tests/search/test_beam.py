"""beam: step-level search led by a scripted PRM; anytime; budget safety."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testtime.budget import Budget, BudgetLedger
from testtime.context import RunContext
from testtime.errors import UserError
from testtime.models.base import GenerationRequest
from testtime.models.scripted import FunctionModel
from testtime.search.base import Problem, SearchTree, split_steps
from testtime.search.beam import Beam, BeamSearch
from testtime.sim.suites import get_suite
from testtime.verifiers.scripted import ScriptedPRM

PROBLEM = Problem(question="What is 3 + 4?", answer="7", id="p")


def stepper(pattern: tuple[bool, ...] = (False, False, True, False), depth: int = 3) -> FunctionModel:
    """A model whose steps are 'good' or 'bad' in a fixed cycle; the final
    step answers 7 only after an all-good path (else 3)."""
    cycle = itertools.cycle(pattern)
    ids = itertools.count()

    def fn(req: GenerationRequest) -> str:
        steps = split_steps(req.prefix)
        if len(steps) >= depth - 1:
            answer = "7" if steps and all(s.startswith("good") for s in steps) else "3"
            return f"The answer is {answer}."
        kind = "good" if next(cycle) else "bad"
        return f"{kind} step {len(steps) + 1} (sample {next(ids)})\n\nmore text"

    return FunctionModel(fn)


def _ctx(tokens: int = 100_000, prm: object = None) -> RunContext:
    prm = prm or ScriptedPRM({"good": 0.9, "bad": 0.1}, default=0.5)
    return RunContext(model=stepper(), ledger=BudgetLedger(Budget(tokens=tokens)), rng=random.Random(0),
                      seed=0, prm=prm, max_tokens=64, step_max_tokens=16)


async def test_prm_leads_beam_to_the_right_answer() -> None:
    ctx = _ctx()
    result = await BeamSearch(beam_width=2, expansions=4).search(PROBLEM, ctx)
    assert result.answer == "7"
    steps = result.text.split("\n\n")
    assert steps[0].startswith("good step 1") and steps[1].startswith("good step 2")
    assert result.stopped_reason == "done"
    g = result.tree
    # Round one samples B*M = 8 first steps from the root; each round keeps 2.
    assert len(list(g.successors(0))) == 8
    assert g.nodes[result.candidates[0].node]["terminal"]
    assert ctx.ledger.spent("tokens") <= 100_000


async def test_without_a_useful_prm_beam_follows_noise() -> None:
    flat = ScriptedPRM({"bad": 0.9, "good": 0.1}, default=0.5)  # a misleading PRM
    result = await BeamSearch(beam_width=1, expansions=4).search(PROBLEM, _ctx(prm=flat))
    assert result.answer == "3"


async def test_needs_a_prm() -> None:
    ctx = _ctx()
    ctx.prm = None
    with pytest.raises(UserError, match="process reward model"):
        await BeamSearch().search(PROBLEM, ctx)


async def test_anytime_return_when_budget_runs_out() -> None:
    ctx = _ctx(tokens=120)
    result = await BeamSearch(beam_width=4, expansions=4, force_finish=False).search(PROBLEM, ctx)
    assert result.stopped_reason == "budget_exhausted"
    assert ctx.ledger.spent("tokens") <= 120 and ctx.ledger.open_reservations() == 0
    assert result.tree.number_of_nodes() >= 1


@settings(max_examples=20, deadline=None)
@given(tokens=st.integers(min_value=1, max_value=20_000), seed=st.integers(0, 50),
       width=st.sampled_from([None, 1, 3]))
def test_budget_is_never_exceeded(tokens: int, seed: int, width: int | None) -> None:
    s = get_suite("calibrated")
    problem = s.problems(1, seed=seed)[0]
    ctx = s.context(Budget(tokens=tokens), seed=seed)
    result = asyncio.run(BeamSearch(beam_width=width).search(problem, ctx))
    assert ctx.ledger.spent("tokens") <= tokens
    assert ctx.ledger.open_reservations() == 0
    assert result.stopped_reason in {"done", "budget_exhausted"}


async def test_on_the_simulator_a_calibrated_prm_helps() -> None:
    s = get_suite("calibrated")
    problems = s.problems(12, seed=3)
    ok = 0
    for i, p in enumerate(problems):
        r = await BeamSearch().search(p, s.context(Budget(tokens=8000), seed=i))
        ok += r.answer == p.answer
    assert ok >= 8  # a single sample solves about half of them



async def test_a_forced_finish_adds_exactly_the_completed_rest_as_one_terminal_node() -> None:
    # A beam cut short by the budget is completed in one full-solution
    # request; only that request's text (not a re-split of the whole
    # solution) becomes the forced node, with that request's tokens. The
    # first kept step holds the delimiter (a server that ignores ``stop``).
    rest = "add three\n\nand four\n\nThe answer is 7."
    ctx = RunContext(model=FunctionModel(lambda req: "\n\n" + rest), ledger=BudgetLedger(Budget(tokens=10_000)),
                     rng=random.Random(0), seed=0, max_tokens=64)
    tree = SearchTree(ctx, delimiter="\n\n")
    one = tree.add(0, "step one\n\nstill step one", tokens=5)
    two = tree.add(one, "step two", tokens=3)
    beam = Beam(node=two, steps=["step one\n\nstill step one", "step two"], score=0.8)
    forced = await BeamSearch(beam_width=1)._force_finish(PROBLEM, ctx, tree, beam, None)
    assert forced is not None and forced.terminal
    assert forced.steps == ["step one\n\nstill step one", "step two", *rest.split("\n\n")]
    node = tree[forced.node]
    assert node["text"] == rest and node["forced"] and node["parent"] == two
    assert forced.tokens == node["tokens"] == ctx.ledger.usage.output_tokens
