"""Best-of-Majority (BoM) for pass@k.

From N samples, keep only the answers whose frequency is at least
``threshold x N`` (the "majority" filter), score the samples behind those
answers with the verifier or PRM, and return the top-``k`` answers by reward
(the best score among each answer's samples). Unlike best-of-N, a reward
model cannot be fooled by a rare wrong answer, and unlike majority voting the
reward breaks ties between popular answers, so accuracy does not degrade as N
grows ("Best-of-Majority: Minimax-Optimal Strategy for Pass@k").

Only samples of frequent answers are scored, which saves scoring budget. If
no answer reaches the threshold (tiny N), the most frequent answers are kept.
Without a verifier or PRM the ranking is by frequency alone (plain majority).

Budget: a budget-derived N with a scorer is drawn in sample-then-score
rounds (:func:`~testtime.search.best_of_n.sample_and_score`): each round
samples in a share of what remains, then scores the not yet scored samples
of the answers eligible so far, until the budget is spent.

``result.candidates`` is ordered: the top-k answers' best samples first (by
reward), then the other samples; ``stats["top_k"]`` lists the k answers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from testtime.context import RunContext
from testtime.errors import UserError
from testtime.search.base import (
    MIN_SAMPLE_TOKENS,
    Candidate,
    Problem,
    SearchResult,
    SearchStrategy,
    SearchTree,
    answer_counts,
    normalize_answer,
)
from testtime.search.best_of_n import (
    draw_samples,
    record_candidates,
    sample_and_score,
    score_candidates,
    scorer_name,
)


class BestOfMajority(SearchStrategy):
    """Frequency filter, then reward ranking.

    Args:
        n: samples; None derives N from the budget (``sample_share`` of it).
        threshold: minimum answer frequency as a fraction of N, in (0, 1].
        k: how many answers to return (pass@k); the first is ``result.answer``.
        max_n: cap on the derived N (None: as many as the budget pays for).
        batch: samples per model call.
        sample_share: fraction of the budget for sampling in the first
            round when there is a scorer (the rest pays for scoring); later
            rounds split what remains by the measured scoring cost.
        aggregation: PRM aggregation override.
        min_tokens: the shortest output a last, shortened sample is given.
    """

    name = "best_of_majority"

    def __init__(self, n: int | None = None, *, threshold: float = 0.2, k: int = 1, max_n: int | None = None,
                 batch: int = 8, sample_share: float = 0.8, aggregation: str | None = None,
                 min_tokens: int = MIN_SAMPLE_TOKENS) -> None:
        if n is not None and n < 1:
            raise UserError(f"best_of_majority needs n >= 1, got {n}")
        if not 0 < threshold <= 1:
            raise UserError(f"best_of_majority threshold must be in (0, 1], got {threshold}")
        if k < 1:
            raise UserError(f"best_of_majority needs k >= 1, got {k}")
        if (max_n is not None and max_n < 1) or batch < 1 or min_tokens < 1:
            raise UserError("best_of_majority needs max_n, batch and min_tokens >= 1")
        if not 0 < sample_share <= 1:
            raise UserError(f"best_of_majority sample_share must be in (0, 1], got {sample_share}")
        self.n = n
        self.threshold = threshold
        self.k = k
        self.max_n = max_n
        self.batch = batch
        self.sample_share = sample_share
        self.aggregation = aggregation
        self.min_tokens = min_tokens

    async def search(self, problem: Problem, ctx: RunContext) -> SearchResult:
        selection = scorer_name(ctx)
        ctx.tracer.emit("strategy_start", strategy=self.name,
                        params={"n": self.n, "threshold": self.threshold, "k": self.k})
        tree = SearchTree(ctx)
        if selection != "majority" and self.n is None:
            # Rounds: sample in a share of what remains, score the samples of
            # the answers frequent so far, repeat while the budget pays.
            cands, stopped, _ = await sample_and_score(
                problem, ctx, max_n=self.max_n, batch=self.batch,
                ratio=(1.0 - self.sample_share) / self.sample_share, max_rounds=None,
                aggregation=self.aggregation, name="bom.samples", min_tokens=self.min_tokens,
                select=lambda cs: [c for c in self._pool(cs) if c.score is None])
        else:
            cands, stopped = await draw_samples(problem, ctx, n=self.n, max_n=self.max_n, batch=self.batch,
                                                min_tokens=self.min_tokens)
            if selection != "majority":
                todo = [c for c in self._pool(cands) if c.score is None]
                if todo and not await score_candidates(problem, ctx, todo, aggregation=self.aggregation):
                    stopped = "budget_exhausted"
        counts = answer_counts(cands)
        n = len(cands)
        eligible = self._eligible(counts)
        total = sum(counts.values())
        # Unscored samples (ineligible answers) were ranked by frequency alone.
        record_candidates(tree, cands, source="frequency",
                          fallback=lambda c: counts.get(normalize_answer(c.answer) or "", 0) / total
                          if total else 0.0)
        ranked = rank_answers(((normalize_answer(c.answer), c.score) for c in cands), self.threshold)
        top_k = [(key, cands[i]) for key, i in ranked[: self.k]]
        firsts = [best for _, best in top_k]
        rest = [c for c in cands if all(c is not b for b in firsts)]
        for c in cands:
            c.votes = float(counts.get(normalize_answer(c.answer) or "", 0))
        if not top_k:
            fallback = cands[0] if cands else None
            result = SearchResult(answer=fallback.answer if fallback else None,
                                  text=fallback.text if fallback else "", candidates=cands,
                                  stopped_reason=stopped if cands else "budget_exhausted")
        else:
            best = firsts[0]
            result = SearchResult(answer=best.answer, text=best.text, score=best.score,
                                  candidates=firsts + rest, stopped_reason=stopped)
        result.tree = tree.graph
        result.stats.update({
            "n_sampled": n, "selection": selection, "eligible": sorted(eligible),
            "counts": dict(counts), "top_k": [a for a, _ in top_k],
            "n_scored": sum(c.score is not None for c in cands),
        })
        ctx.tracer.emit("strategy_end", strategy=self.name, answer=result.answer,
                        stopped_reason=result.stopped_reason)
        return result

    def _eligible(self, counts: dict[str, int]) -> set[str]:
        """Answers given by at least ``threshold x N`` of the N samples that state one
        (else the most frequent ones)."""
        return eligible_answers(counts, self.threshold)

    def _pool(self, cands: list[Candidate]) -> list[Candidate]:
        """The samples of the eligible answers."""
        eligible = self._eligible(answer_counts(cands))
        return [c for c in cands if normalize_answer(c.answer) in eligible]


def eligible_answers(counts: Mapping[str, int], threshold: float) -> set[str]:
    """The answers given by at least ``threshold x N`` of the N samples that state
    one (``counts``: answer -> samples); when none reaches it, the most frequent ones."""
    n = sum(counts.values())
    eligible = {a for a, c in counts.items() if c >= threshold * n}
    if not eligible and counts:
        top = max(counts.values())
        eligible = {a for a, c in counts.items() if c == top}
    return eligible


def rank_answers(samples: Iterable[tuple[str | None, float | None]], threshold: float) -> list[tuple[str, int]]:
    """Best-of-Majority's ranking of the answers of ``samples``, best first.

    ``samples`` are ``(answer key, score)`` pairs in draw order (the key
    normalised, None for a sample that states no answer; the score None when
    unscored). Keeps the :func:`eligible_answers` (frequency filter), then
    orders them: answers with a score before unscored ones, then by their best
    score, then frequency, then first appearance. Returns each kept answer
    with the index of its best sample (the first one with its best score, or
    its first sample when none is scored). :class:`BestOfMajority` and the
    benchmark's pass@k statistics both rank with this.
    """
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    best: dict[str, tuple[float | None, int]] = {}  # answer -> (best score, index of that sample)
    for i, (key, score) in enumerate(samples):
        if key is None:
            continue
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, i)
        held = best.get(key)
        if held is None:
            best[key] = (None if score is None else float(score), i)
        elif score is not None and (held[0] is None or score > held[0]):
            best[key] = (float(score), i)
    eligible = eligible_answers(counts, threshold)

    def order(key: str) -> tuple[bool, float, int, int]:
        s = best[key][0]
        return (s is not None, -1.0 if s is None else s, counts[key], -first[key])

    return [(key, best[key][1]) for key in sorted(eligible, key=order, reverse=True)]
