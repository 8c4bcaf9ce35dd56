"""A*-decoding: expansion order follows f = g + h; terminal check; anytime."""

from __future__ import annotations

import math

import pytest

from tests.support.step_fakes import PROBLEM, make_ctx, within_budget
from testtime.models.scripted import ScriptedModel
from testtime.search.astar import AStar, step_cost
from testtime.verifiers.scripted import ScriptedPRM, ScriptedVerifier


def order_model() -> ScriptedModel:
    # Keys are matched against prompt + prefix, deepest first.
    return ScriptedModel({
        "Y-good": ["The answer is 5.", "The answer is 7."],
        "X-route": ["X-bad-1\n\n", "X-bad-2\n\n"],
        "Y-route": ["Y-good\n\n", "Y-meh\n\n"],
        "*": ["X-route\n\n", "Y-route\n\n"],
    })


ORDER_PRM = {"answer is 5": 0.9, "answer is 7": 0.1, "X-bad-1": 0.3, "X-bad-2": 0.2,
             "Y-good": 0.95, "Y-meh": 0.6, "X-route": 0.9, "Y-route": 0.5}


async def test_expansion_order_follows_f() -> None:
    prm = ScriptedPRM(ORDER_PRM)
    ctx = make_ctx(order_model(), prm=prm)
    result = await AStar(expand_k=2).search(PROBLEM, ctx)
    tree = result.tree
    names = {n: tree.nodes[n]["text"] for n in tree.nodes}
    # ids: 1 X-route, 2 Y-route, 3/4 X-bad-1/two, 5 Y-good, 6 Y-meh, 7 "answer 5", 8 "answer 7".
    assert [names[n] for n in (1, 2, 3, 4, 5, 6, 7, 8)] == [
        "X-route", "Y-route", "X-bad-1", "X-bad-2", "Y-good", "Y-meh",
        "The answer is 5.", "The answer is 7."]
    c = step_cost
    assert tree.nodes[1]["f"] == pytest.approx(2 * c(0.9))
    assert tree.nodes[3]["f"] == pytest.approx(c(0.9) + 2 * c(0.3))
    assert tree.nodes[5]["f"] == pytest.approx(c(0.5) + 2 * c(0.95))
    assert tree.nodes[7]["f"] == pytest.approx(c(0.5) + c(0.95) + 2 * c(0.9))
    # x (0.21) < y (1.39) < Y-good (0.79, pushed after y) ; x's children (2.5, 3.3) wait.
    assert result.stats["expansion_order"] == [0, 1, 2, 5]
    assert result.stats["popped"] == [0, 1, 2, 5, 7]
    popped_f = [tree.nodes[n].get("f", 0.0) for n in result.stats["popped"][1:]]
    assert popped_f[1] < tree.nodes[3]["f"]  # y expanded before x's cheaper-g but worse-h kids
    assert result.answer == "5" and result.stopped_reason == "verified"
    assert result.stats["prm_calls"] == prm.calls == 8


async def test_weights_change_the_order() -> None:
    # With h ignored, x's children (g = 1.31) still lose to y (0.69), but Y-good (0.74) then
    # X-bad-1 (1.31) vs Y-meh (1.20): same order; with g ignored, Y-good (h=0.05) wins over y.
    ctx = make_ctx(order_model(), prm=ScriptedPRM(ORDER_PRM))
    result = await AStar(expand_k=2, g_weight=0.0).search(PROBLEM, ctx)
    assert result.stats["expansion_order"] == [0, 1, 2, 5]
    assert math.isclose(result.tree.nodes[3]["f"], step_cost(0.3))
    assert math.isclose(result.tree.nodes[7]["f"], step_cost(0.9))
    # h ignored: f = g alone (uniform-cost search over -log step scores).
    ctx = make_ctx(order_model(), prm=ScriptedPRM(ORDER_PRM))
    result = await AStar(expand_k=2, h_weight=0.0).search(PROBLEM, ctx)
    assert math.isclose(result.tree.nodes[7]["f"], step_cost(0.5) + step_cost(0.95) + step_cost(0.9))


async def test_terminal_that_fails_the_check_is_skipped() -> None:
    model = ScriptedModel({"S-route": ["The answer is 5."], "*": ["The answer is 7.", "S-route\n\n"]})
    prm = ScriptedPRM({"answer is 7": 0.8, "S-route": 0.7, "answer is 5": 0.9})
    # Without a verifier the first terminal whose PRM score passes (7, f=0.45) wins.
    ctx = make_ctx(model, prm=prm)
    plain = await AStar(expand_k=2, threshold=0.5).search(PROBLEM, ctx)
    assert (plain.answer, plain.stopped_reason) == ("7", "verified")
    # A stricter threshold rejects it, and so does a reference verifier.
    ctx = make_ctx(model, prm=prm)
    strict = await AStar(expand_k=2, threshold=0.85).search(PROBLEM, ctx)
    assert strict.answer == "5" and strict.stats["popped"][:2] == [0, 1]
    ver = ScriptedVerifier(reference=True)
    ctx = make_ctx(model, prm=prm, verifier=ver)
    checked = await AStar(expand_k=2).search(PROBLEM, ctx)
    assert (checked.answer, checked.stopped_reason) == ("5", "verified")
    assert checked.stats["verifier_calls"] == ver.calls == 2
    assert [c.data["passed"] for c in checked.candidates] == [False, True]
    assert checked.tree.nodes[1].get("pruned") is True


async def test_anytime_return_when_the_budget_ends() -> None:
    ctx = make_ctx(order_model(), prm=ScriptedPRM(ORDER_PRM), budget="tokens=250")
    result = await AStar(expand_k=2).search(PROBLEM, ctx)
    assert result.stopped_reason == "budget_exhausted"
    assert within_budget(ctx)
    assert result.text  # the best open state, completed if it fitted
    assert len(result.stats["expansion_order"]) < 4


async def test_max_expansions_caps_an_unlimited_search() -> None:
    model = ScriptedModel({"*": ["more\n\n"]})
    ctx = make_ctx(model, prm=ScriptedPRM({}, default=0.9))
    result = await AStar(expand_k=1, max_expansions=5, max_steps=50).search(PROBLEM, ctx)
    assert result.stats["expansions"] == 5
    assert result.text.startswith("more")  # best open state, completed
