"""Self-consistency: sample N solutions, majority-vote their final answers.

N defaults to as many samples as the budget pays for: calls are drawn
concurrently while their worst case fits, more as settled calls return
slack, and the last samples are shortened to what is left (see
:func:`~testtime.search.base.draw_solutions`); ``max_n`` caps it, and a
given ``n`` is the user's cap. The weighted variant sums verifier (or
aggregated PRM) scores per answer instead of counting votes. It samples
and scores in rounds, each round's samples drawn in a share of the budget
that leaves room to score them (as best-of-N does,
:func:`~testtime.search.best_of_n.sample_and_score`); ``n`` then caps the
samples. A candidate whose scoring the budget still refused casts no vote
(it is not a vote of 0): ``stats["n_unscored"]`` counts them.
"""

from __future__ import annotations

from testtime.context import RunContext
from testtime.errors import UserError
from testtime.search.base import (
    MIN_SAMPLE_TOKENS,
    Problem,
    SearchResult,
    SearchStrategy,
    SearchTree,
    draw_solutions,
    normalized_answers,
    vote,
)
from testtime.search.best_of_n import record_candidates, sample_and_score


class SelfConsistency(SearchStrategy):
    """Majority vote over extracted answers.

    Args:
        n: number of samples; None derives it from the budget.
        max_n: cap on the derived n (None: as many as the budget pays for).
        batch: samples per model call.
        score_ratio: (weighted variant) initial guess of scoring cost /
            sampling cost, measured after the first round.
        min_tokens: the shortest output a last, shortened sample is given
            (raise it to spend less on samples cut short before an answer).
    """

    name = "self_consistency"
    weighted = False

    def __init__(self, n: int | None = None, *, max_n: int | None = None, batch: int = 8,
                 score_ratio: float = 0.5, min_tokens: int = MIN_SAMPLE_TOKENS) -> None:
        if n is not None and n < 1:
            raise UserError(f"{self.name} needs n >= 1, got {n}")
        if (max_n is not None and max_n < 1) or batch < 1:
            raise UserError(f"{self.name} needs max_n and batch >= 1")
        if score_ratio < 0:
            raise UserError(f"{self.name} score_ratio must be >= 0, got {score_ratio}")
        if min_tokens < 1:
            raise UserError(f"{self.name} min_tokens must be >= 1, got {min_tokens}")
        self.n = n
        self.max_n = max_n
        self.batch = batch
        self.score_ratio = score_ratio
        self.min_tokens = min_tokens

    async def search(self, problem: Problem, ctx: RunContext) -> SearchResult:
        if self.weighted and ctx.verifier is None and ctx.prm is None:
            raise UserError("weighted self-consistency needs --verifier or --prm to weight votes")
        ctx.tracer.emit("strategy_start", strategy=self.name, params={"n": self.n, "max_n": self.max_n})
        if not self.weighted:
            cands, stopped = await draw_solutions(problem, ctx, n=self.n, max_n=self.max_n, batch=self.batch,
                                                  min_tokens=self.min_tokens)
        else:
            # Sample-then-score rounds: never more samples than can be scored.
            cap = self.n if self.n is not None else self.max_n
            cands, stopped, _ = await sample_and_score(
                problem, ctx, max_n=cap, batch=self.batch, ratio=self.score_ratio,
                max_rounds=None, name="wsc.samples", min_tokens=self.min_tokens)
        keys = normalized_answers(cands)
        winner, tally = vote(cands, weighted=self.weighted, keys=keys)
        fallback = False
        if self.weighted and winner is None and any(c.answer is not None for c in cands):
            # The budget scored none of them: a plain majority is the best guess left.
            winner, tally = vote(cands, keys=keys)
            fallback = True
        best = next((c for c, k in zip(cands, keys, strict=True) if k == winner), None)
        for c, k in zip(cands, keys, strict=True):
            c.votes = tally.get(k or "", 0.0)
        total = sum(tally.values())
        tree = SearchTree(ctx)
        # Each sample is a node scored by its answer's share of the tally (the
        # number the vote ranks by); a weighted vote's scored samples carry
        # their own score (their vote's weight).
        record_candidates(tree, cands, fallback=lambda c: c.votes / total if total else 0.0)
        if best is None and cands:
            best = cands[0]
        result = SearchResult(
            answer=best.answer if best else None,
            text=best.text if best else "",
            score=(tally.get(winner, 0.0) / max(sum(tally.values()), 1e-9)) if winner else None,
            candidates=cands,
            tree=tree.graph,
            stopped_reason=stopped,
            stats={"n_requested": self.n, "n_sampled": len(cands), "tally": tally,
                   "n_scored": sum(c.score is not None for c in cands),
                   "n_unscored": sum(c.score is None and c.answer is not None for c in cands),
                   "fallback": fallback},
        )
        ctx.tracer.emit("strategy_end", strategy=self.name, answer=result.answer, stopped_reason=stopped)
        return result


class WeightedSelfConsistency(SelfConsistency):
    """Self-consistency whose votes are weighted by verifier or PRM scores."""

    name = "weighted_self_consistency"
    weighted = True

