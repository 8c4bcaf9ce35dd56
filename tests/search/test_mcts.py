"""MCTS: real selection / expansion / evaluation / back-propagation."""

from __future__ import annotations

import pytest

from tests.support.step_fakes import PROBLEM, make_ctx, within_budget
from testtime.errors import UserError
from testtime.models.scripted import ScriptedModel
from testtime.search.mcts import MCTS
from testtime.verifiers.scripted import ScriptedPRM, ScriptedVerifier


def small_tree_model() -> ScriptedModel:
    # Root steps alternate a1 / b1; under a1 come a final answer and a wrong turn.
    return ScriptedModel({
        "a1": ["The answer is 5.", "a wrong turn\n\n"],
        "b1": ["The answer is 7."],
        "*": ["a1 step\n\n", "b1 step\n\n"],
    })


PRM = {"answer is 5": 0.9, "answer is 7": 0.2, "a1": 0.8, "b1": 0.4, "wrong": 0.1}


async def test_visits_and_values_backpropagate_exactly() -> None:
    prm = ScriptedPRM(PRM)
    ctx = make_ctx(small_tree_model(), prm=prm)
    result = await MCTS(iterations=3, expand_k=2, c_puct=1.0).search(PROBLEM, ctx)
    tree = result.tree
    # Node ids: 0 root, 1 "a1", 2 "b1", 3 "The answer is 5." (under 1), 4 "a wrong turn".
    assert [tree.nodes[n]["text"] for n in (1, 2, 3, 4)] == ["a1 step", "b1 step", "The answer is 5.",
                                                            "a wrong turn"]
    # it1: expand root, evaluate a1 (0.8). it2: PUCT a1 = 0.8 + 0.5*1/2 = 1.05 > b1 = 0.5,
    # expand a1, evaluate the terminal (last-step PRM 0.9). it3: a1 again (1.086 > 0.707), then
    # the terminal (1.254 > 0.707), whose cached value 0.9 is back-propagated once more.
    assert {n: tree.nodes[n]["visits"] for n in tree.nodes} == {0: 3, 1: 3, 2: 0, 3: 2, 4: 0}
    assert tree.nodes[0]["value"] == pytest.approx(0.8 + 0.9 + 0.9)
    assert tree.nodes[1]["value"] == pytest.approx(2.6)
    assert tree.nodes[3]["value"] == pytest.approx(1.8)
    assert tree.nodes[2]["value"] == 0.0 and tree.nodes[4]["value"] == 0.0
    assert result.stats["expansions"] == 2 and result.stats["prm_calls"] == 2 == prm.calls
    # No verifier: the most-visited path ends at the terminal "5".
    assert result.answer == "5" and result.stats["final"] == "most_visited"
    assert result.stopped_reason == "done"


def test_puct_prefers_unvisited_children_as_the_parent_gets_visits() -> None:
    from testtime.search.base import SearchTree

    ctx = make_ctx(ScriptedModel())
    tree = SearchTree(ctx)
    a, b = tree.add(0, "a"), tree.add(0, "b")
    for n in (a, b):
        tree.set(n, prior=0.5)
    MCTS.backpropagate(tree, a, 0.6)
    mcts = MCTS(c_puct=2.0)
    assert mcts.puct(tree, 0, a) == pytest.approx(0.6 + 2.0 * 0.5 * 1 / 2)
    assert mcts.puct(tree, 0, b) == pytest.approx(2.0 * 0.5 * 1 / 1)
    assert mcts.select(tree) == a  # exploit: 1.1 > 1.0
    for _ in range(3):
        MCTS.backpropagate(tree, a, 0.6)
    assert tree[0]["visits"] == 4 and tree[a]["visits"] == 4
    # a: 0.6 + 2*0.5*2/5 = 1.0 < b: 0 + 2*0.5*2/1 = 2.0 -- explore.
    assert mcts.select(tree) == b


@pytest.mark.parametrize("evaluation", ["prm", "rollout", "both"])
async def test_returns_the_answer_the_prm_and_verifier_lead_to(evaluation: str) -> None:
    model = ScriptedModel({
        "good": "The answer is 5.",
        "bad": "The answer is 7.",
        "*": ["bad start\n\n", "good start\n\n", "bad again\n\n"],
    })
    prm = ScriptedPRM({"answer is 5": 0.95, "answer is 7": 0.2, "good": 0.9, "bad": 0.2})
    ctx = make_ctx(model, prm=prm, budget="tokens=3000")
    result = await MCTS(evaluation=evaluation).search(PROBLEM, ctx)
    assert result.answer == "5"
    assert within_budget(ctx)

    ctx = make_ctx(model, prm=prm, verifier=ScriptedVerifier(reference=True), budget="tokens=3000")
    result = await MCTS(evaluation=evaluation).search(PROBLEM, ctx)
    assert (result.answer, result.stopped_reason, result.stats["final"]) == ("5", "verified", "verified")
    assert within_budget(ctx)


async def test_rollout_value_is_the_verifier_score() -> None:
    # Every root step is non-terminal; the rollout writes the rest at once.
    model = ScriptedModel({"s1": "then The answer is 5.", "*": ["s1 step\n\n"]})
    ver = ScriptedVerifier({"answer is 5": 0.75}, threshold=0.9)  # scores, never passes
    ctx = make_ctx(model, prm=ScriptedPRM({}), verifier=ver)
    result = await MCTS(iterations=1, expand_k=1, evaluation="rollout").search(PROBLEM, ctx)
    assert result.tree.nodes[1]["value"] == pytest.approx(0.75)
    assert result.tree.nodes[0]["value"] == pytest.approx(0.75)
    assert result.candidates[0].data["rollout"] is True
    assert result.answer == "5"  # the most-visited node's rollout is reused, no extra call


async def test_stops_within_budget_and_returns_best_so_far() -> None:
    model = ScriptedModel({"*": ["thinking more\n\n"]})  # never finishes on its own
    ctx = make_ctx(model, prm=ScriptedPRM({}), budget="tokens=1500")
    result = await MCTS().search(PROBLEM, ctx)
    assert result.stopped_reason == "budget_exhausted"
    assert within_budget(ctx)
    assert result.text.startswith("thinking more")
    assert result.stats["iterations"] >= 1


def test_bad_options_are_user_errors() -> None:
    with pytest.raises(UserError):
        MCTS(evaluation="vibes")
    with pytest.raises(UserError):
        MCTS(expand_k=0)


async def test_needs_a_prm() -> None:
    with pytest.raises(UserError, match="--prm"):
        await MCTS().search(PROBLEM, make_ctx(ScriptedModel()))
