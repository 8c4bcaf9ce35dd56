"""The public PRM / verifier fakes behave as documented."""

from __future__ import annotations

import pytest

from tests.support.step_fakes import make_ctx
from testtime.errors import BudgetExhausted
from testtime.models.scripted import ScriptedModel
from testtime.search.base import Problem
from testtime.verifiers.scripted import FunctionPRM, FunctionVerifier, ScriptedPRM, ScriptedVerifier

P = Problem(question="q", answer="5", id="p")


async def test_scripted_prm_scores_by_first_matching_substring() -> None:
    prm = ScriptedPRM({"good": 0.9, "bad": 0.1, "go": 0.7}, default=0.4)
    ctx = make_ctx(ScriptedModel())
    assert await prm.score_steps(P, ["a good step", "a bad one", "going", "other"], ctx) == [0.9, 0.1, 0.7, 0.4]
    assert await prm.score(P, ["a good step", "a bad one"], ctx) == 0.1  # min aggregation
    assert prm.calls == 2 and prm.requests[0] == ("p", ("a good step", "a bad one", "going", "other"))


async def test_function_prm_accepts_per_step_lists_and_last_step_numbers() -> None:
    ctx = make_ctx(ScriptedModel())
    per_list = FunctionPRM(lambda problem, steps: [0.1 * len(s) for s in steps])
    assert await per_list.score_steps(P, ["ab", "abc"], ctx) == pytest.approx([0.2, 0.3])

    async def last(problem, steps):  # async, one number: the last step's score
        return len(steps) / 10

    prm = FunctionPRM(last, aggregation="last")
    assert await prm.score_steps(P, ["x", "y", "z"], ctx) == pytest.approx([0.1, 0.2, 0.3])
    assert await prm.score(P, ["x", "y", "z"], ctx) == pytest.approx(0.3)
    clipped = ScriptedPRM(lambda problem, steps: [2.0, -1.0])
    assert await clipped.score_steps(P, ["a", "b"], ctx) == [1.0, 0.0]
    with pytest.raises(ValueError):
        await FunctionPRM(lambda problem, steps: [0.5]).score_steps(P, ["a", "b"], ctx)


async def test_fakes_spend_through_the_ledger_when_asked() -> None:
    ctx = make_ctx(ScriptedModel(), budget="tokens=10")
    prm = ScriptedPRM({}, tokens_per_step=3)
    await prm.score_steps(P, ["a", "b", "c"], ctx)  # 9 tokens
    assert ctx.ledger.spent("tokens") == 9 and ctx.ledger.usage_by_role()["verify"].calls == 1
    with pytest.raises(BudgetExhausted):
        await prm.score_steps(P, ["a"], ctx)
    assert prm.calls == 1 and ctx.ledger.open_reservations() == 0
    ver = ScriptedVerifier(tokens_per_call=2)
    with pytest.raises(BudgetExhausted):
        await ver.verify(P, "x", ctx)


async def test_scripted_verifier_reference_and_rules() -> None:
    ctx = make_ctx(ScriptedModel())
    ref = ScriptedVerifier(reference=True)
    ok = await ref.verify(P, "so the answer is 5.", ctx)
    bad = await ref.verify(P, "The answer is 7.", ctx)
    assert (ok.passed, ok.score, bad.passed, bad.score) == (True, 1.0, False, 0.0)
    rules = ScriptedVerifier({"seven": 0.6, "nope": False}, default=0.2, threshold=0.5)
    v1, v2, v3 = [await rules.verify(P, t, ctx) for t in ("seven!", "nope", "else")]
    assert (v1.score, v1.passed) == (0.6, True)
    assert (v2.score, v2.passed) == (0.0, False)
    assert (v3.score, v3.passed) == (0.2, False)
    assert rules.calls == 3 and rules.seen == ["seven!", "nope", "else"]


async def test_function_verifier_accepts_bool_score_and_verdict() -> None:
    from testtime.verifiers.base import Verdict

    ctx = make_ctx(ScriptedModel())
    outs = iter([True, 0.3, Verdict(score=0.8, passed=False, detail="strict")])
    ver = FunctionVerifier(lambda problem, text: next(outs), threshold=0.25)
    a, b, c = [await ver.verify(P, "t", ctx) for _ in range(3)]
    assert (a.score, a.passed) == (1.0, True)
    assert (b.score, b.passed) == (0.3, True)
    assert (c.passed, c.detail) == (False, "strict")
