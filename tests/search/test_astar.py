"""A*-decoding: expansion order follows f = g + h; terminal check; anytime."""

from __future__ import annotations

import pytest

from tests.support.step_fakes import PROBLEM, make_ctx, within_budget
from testtime.models.scripted import FunctionModel, ScriptedModel
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
    # aggregation="last": h is the newest step's cost, g the steps before it,
    # so f is the path's cost with every step counted once.
    assert tree.nodes[1]["f"] == pytest.approx(c(0.9)) and tree.nodes[1]["g"] == 0.0
    assert tree.nodes[3]["f"] == pytest.approx(c(0.9) + c(0.3))
    assert tree.nodes[3]["g"] == pytest.approx(c(0.9)) and tree.nodes[3]["h"] == pytest.approx(c(0.3))
    assert tree.nodes[5]["f"] == pytest.approx(c(0.5) + c(0.95))
    assert tree.nodes[7]["f"] == pytest.approx(c(0.5) + c(0.95) + c(0.9))
    # x (0.21) < y (1.39) < Y-good (0.79, pushed after y) ; x's children (2.5, 3.3) wait.
    assert result.stats["expansion_order"] == [0, 1, 2, 5]
    assert result.stats["popped"] == [0, 1, 2, 5, 7]
    popped_f = [tree.nodes[n].get("f", 0.0) for n in result.stats["popped"][1:]]
    assert popped_f[1] < tree.nodes[3]["f"]  # y expanded before x's cheaper-g but worse-h kids
    assert result.answer == "5" and result.stopped_reason == "verified"
    assert result.stats["prm_calls"] == prm.calls == 8


async def test_ignoring_h_changes_the_expansion_order() -> None:
    ctx = make_ctx(order_model(), prm=ScriptedPRM(ORDER_PRM))
    default = await AStar(expand_k=2).search(PROBLEM, ctx)
    assert default.stats["expansion_order"] == [0, 1, 2, 5]
    # h ignored: f = g alone (uniform-cost search over -log step scores): the
    # two first steps tie at g = 0 and x's children (g = c(0.9)) are expanded
    # before Y-good, which the default reached third.
    ctx = make_ctx(order_model(), prm=ScriptedPRM(ORDER_PRM))
    uniform = await AStar(expand_k=2, h_weight=0.0).search(PROBLEM, ctx)
    order = uniform.stats["expansion_order"]
    assert order[:4] == [0, 1, 2, 3] and order != default.stats["expansion_order"]
    assert all(uniform.tree.nodes[n]["h"] == 0.0 for n in uniform.tree.nodes if n)
    # A heavier g makes x's sure-but-wrong children cheaper than y's subtree.
    ctx = make_ctx(order_model(), prm=ScriptedPRM(ORDER_PRM))
    heavy = await AStar(expand_k=2, g_weight=3.0).search(PROBLEM, ctx)
    assert heavy.stats["expansion_order"][:4] == [0, 1, 2, 3]
    assert heavy.tree.nodes[5]["f"] == pytest.approx(3 * step_cost(0.5) + step_cost(0.95))


async def test_nodes_carry_f_g_h_in_the_trace() -> None:
    from testtime.trace.events import Tracer

    events: list = []
    ctx = make_ctx(order_model(), prm=ScriptedPRM(ORDER_PRM), tracer=Tracer("t", [events.append]))
    result = await AStar(expand_k=2).search(PROBLEM, ctx)
    scored = {}
    for e in events:
        if e.kind == "node_scored":
            scored.setdefault(e.data["node"], {}).update(e.data)
    for n in result.tree.nodes:
        if n == 0:
            continue
        got = scored[n]
        assert got["score"] == pytest.approx(result.tree.nodes[n]["score"])
        assert got["f"] == pytest.approx(got["g"] + got["h"]) == pytest.approx(result.tree.nodes[n]["f"])


def finishing_model() -> FunctionModel:
    # Step requests (stop at the delimiter) never finish; a completion does,
    # after 200 words: a completion squeezed into leftover budget is cut
    # before its answer, so only room kept in advance gets one.
    def reply(request) -> str:
        if request.stop:
            return "keep working on it\n\n"
        return "keep working on it\n\n" + "still working " * 100 + "so the answer is 5."
    return FunctionModel(reply)


@pytest.mark.parametrize("tokens", [1500, 2500, 4000])
async def test_astar_finishes_its_path_under_a_tight_budget(tokens: int) -> None:
    ctx = make_ctx(finishing_model(), prm=ScriptedPRM({}, default=0.6), budget=f"tokens={tokens}")
    result = await AStar(expand_k=2, max_steps=50).search(PROBLEM, ctx)
    assert within_budget(ctx)
    assert result.stats["expansions"] >= 1  # it searched, then kept room to finish
    assert result.answer == "5" and result.text.endswith("so the answer is 5.")
    assert result.stopped_reason == "budget_exhausted"
    assert result.stats["completion_margin"] > 0


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
