"""Weighted self-consistency: sample-then-score rounds that leave room for scoring,
and no unscored candidate counted as a vote of 0."""

from __future__ import annotations

import pytest

from tests.support.step_fakes import PROBLEM, make_ctx, within_budget
from testtime.models.scripted import ScriptedModel
from testtime.search.base import Candidate, vote
from testtime.search.self_consistency import WeightedSelfConsistency
from testtime.verifiers.scripted import FunctionVerifier


def test_an_unscored_candidate_casts_no_vote() -> None:
    cands = [Candidate(text="", answer="7", score=None), Candidate(text="", answer="7", score=None),
             Candidate(text="", answer="5", score=0.2)]
    winner, tally = vote(cands, weighted=True)
    assert winner == "5" and tally == {"5": 0.2}  # "7" is not in the tally at all
    # Unweighted votes still count every answer.
    assert vote(cands) == ("7", {"7": 2.0, "5": 1.0})


def _model() -> ScriptedModel:
    return ScriptedModel(["Some work here. The answer is 5.", "Other work. The answer is 7.",
                          "More work. The answer is 5."])


def _verifier() -> FunctionVerifier:
    # Scoring is dear (40 tokens a call): a sampler that spends everything on
    # samples leaves nothing to score them with.
    return FunctionVerifier(lambda problem, text: 0.9 if "5" in text else 0.4, tokens_per_call=40)


@pytest.mark.parametrize("tokens", [500, 1200, 3000])
@pytest.mark.parametrize("n", [None, 60])
async def test_under_a_binding_budget_every_vote_paid_for_is_counted(tokens: int, n: int | None) -> None:
    verifier = _verifier()
    ctx = make_ctx(_model(), verifier=verifier, budget=f"tokens={tokens}", max_tokens=32)
    result = await WeightedSelfConsistency(n=n).search(PROBLEM, ctx)
    assert within_budget(ctx)
    answered = [c for c in result.candidates if c.answer is not None]
    assert len(answered) >= 2
    # Every sample drawn with an answer was scored and counted; none was a 0.
    assert all(c.score is not None for c in answered), [c.score for c in answered]
    assert result.stats["n_unscored"] == 0
    assert verifier.calls == len(answered)
    assert sum(result.stats["tally"].values()) == pytest.approx(sum(c.score for c in answered))
    assert result.answer == "5"
    # The budget, not a count, ended sampling (n=60 is more than it pays for).
    assert result.stats["n_sampled"] < 60
    assert ctx.ledger.spent("tokens") > 0.6 * tokens
