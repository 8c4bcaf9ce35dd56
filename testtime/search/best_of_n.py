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
with the rest. Rounds continue while another (possibly shortened) sample
fits, so the budget is used rather than left idle; there is no sample cap
unless ``max_n`` sets one. Given ``n`` explicitly, exactly ``n`` samples are
requested (fewer if the budget refuses): the user's cap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from testtime.budget import BudgetLedger, Usage
from testtime.context import RunContext
from testtime.errors import SearchStop, UserError
from testtime.search.base import (
    MIN_SAMPLE_TOKENS,
    SPEND_DIMENSIONS,
    Candidate,
    Problem,
    SearchResult,
    SearchStrategy,
    SearchTree,
    answer_counts,
    derived_n_cap,
    draw_solutions,
    normalize_answer,
    prm_wants_logprobs,
    solution_request,
    split_steps,
    vote,
)
from testtime.verifiers.base import aggregate


async def draw_samples(problem: Problem, ctx: RunContext, *, n: int | None, max_n: int | None,
                       batch: int, min_tokens: int = MIN_SAMPLE_TOKENS) -> tuple[list[Candidate], str]:
    """Draw ``n`` full solutions, or as many as ``ctx.ledger`` affords (n=None).

    With a derived n, drawing goes on while the worst-case reservations of
    calls in flight settle to cheaper actual usage and more samples fit; the
    last samples are shortened to what the budget still pays for (budget
    forcing). See :func:`~testtime.search.base.draw_solutions`. Samples ask
    for token logprobs when the PRM scores from them (``prm:confidence``), so
    scoring needs no probe requests.
    """
    return await draw_solutions(problem, ctx, n=n, max_n=max_n, batch=batch, min_tokens=min_tokens,
                                logprobs=prm_wants_logprobs(ctx))


def cost_ratio(ledger: BudgetLedger, sampled: Usage, before: Usage, after: Usage) -> float | None:
    """Scoring cost (``after - before``) over sampling cost, on the budget's limited dimensions.

    The largest ratio over the dimensions the ledger limits (the one that
    binds first); None when sampling cost nothing on any of them.
    """
    best: float | None = None
    for dim in SPEND_DIMENSIONS:
        if ledger.remaining(dim) == float("inf"):
            continue
        cost = sampled.amount(dim)
        if cost > 0:
            r = max(after.amount(dim) - before.amount(dim), 0.0) / cost
            best = r if best is None else max(best, r)
    return best


def unscored_answers(cands: Sequence[Candidate]) -> list[Candidate]:
    """Candidates worth scoring: not scored yet, with an answer (a sample cut short has none)."""
    return [c for c in cands if c.score is None and c.answer is not None]


#: Margin on a measured scoring/sampling cost ratio: scoring reserves its
#: worst case, which the measured (settled) ratio does not include.
SCORE_SAFETY = 1.25


async def sample_and_score(problem: Problem, ctx: RunContext, *, max_n: int | None, batch: int,
                           ratio: float, max_rounds: int | None, aggregation: str | None = None,
                           select: Callable[[list[Candidate]], list[Candidate]] = unscored_answers,
                           name: str = "samples", min_tokens: int = MIN_SAMPLE_TOKENS,
                           ) -> tuple[list[Candidate], str, int]:
    """Sample-then-score rounds that spend the budget on both.

    Each round samples inside a child ledger holding ``1 / (1 + ratio)`` of
    what remains (``ratio``: scoring cost / sampling cost, a guess in round
    one, measured afterwards and then taken with a :data:`SCORE_SAFETY`
    margin), then scores ``select(all candidates)`` with the rest. Until a
    ratio is measured a round draws one sample (when ``max_rounds`` is
    None), so a bad guess cannot strand a budget's worth of samples
    unscored. Rounds go on while another (possibly shortened) sample fits in
    the next round's share, up to ``max_n`` samples (None: as many as the
    budget pays for) and ``max_rounds`` rounds (None: no limit).

    Returns the candidates, ``"done"`` or ``"budget_exhausted"``, and the
    number of rounds that drew samples.
    """
    cap = derived_n_cap(ctx, solution_request(problem, ctx, n=1), max_n)
    cands: list[Candidate] = []
    stopped = "done"
    rounds = 0
    measured_once = False
    while len(cands) < cap and (max_rounds is None or rounds < max_rounds):
        # Until the scoring cost has been measured, a round is one sample
        # (unless the rounds are counted): a wrong guess of ``ratio`` cannot
        # strand samples unscored, and the first score measures the ratio.
        # Measured ratios get a safety margin.
        share = 1.0 / (1.0 + ratio * (SCORE_SAFETY if measured_once else 1.0))
        probing = not measured_once and max_rounds is None
        room = 1 if probing else cap - len(cands)
        sub = ctx.derive(ledger=ctx.ledger.share(share, name=name))
        new, stopped = await draw_samples(problem, sub, n=None, max_n=room, batch=batch,
                                          min_tokens=min_tokens)
        if not new:
            stopped = "budget_exhausted"
            break
        rounds += 1
        sampled = sub.ledger.usage
        before = ctx.ledger.usage
        cands.extend(new)
        todo = select(cands)
        if not await score_candidates(problem, ctx, todo, aggregation=aggregation):
            stopped = "budget_exhausted"
            break
        measured = cost_ratio(ctx.ledger, sampled, before, ctx.ledger.usage) if todo else None
        if measured is not None:
            ratio = measured
        measured_once = measured_once or bool(todo)
    return cands, stopped, rounds


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
        except SearchStop:
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


def record_candidates(tree: SearchTree, cands: Sequence[Candidate], *,
                      fallback: Callable[[Candidate], float] | None = None,
                      source: str = "vote_share") -> None:
    """Add each full solution as a child of the root (a depth-1 tree).

    A node's score is the candidate's score; for an unscored candidate,
    ``fallback(candidate)`` (the number the strategy ranked it by instead;
    default: its answer's share of the answered candidates, 0 without an
    answer), marked ``score_source=source``.
    """
    if fallback is None:
        counts = answer_counts(cands)
        answered = sum(counts.values())

        def fallback(c: Candidate) -> float:
            return counts.get(normalize_answer(c.answer) or "", 0) / answered if answered else 0.0

    for c in cands:
        score, extra = c.score, {}
        if score is None and fallback is not None:
            score, extra = float(fallback(c)), {"score_source": source}
        if "passed" in c.data:
            extra["passed"] = bool(c.data["passed"])  # the verifier's verdict, for trace readers
        if c.node is None:
            c.node = tree.add(0, c.text, score=score, tokens=c.tokens, terminal=True,
                              answer=c.answer, **extra)
            if "passed" in extra:
                tree.scored(c.node, passed=extra["passed"])  # node_added carries no verdict
        elif score is not None:
            tree.scored(c.node, score=score, **extra)


class BestOfN(SearchStrategy):
    """Sample N solutions and return the best-scored one.

    Args:
        n: samples; None derives N from the budget (see the module docstring).
        max_n: cap on the derived N (None: as many as the budget pays for).
        batch: samples per model call.
        aggregation: PRM aggregation override (min/last/product/mean).
        score_ratio: initial guess of scoring cost / sampling cost per sample.
        max_rounds: cap on sample-then-score rounds (None: until the budget is spent).
        min_tokens: the shortest output a last, shortened sample is given
            (raise it to spend less on samples cut short before an answer).
    """

    name = "best_of_n"

    def __init__(self, n: int | None = None, *, max_n: int | None = None, batch: int = 8,
                 aggregation: str | None = None, score_ratio: float = 0.5,
                 max_rounds: int | None = None, min_tokens: int = MIN_SAMPLE_TOKENS) -> None:
        if n is not None and n < 1:
            raise UserError(f"best_of_n needs n >= 1, got {n}")
        if (max_n is not None and max_n < 1) or batch < 1 or (max_rounds is not None and max_rounds < 1):
            raise UserError("best_of_n needs max_n, batch and max_rounds >= 1")
        if score_ratio < 0:
            raise UserError(f"best_of_n score_ratio must be >= 0, got {score_ratio}")
        if min_tokens < 1:
            raise UserError(f"best_of_n min_tokens must be >= 1, got {min_tokens}")
        self.n = n
        self.max_n = max_n
        self.batch = batch
        self.aggregation = aggregation
        self.score_ratio = score_ratio
        self.max_rounds = max_rounds
        self.min_tokens = min_tokens

    async def search(self, problem: Problem, ctx: RunContext) -> SearchResult:
        selection = scorer_name(ctx)
        ctx.tracer.emit("strategy_start", strategy=self.name,
                        params={"n": self.n, "max_n": self.max_n, "selection": selection})
        tree = SearchTree(ctx)
        if selection == "majority":
            cands, stopped = await draw_samples(problem, ctx, n=self.n, max_n=self.max_n, batch=self.batch,
                                                min_tokens=self.min_tokens)
            rounds = 1
        elif self.n is not None:
            cands, stopped = await draw_samples(problem, ctx, n=self.n, max_n=self.n, batch=self.batch,
                                                min_tokens=self.min_tokens)
            if not await score_candidates(problem, ctx, unscored_answers(cands), aggregation=self.aggregation):
                stopped = "budget_exhausted"
            rounds = 1
        else:
            cands, stopped, rounds = await sample_and_score(
                problem, ctx, max_n=self.max_n, batch=self.batch, ratio=self.score_ratio,
                max_rounds=self.max_rounds, aggregation=self.aggregation, name="best_of_n.samples",
                min_tokens=self.min_tokens)
        result = self._pick(cands, selection, stopped)
        # Unscored samples (no answer, or scoring refused) rank below every
        # scored one; their node shows their answer's vote share.
        record_candidates(tree, cands)
        result.tree = tree.graph
        result.stats.update({"n_sampled": len(cands), "rounds": rounds, "selection": selection,
                             "n_scored": sum(c.score is not None for c in cands)})
        ctx.tracer.emit("strategy_end", strategy=self.name, answer=result.answer,
                        stopped_reason=result.stopped_reason)
        return result

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
