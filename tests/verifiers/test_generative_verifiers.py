"""GenRM and FlexiVe against scripted verifier models, with and without logprobs."""

from __future__ import annotations

import math

import pytest

from testtime.budget import Budget, BudgetLedger, Usage
from testtime.context import RunContext
from testtime.errors import BudgetExhausted, UserError
from testtime.models.base import Generation, GenerationRequest, TokenLogprob
from testtime.models.scripted import FunctionModel, ScriptedModel
from testtime.search.base import Problem
from testtime.trace.events import Tracer
from testtime.verifiers.flexive import FlexiVe
from testtime.verifiers.generative import GenRM, parse_verdict

PROBLEM = Problem(question="What is 2 + 2?", answer="4")


def _ctx(**kw: object) -> tuple[RunContext, list]:
    events: list = []
    tracer = Tracer()
    tracer.add_sink(events.append)
    return RunContext(model=ScriptedModel(["The answer is 4."]), tracer=tracer, **kw), events


def _verdict_gen(word: str, p_yes: float, *, top: bool = True) -> Generation:
    """A verification whose verdict token carries P(Yes) = p_yes in its top logprobs."""
    chosen = math.log(p_yes if word == "Yes" else 1 - p_yes)
    alts = ((" Yes", math.log(p_yes)), (" No", math.log(1 - p_yes))) if top else ()
    lps = (TokenLogprob("Check", -0.2), TokenLogprob(" ok.", -0.3), TokenLogprob(" Verdict:", -0.01),
           TokenLogprob(f" {word}", chosen, alts))
    return Generation(text=f"Check ok. Verdict: {word}", finish_reason="eos", logprobs=lps,
                      usage=Usage(input_tokens=20, output_tokens=4))


@pytest.mark.parametrize(("text", "said"), [
    ("The steps hold.\nVerdict: Yes", "yes"),
    ("Step 2 is wrong.\nVerdict: **No**", "no"),
    ("verdict - correct", "yes"),
    ("Looks right to me.\nYes", "yes"),
    ("I am not sure what to say", None),
    ("Yes and no", None),
])
def test_parse_verdict(text: str, said: str | None) -> None:
    assert parse_verdict(text) == said


async def test_genrm_score_is_mean_p_yes_from_logprobs() -> None:
    ps = iter([0.9, 0.7, 0.2])

    def fn(req: GenerationRequest) -> Generation:
        p = next(ps)
        return _verdict_gen("Yes" if p >= 0.5 else "No", p)

    verifier_model = FunctionModel(fn, name="judge")
    ctx, _ = _ctx()
    verdict = await GenRM(verifier_model, m=3).verify(PROBLEM, "2 + 2 = 4. The answer is 4.", ctx)
    assert verdict.score == pytest.approx((0.9 + 0.7 + 0.2) / 3)
    assert verdict.passed and verdict.data["source"] == "logprobs"
    req = verifier_model.requests[0]
    assert req.logprobs and req.top_logprobs == 5 and "2 + 2 = 4" in req.prompt


async def test_genrm_chosen_token_logprob_without_alternatives() -> None:
    model = FunctionModel(lambda req: _verdict_gen("No", 0.3, top=False))
    ctx, _ = _ctx()
    verdict = await GenRM(model).verify(PROBLEM, "The answer is 5.", ctx)
    # P(No) = 0.7 was the chosen token's probability, so P(Yes) = 0.3.
    assert verdict.score == pytest.approx(0.3) and not verdict.passed


async def test_genrm_without_logprobs_counts_yes_votes() -> None:
    model = ScriptedModel(["fine\nVerdict: Yes", "bad\nVerdict: No", "fine\nVerdict: Yes", "ok\nVerdict: Yes"],
                          logprobs=False)
    ctx, _ = _ctx()
    verdict = await GenRM(model, m=4).verify(PROBLEM, "The answer is 4.", ctx)
    assert verdict.score == pytest.approx(0.75) and verdict.passed
    assert verdict.data["source"] == "text" and not model.requests[0].logprobs
    assert "bad" in verdict.data["feedback"]


async def test_genrm_unparseable_output_is_neutral_and_traced() -> None:
    model = ScriptedModel(["I cannot decide."], logprobs=False)
    ctx, events = _ctx()
    verdict = await GenRM(model, m=2).verify(PROBLEM, "The answer is 4.", ctx)
    assert verdict.score == 0.5 and not verdict.passed
    notes = [e for e in events if e.kind == "note" and "unparseable" in e.data["message"]]
    assert len(notes) == 2
    assert any(e.kind == "verdict" and "unparseable" in e.data["detail"] for e in events)


async def test_genrm_spends_as_verify_and_policy_mode_uses_ctx_model() -> None:
    ctx, _ = _ctx()
    ctx.model = ScriptedModel(["Verdict: Yes"], logprobs=False)
    verdict = await GenRM(None, m=2).verify(PROBLEM, "The answer is 4.", ctx)
    assert verdict.passed
    by_role = ctx.ledger.usage_by_role()
    # m=2 judgements from a fan-out backend: two requests, two calls.
    assert set(by_role) == {"verify"} and by_role["verify"].calls == 2


async def test_genrm_budget_refusal_propagates() -> None:
    ctx, _ = _ctx(ledger=BudgetLedger(Budget.parse("tokens=10")))
    with pytest.raises(BudgetExhausted):
        await GenRM(ScriptedModel(["Verdict: Yes"]), max_tokens=64).verify(PROBLEM, "x", ctx)


def test_genrm_rejects_bad_parameters() -> None:
    with pytest.raises(UserError):
        GenRM(m=0)
    with pytest.raises(UserError):
        GenRM(threshold=2.0)


def _flexive_model(fast: list[str], slow: list[str], *, logprobs: bool = False) -> FunctionModel:
    fast_it, slow_it = iter(fast), iter(slow)

    def fn(req: GenerationRequest) -> str:
        return next(fast_it) if "Quickly check" in req.prompt else next(slow_it)

    return FunctionModel(fn, logprobs=logprobs)


async def test_flexive_fast_path_when_fast_verdicts_agree() -> None:
    model = _flexive_model(["Verdict: Yes"] * 4, ["Verdict: No"])
    ctx, _ = _ctx()
    verdict = await FlexiVe(model, k=4, fast_max_tokens=16, slow_max_tokens=200).verify(PROBLEM, "4", ctx)
    assert verdict.data["path"] == "fast" and verdict.passed and verdict.score == 1.0
    assert len(model.requests) == 4 and all(r.max_tokens == 16 for r in model.requests)


async def test_flexive_tolerates_disagreement_up_to_the_threshold() -> None:
    model = _flexive_model(["Verdict: Yes"] * 3 + ["Verdict: No"], ["Verdict: No"])
    ctx, _ = _ctx()
    verdict = await FlexiVe(model, k=4, max_disagreement=0.25).verify(PROBLEM, "4", ctx)
    assert verdict.data["path"] == "fast" and verdict.score == pytest.approx(0.75)


async def test_flexive_slow_path_only_on_disagreement() -> None:
    model = _flexive_model(["Verdict: Yes", "Verdict: No"] * 2, ["Careful check: step 1 is wrong.\nVerdict: No"])
    ctx, events = _ctx()
    verdict = await FlexiVe(model, k=4, slow_max_tokens=300).verify(PROBLEM, "5", ctx)
    assert verdict.data["path"] == "slow" and not verdict.passed and verdict.score == 0.0
    assert verdict.data["disagreement"] == 0.5
    assert [r.max_tokens for r in model.requests].count(300) == 1
    assert "step 1 is wrong" in verdict.data["feedback"]
    assert any(e.kind == "verdict" and e.data.get("path") == "slow" for e in events)


async def test_flexive_zero_threshold_sends_any_dissent_to_the_slow_pass() -> None:
    model = _flexive_model(["Verdict: Yes"] * 3 + ["Verdict: No"], ["Verdict: Yes"])
    ctx, _ = _ctx()
    verdict = await FlexiVe(model, k=4, max_disagreement=0.0).verify(PROBLEM, "4", ctx)
    assert verdict.data["path"] == "slow" and verdict.passed


async def test_flexive_with_logprobs_scores_by_p_yes() -> None:
    def fn(req: GenerationRequest) -> Generation:
        return _verdict_gen("Yes", 0.8)

    ctx, _ = _ctx()
    verdict = await FlexiVe(FunctionModel(fn), k=2).verify(PROBLEM, "4", ctx)
    assert verdict.data["path"] == "fast" and verdict.score == pytest.approx(0.8)


async def test_flexive_falls_back_to_fast_verdicts_when_slow_pass_is_unaffordable() -> None:
    model = _flexive_model(["Verdict: Yes", "Verdict: Yes", "Verdict: No", "Verdict: No"], ["Verdict: Yes"])
    ctx, _ = _ctx(ledger=BudgetLedger(Budget.parse("tokens=400")))
    verdict = await FlexiVe(model, k=4, fast_max_tokens=8, slow_max_tokens=5000).verify(PROBLEM, "4", ctx)
    assert verdict.data["path"] == "fast (slow refused)" and verdict.score == 0.5
