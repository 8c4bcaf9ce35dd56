"""``astar``: A*-decoding over reasoning steps with a PRM.

After "A*-Decoding: Token-Efficient Inference Scaling". Partial solutions sit
in a priority queue ordered by ``f = g + h`` (lowest first):

* ``g`` -- the cost of the steps taken *before* the newest one: each step
  costs ``-log(s)`` where ``s`` is the PRM's score of that step, so
  ``g(child) = g(parent) + cost(parent's newest step)`` (a path of sure
  steps is cheap). Weighted by ``g_weight``.
* ``h`` -- the estimated cost to go: ``-log`` of the PRM's score of the
  current state (the PRM's belief that this partial solution still leads
  to a right answer), weighted by ``h_weight``. A state the PRM doubts is
  expensive to finish correctly. With ``aggregation="last"`` the state
  score *is* the newest step's score, which is why that step is left out
  of g: f counts every step's cost exactly once (``g + h`` = the whole
  path's cost, not the newest step twice). With ``"product"`` the state
  score already folds in the whole path; use ``g_weight=0`` there.

Scores are clipped to ``[eps, 1]`` before the log. The search always pops the
lowest ``f``; a popped unfinished state gets ``expand_k`` sampled next steps,
each scored by the PRM and pushed. A popped terminal state is checked: by
``ctx.verifier`` when there is one (passes if the verdict passes), else by
its PRM state score ``>= threshold``. The first state that passes is the
answer (``stopped_reason="verified"``). When the queue empties, the
expansion cap is hit or the budget runs out, the best terminal seen (by
verifier score, else PRM score) is returned, or failing that the best open
state, completed if the budget still allows.

Room to finish: before each expansion the search checks that the expansion
(``expand_k`` steps, or at least one), one completion of the popped state
and one more step of prefix growth still fit the budget at their worst
case; when they do not it stops expanding and finishes the best state it
has, so a tight budget still ends in a complete answer. ``stats`` records
``completion_margin`` (the worst-case tokens it kept).
"""

from __future__ import annotations

import heapq
import math
from typing import Any

from testtime.context import RunContext
from testtime.errors import BudgetExhausted, SearchStop, UserError
from testtime.search.base import (
    Candidate,
    Problem,
    SearchResult,
    SearchStrategy,
    SearchTree,
    step_request,
)
from testtime.search.stepwise import (
    can_afford,
    check_aggregation,
    complete,
    completion_request,
    expand,
    node_candidate,
    prefix_cache_report,
    require_prm,
    score_nodes,
    verify,
)


def step_cost(score: float, eps: float = 1e-6) -> float:
    """The cost of a step (or state) the PRM scored ``score``: -log(score)."""
    return -math.log(min(max(float(score), eps), 1.0))


class AStar(SearchStrategy):
    """Best-first search on f = g + h from PRM scores.

    Args:
        expand_k: next steps sampled per expansion.
        g_weight: weight of the path cost g.
        h_weight: weight of the cost-to-go estimate h.
        threshold: PRM state score a terminal needs to pass when there is
            no verifier.
        aggregation: how a path's step scores give its state score for h
            and the terminal check (``"last"``: the newest step's score).
        max_steps: depth beyond which a state is not expanded.
        max_expansions: cap on expansions (unlimited budgets).
        eps: floor on scores before taking logs.
    """

    name = "astar"
    needs_prm = True

    def __init__(self, *, expand_k: int = 3, g_weight: float = 1.0, h_weight: float = 1.0,
                 threshold: float = 0.5, aggregation: str = "last", max_steps: int = 12,
                 max_expansions: int = 64, eps: float = 1e-6) -> None:
        if expand_k < 1 or max_steps < 1 or max_expansions < 1:
            raise UserError("astar needs expand_k, max_steps and max_expansions >= 1")
        if g_weight < 0 or h_weight < 0:
            raise UserError("astar g_weight and h_weight must be >= 0")
        if not 0.0 <= threshold <= 1.0:
            raise UserError(f"astar threshold must be in [0, 1], got {threshold}")
        self.expand_k = expand_k
        self.g_weight = g_weight
        self.h_weight = h_weight
        self.threshold = threshold
        self.aggregation = check_aggregation(aggregation)
        self.max_steps = max_steps
        self.max_expansions = max_expansions
        self.eps = eps

    def priority(self, tree: SearchTree, node: int) -> tuple[float, float, float]:
        """Set (and trace as ``node_scored``) and return ``(f, g, h)`` of a scored node.

        g is the parent's g plus the cost of the parent's newest step (the
        newest step of ``node`` itself is judged by h, see the module
        docstring); h is the cost of ``node``'s state score.
        """
        attrs = tree[node]
        parent = attrs["parent"]
        g = 0.0
        if parent not in (None, 0):
            pattrs = tree[parent]
            g = pattrs.get("g", 0.0) + self.g_weight * step_cost(pattrs["step_scores"][-1], self.eps)
        h = self.h_weight * step_cost(attrs["score"], self.eps)
        tree.scored(node, score=float(attrs["score"]), f=g + h, g=g, h=h)
        return g + h, g, h

    def _room_to_expand(self, problem: Problem, ctx: RunContext, tree: SearchTree, node: int,
                        stats: dict[str, Any]) -> bool:
        """The expansion plus one completion of ``node`` and a step more of
        prefix must fit, so the answer can still be finished afterwards."""
        expansion = step_request(problem, ctx, tree.steps(node), n=self.expand_k)
        finish = completion_request(problem, ctx, tree, node)
        growth = step_request(problem, ctx, tree.steps(node), n=1)
        margin = ctx.model.worst_case(finish) + ctx.model.worst_case(growth)
        stats["completion_margin"] = margin.tokens
        if can_afford(ctx, expansion, finish, growth):
            return True
        # Fewer children still leave the margin: expand() shrinks k to fit.
        return can_afford(ctx, expansion.with_(n=1), finish, growth)

    async def search(self, problem: Problem, ctx: RunContext) -> SearchResult:
        require_prm(ctx, self.name)
        start = ctx.ledger.usage
        tree = SearchTree(ctx)
        tree.set(0, g=0.0, h=0.0, f=0.0)
        stats: dict[str, Any] = {"expansions": 0, "prm_calls": 0, "verifier_calls": 0,
                                 "expansion_order": [], "popped": []}
        ctx.tracer.emit("strategy_start", strategy=self.name, params=self.params())
        heap: list[tuple[float, int]] = [(0.0, 0)]
        terminals: list[Candidate] = []
        stopped = "done"
        winner: Candidate | None = None
        try:
            while heap:
                f, node = heapq.heappop(heap)
                stats["popped"].append(node)
                tree.select(node, reason=f"f={f:.4f}")
                attrs = tree[node]
                if attrs["terminal"]:
                    cand = await self._check(problem, ctx, tree, node, stats)
                    terminals.append(cand)
                    if cand.data["passed"]:
                        winner = cand
                        stopped = "verified"
                        break
                    tree.prune(node, reason="failed check")
                    continue
                if attrs["step"] >= self.max_steps:
                    tree.prune(node, reason="max_steps")
                    continue
                if stats["expansions"] >= self.max_expansions:
                    heapq.heappush(heap, (f, node))
                    break
                if not self._room_to_expand(problem, ctx, tree, node, stats):
                    heapq.heappush(heap, (f, node))  # still the best open state
                    stopped = "budget_exhausted"
                    break
                try:
                    kids = await expand(problem, ctx, tree, node, self.expand_k, max_steps=None)
                except SearchStop:
                    heapq.heappush(heap, (f, node))  # still the best open state
                    raise
                stats["expansions"] += 1
                stats["expansion_order"].append(node)
                if not await score_nodes(problem, ctx, tree, kids, stats, how=self.aggregation):
                    # Push what was scored; the budget is gone.
                    for k in kids:
                        if tree[k]["score"] is not None:
                            heapq.heappush(heap, (self.priority(tree, k)[0], k))
                    raise BudgetExhausted("tokens", 0.0, 0.0, ctx.ledger.name)
                for k in kids:
                    heapq.heappush(heap, (self.priority(tree, k)[0], k))
                ctx.tracer.emit("search_round", round=stats["expansions"], alive=len(heap),
                                best_score=heap[0][0] if heap else None)
        except SearchStop:
            stopped = "budget_exhausted"
        best = winner
        if best is None:
            best, finished = await self._fallback(problem, ctx, tree, heap, terminals)
            if not finished:
                stopped = "budget_exhausted"
        if best is not None and best.node is not None:
            tree.select(best.node, reason="final")
        stats["open"] = len(heap)
        stats["prefix_cache"] = prefix_cache_report(ctx, start)
        result = SearchResult(
            answer=best.answer if best else None,
            text=best.text if best else "",
            score=best.score if best else None,
            candidates=terminals,
            tree=tree.graph,
            stopped_reason=stopped,
            stats=stats,
        )
        ctx.tracer.emit("strategy_end", strategy=self.name, answer=result.answer,
                        stopped_reason=result.stopped_reason)
        return result

    async def _check(self, problem: Problem, ctx: RunContext, tree: SearchTree, node: int,
                     stats: dict[str, Any]) -> Candidate:
        """Judge a popped terminal: verifier, else PRM score >= threshold."""
        cand = node_candidate(tree, node)
        if ctx.verifier is not None:
            verdict = await verify(problem, ctx, cand.text, stats)
            cand.score = verdict.score
            cand.data["passed"] = verdict.passed
        else:
            cand.data["passed"] = (cand.score or 0.0) >= self.threshold
        return cand

    async def _fallback(self, problem: Problem, ctx: RunContext, tree: SearchTree,
                        heap: list[tuple[float, int]],
                        terminals: list[Candidate]) -> tuple[Candidate | None, bool]:
        """Anytime answer: best terminal seen, else the best open state
        (completed if affordable). The flag is False when a partial state had
        to be returned because the budget could not finish it."""
        pool = list(terminals)
        # Terminals still queued were never checked; their PRM score stands in.
        pool += [node_candidate(tree, n) for _, n in heap if n != 0 and tree[n]["terminal"]]
        if pool:
            return max(pool, key=lambda c: c.score or 0.0), True
        # The root counts when nothing else is open: completing it is one
        # plain full-solution sample, better than no answer.
        open_nodes = sorted((f, n) for f, n in heap if n != 0) or sorted(heap)
        if not open_nodes:
            return None, True
        node = open_nodes[0][1]
        done = await complete(problem, ctx, tree, node)
        if done is not None:
            done.score = tree[node]["score"]
            terminals.append(done)
            return done, True
        return node_candidate(tree, node), False
