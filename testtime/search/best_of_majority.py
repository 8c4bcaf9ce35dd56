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

from collections import defaultdict

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
        pool = [c for c in cands if normalize_answer(c.answer) in eligible]
        total = sum(counts.values())
        # Unscored samples (ineligible answers) were ranked by frequency alone.
        record_candidates(tree, cands, source="frequency",
                          fallback=lambda c: counts.get(normalize_answer(c.answer) or "", 0) / total
                          if total else 0.0)
        ranked = self._rank(pool, counts)
        top_k = ranked[: self.k]
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
        n = sum(counts.values())
        eligible = {a for a, c in counts.items() if c >= self.threshold * n}
        if not eligible and counts:
            top = max(counts.values())
            eligible = {a for a, c in counts.items() if c == top}
        return eligible

    def _pool(self, cands: list[Candidate]) -> list[Candidate]:
        """The samples of the eligible answers."""
        eligible = self._eligible(answer_counts(cands))
        return [c for c in cands if normalize_answer(c.answer) in eligible]

    @staticmethod
    def _rank(pool: list[Candidate], counts: dict[str, int]) -> list[tuple[str, Candidate]]:
        """Eligible answers, best first, each with its best-scored sample.

        Order: answers with a score before unscored ones, then reward, then
        frequency, then first appearance.
        """
        best: dict[str, Candidate] = {}
        first: dict[str, int] = {}
        groups: dict[str, list[Candidate]] = defaultdict(list)
        for i, c in enumerate(pool):
            key = normalize_answer(c.answer)
            if key is None:
                continue
            groups[key].append(c)
            first.setdefault(key, i)
        for key, group in groups.items():
            best[key] = max(group, key=lambda c: -1.0 if c.score is None else c.score)

        def order(key: str) -> tuple[bool, float, int, int]:
            s = best[key].score
            return (s is not None, -1.0 if s is None else s, counts.get(key, 0), -first[key])

        return [(k, best[k]) for k in sorted(best, key=order, reverse=True)]
