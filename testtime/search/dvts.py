"""Diverse Verifier Tree Search (DVTS).

Beam search with a PRM tends to spend its width on near-copies of one
promising prefix. DVTS splits the budget into ``subtrees`` independent
searches, each a step-level beam of width ``beam_width`` (default 1: greedy
on the PRM over ``expansions`` candidates per step) in its own child ledger
holding ``1 / subtrees`` of the budget, all rooted at the empty solution and
run concurrently. Each subtree contributes its terminal solutions; the final
answer is the best-scored one (``select="prm"``) or the answer with the
largest summed PRM score over all subtrees (``select="weighted"``, default,
which is also a vote).

Budget: with ``subtrees=None`` the count is derived from the budget
(``remaining / estimated subtree cost``, capped by ``max_subtrees``, at least
1). Subtrees rarely use their whole share; what they leave rolls over to
another round of subtrees sized by the measured cost of the last round, up to
``max_rounds``. A subtree that runs out of budget returns its best partial
(or a budget-forced completion) like :class:`~testtime.search.beam.BeamSearch`.
"""

from __future__ import annotations

import asyncio
import math

from testtime.budget import Usage
from testtime.context import RunContext
from testtime.errors import UserError
from testtime.search.base import Problem, SearchResult, SearchStrategy, SearchTree
from testtime.search.beam import SELECTIONS, BeamOutcome, BeamSearch
from testtime.search.stepwise import (
    affordable_count,
    diff_usage,
    prefix_cache_report,
    require_prm,
    scale_usage,
)


class DVTS(SearchStrategy):
    """Independent PRM-guided subtrees, one final pick.

    Args:
        subtrees: number of subtrees; None derives it from the budget.
        beam_width: width of each subtree's beam.
        expansions: next steps sampled per beam per round.
        max_steps / expected_steps: depth limit and depth guess.
        max_subtrees: cap on the derived count per round.
        max_rounds: rounds of subtrees run with leftover budget (derived count only).
        select: ``"weighted"`` (summed PRM score per answer) or ``"prm"``.
        aggregation: PRM aggregation override.
    """

    name = "dvts"
    needs_prm = True

    def __init__(self, subtrees: int | None = None, *, beam_width: int = 1, expansions: int = 4,
                 max_steps: int = 24, expected_steps: int = 6, max_subtrees: int = 16,
                 max_rounds: int = 3, select: str = "weighted", aggregation: str | None = None) -> None:
        if subtrees is not None and subtrees < 1:
            raise UserError(f"dvts needs subtrees >= 1, got {subtrees}")
        if beam_width < 1 or expansions < 1 or max_subtrees < 1 or max_rounds < 1:
            raise UserError("dvts needs beam_width, expansions, max_subtrees and max_rounds >= 1")
        if select not in SELECTIONS:
            raise UserError(f"dvts select must be one of {', '.join(SELECTIONS)}, got {select!r}")
        self.subtrees = subtrees
        self.beam_width = beam_width
        self.expansions = expansions
        self.max_steps = max_steps
        self.expected_steps = expected_steps
        self.max_subtrees = max_subtrees
        self.max_rounds = max_rounds
        self.select = select
        self.aggregation = aggregation
        self._beam = BeamSearch(beam_width, expansions=expansions, max_steps=max_steps,
                                expected_steps=expected_steps, select=select, aggregation=aggregation)

    def params(self) -> dict[str, object]:
        return {k: v for k, v in super().params().items() if k != "_beam"}

    async def search(self, problem: Problem, ctx: RunContext) -> SearchResult:
        require_prm(ctx, self.name)
        ctx.tracer.emit("strategy_start", strategy=self.name, params=self.params())
        start = ctx.ledger.usage
        tree = SearchTree(ctx)
        merged = BeamOutcome(width=self.beam_width)
        # Worst-case guess of one subtree's cost, replaced by measurement.
        per_child = self._beam.child_cost_guess(problem, ctx, [])
        per_subtree = scale_usage(per_child, self.beam_width * self.expansions * self.expected_steps)
        launched = 0
        rounds = 0
        while rounds < self.max_rounds:
            count = self._count(ctx, per_subtree, first=rounds == 0)
            if count < 1:
                if rounds == 0:
                    count = 1  # always try one subtree; it returns what the budget allows
                else:
                    break
            rounds += 1
            before = ctx.ledger.usage
            shares = [ctx.derive(ledger=ctx.ledger.share(1.0 / count, name=f"dvts.subtree{launched + i}"))
                      for i in range(count)]
            outcomes = await asyncio.gather(*(
                self._beam.run_beam(problem, sub, tree, width=self.beam_width,
                                    tag={"subtree": launched + i})
                for i, sub in enumerate(shares)))
            launched += count
            for o in outcomes:
                self._merge(merged, o)
            spent = ctx.ledger.usage
            used = spent.tokens - before.tokens
            if used > 0:
                per_subtree = scale_usage(diff_usage(spent, before), 1.0 / count)
            if self.subtrees is not None or all(o.stopped == "budget_exhausted" for o in outcomes):
                break
        result = self._beam.result_from(merged, tree, ctx)
        result.stats.update({"subtrees": launched, "rounds_of_subtrees": rounds,
                             "prefix_cache": prefix_cache_report(ctx, start)})
        ctx.tracer.emit("strategy_end", strategy=self.name, answer=result.answer,
                        stopped_reason=result.stopped_reason, prefix_cache=result.stats["prefix_cache"])
        return result

    def _count(self, ctx: RunContext, per_subtree: Usage, *, first: bool) -> int:
        if self.subtrees is not None:
            return self.subtrees if first else 0
        units = affordable_count(ctx, per_subtree)
        if units == math.inf:
            return self.max_subtrees
        return min(self.max_subtrees, int(units))

    @staticmethod
    def _merge(into: BeamOutcome, o: BeamOutcome) -> None:
        into.terminals.extend(o.terminals)
        into.completed.extend(o.completed)
        into.active.extend(o.active)
        into.rounds += o.rounds
        if o.forced is not None:
            into.terminals.append(o.forced)
        if o.stopped == "budget_exhausted":
            into.stopped = "budget_exhausted"
