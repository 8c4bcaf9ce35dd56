"""Self-consistency: sample N solutions, majority-vote their final answers.

N defaults to as many samples as the budget affords (capped at ``max_n``).
The weighted variant sums verifier (or aggregated PRM) scores per answer
instead of counting votes.
"""

from __future__ import annotations

import asyncio

from testtime.context import RunContext
from testtime.errors import BudgetExhausted, UserError
from testtime.search.base import (
    Candidate,
    Problem,
    SearchResult,
    SearchStrategy,
    affordable_n,
    normalize_answer,
    sample_solutions,
    solution_request,
    split_steps,
    vote,
)
from testtime.search.single import Single


class SelfConsistency(SearchStrategy):
    """Majority vote over extracted answers.

    Args:
        n: number of samples; None derives it from the budget.
        max_n: cap on the derived n.
        batch: samples per model call.
    """

    name = "self_consistency"
    weighted = False

    def __init__(self, n: int | None = None, *, max_n: int = 32, batch: int = 8) -> None:
        if n is not None and n < 1:
            raise UserError(f"self_consistency needs n >= 1, got {n}")
        self.n = n
        self.max_n = max_n
        self.batch = batch

    async def search(self, problem: Problem, ctx: RunContext) -> SearchResult:
        target = self.n if self.n is not None else self.max_n
        ctx.tracer.emit("strategy_start", strategy=self.name, params={"n": self.n, "max_n": self.max_n})
        cands: list[Candidate] = []
        stopped = "done"
        # Worst-case reservations are loose; once a round settles, the budget
        # may afford more samples. Draw rounds until the target is reached or
        # not even one more sample fits.
        while len(cands) < target:
            k = affordable_n(ctx, solution_request(problem, ctx, n=1), cap=target - len(cands))
            if k == 0:
                stopped = "budget_exhausted"
                break
            extra, stopped = await sample_solutions(problem, ctx, k, batch=self.batch)
            cands.extend(extra)
            if stopped != "done" or not extra:
                break
        if not cands:
            # Not even one full-length sample fits: one shortened sample.
            single = await Single().search(problem, ctx)
            single.stats["n_requested"] = target
            return single
        n = len(cands)
        if self.weighted and cands:
            stopped = await _score(problem, ctx, cands) or stopped
        winner, tally = vote(cands, weighted=self.weighted)
        best = next((c for c in cands if normalize_answer(c.answer) == winner), None)
        for c in cands:
            c.votes = tally.get(normalize_answer(c.answer) or "", 0.0)
        if best is None and cands:
            best = cands[0]
        result = SearchResult(
            answer=best.answer if best else None,
            text=best.text if best else "",
            score=(tally.get(winner, 0.0) / max(sum(tally.values()), 1e-9)) if winner else None,
            candidates=cands,
            stopped_reason=stopped,
            stats={"n_requested": n, "n_sampled": len(cands), "tally": tally},
        )
        ctx.tracer.emit("strategy_end", strategy=self.name, answer=result.answer, stopped_reason=stopped)
        return result


class WeightedSelfConsistency(SelfConsistency):
    """Self-consistency whose votes are weighted by verifier or PRM scores."""

    name = "weighted_self_consistency"
    weighted = True


async def _score(problem: Problem, ctx: RunContext, cands: list[Candidate]) -> str | None:
    """Score candidates with the verifier, else the PRM; None if all were scored."""
    if ctx.verifier is None and ctx.prm is None:
        raise UserError("weighted self-consistency needs --verifier or --prm to weight votes")

    async def one(c: Candidate) -> bool:
        try:
            if ctx.verifier is not None:
                c.score = (await ctx.verifier.verify(problem, c.text, ctx)).score
            elif ctx.prm is not None:
                c.score = await ctx.prm.score(problem, split_steps(c.text, ctx.step_delimiter), ctx)
            return True
        except BudgetExhausted:
            c.score = 0.0
            return False

    ok = await asyncio.gather(*(one(c) for c in cands))
    return None if all(ok) else "budget_exhausted"
