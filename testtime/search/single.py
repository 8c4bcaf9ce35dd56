"""``single``: one sample, no search -- the baseline every strategy must beat."""

from __future__ import annotations

from testtime.context import RunContext
from testtime.errors import SearchStop
from testtime.search.base import (
    Problem,
    SearchResult,
    SearchStrategy,
    SearchTree,
    candidate_from,
    fit_request,
    solution_request,
)


class Single(SearchStrategy):
    """Generate one solution and return its extracted answer."""

    name = "single"

    async def search(self, problem: Problem, ctx: RunContext) -> SearchResult:
        full = solution_request(problem, ctx, n=1)
        request = fit_request(ctx, full)
        if request is None:
            return SearchResult(answer=None, text="", stopped_reason="budget_exhausted")
        try:
            gens = await ctx.generate(request)
        except SearchStop:
            return SearchResult(answer=None, text="", stopped_reason="budget_exhausted")
        cand = candidate_from(gens[0])
        # A sample cut short to fit the budget means the budget decided.
        stopped = "budget_exhausted" if request.max_tokens < full.max_tokens else "done"
        if ctx.verifier is not None:
            try:
                verdict = await ctx.verifier.verify(problem, cand.text, ctx)
                cand.score = verdict.score
            except SearchStop:
                stopped = "budget_exhausted"
        tree = SearchTree(ctx)
        # The lone sample holds the whole vote when nothing scored it.
        cand.node = tree.add(0, cand.text, score=1.0 if cand.score is None else cand.score,
                             tokens=cand.tokens, terminal=True, answer=cand.answer,
                             **({"score_source": "only_sample"} if cand.score is None else {}))
        return SearchResult(answer=cand.answer, text=cand.text, score=cand.score,
                            candidates=[cand], tree=tree.graph, stopped_reason=stopped)
