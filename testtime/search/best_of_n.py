"""Best-of-N: sample N full solutions, return the one the scorer likes best.

The scorer is the outcome verifier (``ctx.verifier``) when there is one, else
the process reward model (``ctx.prm``, step scores folded by its
aggregation or by ``aggregation``). With neither, best-of-N has nothing to
rank by and falls back to a majority vote over final answers (that is,
self-consistency), and says so in ``stats["selection"]``.

Budget: scoring costs budget too, so a budget-derived N must leave room for
it. Sampling runs in rounds: each round samples inside a child ledger holding
``1 / (1 + r)`` of what remains, where ``r`` is the scoring/sampling cost
ratio (a guess in round one, measured afterwards), then scores what it drew
with the rest. Rounds continue while another sample is affordable, so the
budget is used rather than left idle. Given ``n`` explicitly, exactly ``n``
samples are requested (fewer if the budget refuses).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from testtime.context import RunContext
from testtime.errors import BudgetExhausted, UserError
from testtime.search.base import (
    Candidate,
    Problem,
    SearchResult,
    SearchStrategy,
    SearchTree,
    affordable_n,
    answer_counts,
    candidate_from,
    fit_request,
    normalize_answer,
    sample_solutions,
    solution_request,
    split_steps,
    vote,
)
from testtime.verifiers.base import aggregate


async def draw_samples(problem: Problem, ctx: RunContext, *, n: int | None, max_n: int,
                       batch: int) -> tuple[list[Candidate], str]:
    """Draw ``n`` full solutions, or as many as ``ctx.ledger`` affords (n=None).

    With a derived n, drawing continues while worst-case reservations settle
    to cheaper actual usage and more samples fit. If not one full-length
    sample fits, one shortened sample is drawn (budget forcing).
    """
    if n is not None:
        return await sample_solutions(problem, ctx, n, batch=batch)
    cands: list[Candidate] = []
    stopped = "done"
    while len(cands) < max_n:
        k = affordable_n(ctx, solution_request(problem, ctx, n=1), cap=max_n - len(cands))
        if k == 0:
            stopped = "budget_exhausted"
            break
        extra, st = await sample_solutions(problem, ctx, k, batch=batch)
        cands.extend(extra)
        if not extra:
            stopped = st
            break
    if not cands:
        request = fit_request(ctx, solution_request(problem, ctx, n=1))
        if request is not None:
            try:
                gens = await ctx.generate(request)
                cands.append(candidate_from(gens[0]))
            except BudgetExhausted:
                pass
        stopped = "budget_exhausted"
    return cands, stopped


async def score_candidates(problem: Problem, ctx: RunContext, cands: Sequence[Candidate], *,
                           aggregation: str | None = None) -> bool:
    """Score unscored candidates with the verifier, else the PRM (concurrently).

    Candidates whose scoring the budget refused keep ``score=None``. Returns
    True when every candidate got a score.
    """
    todo = [c for c in cands if c.score is None]

    async def one(c: Candidate) -> bool:
        try:
            if ctx.verifier is not None:
                verdict = await ctx.verifier.verify(problem, c.text, ctx)
                c.score = verdict.score
                c.data["passed"] = verdict.passed
            elif ctx.prm is not None:
                steps = split_steps(c.text, ctx.step_delimiter)
                if aggregation is None:
                    c.score = await ctx.prm.score(problem, steps, ctx)
                else:
                    c.score = aggregate(await ctx.prm.score_steps(problem, steps, ctx), aggregation)
            return True
        except BudgetExhausted:
            return False

    done = await asyncio.gather(*(one(c) for c in todo))
    return all(done)


def scorer_name(ctx: RunContext) -> str:
    """Which scorer ranks candidates: ``verifier``, ``prm`` or ``majority``."""
    if ctx.verifier is not None:
        return "verifier"
    if ctx.prm is not None:
        return "prm"
    return "majority"


def record_candidates(tree: SearchTree, cands: Sequence[Candidate]) -> None:
    """Add each full solution as a child of the root (a depth-1 tree)."""
    for c in cands:
        if c.node is None:
            c.node = tree.add(0, c.text, score=c.score, tokens=c.tokens, terminal=True,
                              answer=c.answer)
        else:
            tree.set(c.node, score=c.score)


class BestOfN(SearchStrategy):
    """Sample N solutions and return the best-scored one.

    Args:
        n: samples; None derives N from the budget (see the module docstring).
        max_n: cap on the derived N.
        batch: samples per model call.
        aggregation: PRM aggregation override (min/last/product/mean).
        score_ratio: initial guess of scoring cost / sampling cost per sample.
        max_rounds: cap on sample-then-score rounds.
    """

    name = "best_of_n"

    def __init__(self, n: int | None = None, *, max_n: int = 64, batch: int = 8,
                 aggregation: str | None = None, score_ratio: float = 0.5, max_rounds: int = 4) -> None:
        if n is not None and n < 1:
            raise UserError(f"best_of_n needs n >= 1, got {n}")
        if max_n < 1 or batch < 1 or max_rounds < 1:
            raise UserError("best_of_n needs max_n, batch and max_rounds >= 1")
        if score_ratio < 0:
            raise UserError(f"best_of_n score_ratio must be >= 0, got {score_ratio}")
        self.n = n
        self.max_n = max_n
        self.batch = batch
        self.aggregation = aggregation
        self.score_ratio = score_ratio
        self.max_rounds = max_rounds

    async def search(self, problem: Problem, ctx: RunContext) -> SearchResult:
        selection = scorer_name(ctx)
        ctx.tracer.emit("strategy_start", strategy=self.name,
                        params={"n": self.n, "max_n": self.max_n, "selection": selection})
        tree = SearchTree(ctx)
        if selection == "majority":
            cands, stopped = await draw_samples(problem, ctx, n=self.n, max_n=self.max_n, batch=self.batch)
            rounds = 1
        else:
            cands, stopped, rounds = await self._sample_and_score(problem, ctx)
        record_candidates(tree, cands)
        result = self._pick(cands, selection, stopped)
        result.tree = tree.graph
        result.stats.update({"n_sampled": len(cands), "rounds": rounds, "selection": selection,
                             "n_scored": sum(c.score is not None for c in cands)})
        ctx.tracer.emit("strategy_end", strategy=self.name, answer=result.answer,
                        stopped_reason=result.stopped_reason)
        return result

    async def _sample_and_score(self, problem: Problem, ctx: RunContext) -> tuple[list[Candidate], str, int]:
        if self.n is not None:
            cands, stopped = await draw_samples(problem, ctx, n=self.n, max_n=self.n, batch=self.batch)
            if not await score_candidates(problem, ctx, cands, aggregation=self.aggregation):
                stopped = "budget_exhausted"
            return cands, stopped, 1
        cands: list[Candidate] = []
        stopped = "done"
        ratio = self.score_ratio
        rounds = 0
        while rounds < self.max_rounds and len(cands) < self.max_n:
            rounds += 1
            sub = ctx.derive(ledger=ctx.ledger.share(1.0 / (1.0 + ratio), name="best_of_n.samples"))
            new, stopped = await draw_samples(problem, sub, n=None, max_n=self.max_n - len(cands),
                                              batch=self.batch)
            if not new:
                break
            sample_tokens = sub.ledger.usage.tokens
            before = ctx.ledger.usage.tokens
            scored_all = await score_candidates(problem, ctx, new, aggregation=self.aggregation)
            cands.extend(new)
            if not scored_all:
                stopped = "budget_exhausted"
                break
            if sample_tokens > 0:
                ratio = max((ctx.ledger.usage.tokens - before) / sample_tokens, 0.0)
            if affordable_n(ctx, solution_request(problem, ctx, n=1), cap=1) == 0:
                stopped = "budget_exhausted"
                break
        return cands, stopped, rounds

    def _pick(self, cands: list[Candidate], selection: str, stopped: str) -> SearchResult:
        if not cands:
            return SearchResult(answer=None, text="", stopped_reason="budget_exhausted")
        counts = answer_counts(cands)
        for c in cands:
            c.votes = float(counts.get(normalize_answer(c.answer) or "", 0))
        scored = [c for c in cands if c.score is not None]
        if selection == "majority" or not scored:
            # Nothing scored (no scorer, or the budget refused every score):
            # the majority answer is the best guess left.
            winner, tally = vote(cands)
            best = next((c for c in cands if normalize_answer(c.answer) == winner), cands[0])
            total = sum(tally.values())
            return SearchResult(answer=best.answer, text=best.text,
                                score=(tally.get(winner, 0.0) / total) if total else None,
                                candidates=cands, stopped_reason=stopped,
                                stats={"tally": tally, "fallback": selection != "majority"})
        # Highest score wins; ties go to the more frequent answer, then the earlier sample.
        best = max(scored, key=lambda c: (c.score, c.votes))
        ordered = sorted(cands, key=lambda c: -(c.score if c.score is not None else -1.0))
        return SearchResult(answer=best.answer, text=best.text, score=best.score,
                            candidates=ordered, stopped_reason=stopped, stats={})
