"""``mcts``: Monte Carlo tree search over reasoning steps with a PRM.

Nodes are partial solutions (node 0 is the empty one). Each iteration runs
the four phases for real:

1. **Selection.** From the root, descend to the child maximising PUCT::

       Q(c) + c_puct * P(c) * sqrt(max(N(parent), 1)) / (1 + N(c))

   where Q = value / visits (0 for an unvisited child) and P is uniform over
   siblings, or -- when the backend returns logprobs and ``logprob_prior`` is
   on -- the softmax of the siblings' mean token logprobs. Ties go to the
   older child. Descent stops at an unexpanded or finished node.
2. **Expansion.** An unexpanded, unfinished leaf gets ``expand_k`` sampled
   next steps (one call); the first new child (highest prior) is evaluated.
3. **Evaluation.** ``"prm"``: the PRM's state score of the node;
   ``"rollout"``: the node's path is completed to a final answer and scored
   by ``ctx.verifier`` (else by the PRM over the whole rollout);
   ``"both"``: ``(1 - rollout_weight) * prm + rollout_weight * rollout``.
   A finished node is its own rollout (verified when a verifier exists);
   its value is cached, so re-selecting it costs nothing.
4. **Back-propagation.** The value is added to ``value`` and 1 to ``visits``
   of the evaluated node and every ancestor up to the root.

Final answer: the best verified terminal (or rollout) when a verifier
passed one; else the most-visited path from the root, completed if it does
not end in an answer (budget permitting; a rollout from that node is reused
when there is one).

Anytime: before each iteration the search checks that one expansion plus
one completion still fit the budget, so there is room to finish the chosen
path; a refusal anywhere ends the loop with ``stopped_reason
"budget_exhausted"``.
"""

from __future__ import annotations

import math
from typing import Any

from testtime.context import RunContext
from testtime.errors import SearchStop, UserError
from testtime.search.base import (
    Candidate,
    Problem,
    SearchResult,
    SearchStrategy,
    SearchTree,
    split_steps,
    step_request,
)
from testtime.search.particles import softmax
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
    state_score,
    verify,
)
from testtime.verifiers.base import aggregate

EVALUATIONS = ("prm", "rollout", "both")


class MCTS(SearchStrategy):
    """PUCT tree search with PRM and/or rollout evaluation.

    Args:
        iterations: simulations to run; None runs until the budget (keeping
            room to finish) or ``max_iterations`` stops it.
        expand_k: children sampled per expansion.
        c_puct: exploration constant.
        evaluation: ``"prm"``, ``"rollout"`` or ``"both"``.
        rollout_weight: the rollout's share of the value with ``"both"``.
        aggregation: how a path's step scores give its PRM value.
        max_steps: depth at which a node is not expanded further.
        max_iterations: cap when ``iterations`` is None (unlimited budgets).
        logprob_prior: use generation logprobs for P when available.
        stop_on_verified: stop as soon as a verifier passes a terminal.
        rollout_max_tokens: max tokens of a rollout (None: ctx.max_tokens).
    """

    name = "mcts"
    needs_prm = True

    def __init__(self, iterations: int | None = None, *, expand_k: int = 3, c_puct: float = 1.0,
                 evaluation: str = "prm", rollout_weight: float = 0.5, aggregation: str = "last",
                 max_steps: int = 12, max_iterations: int = 64, logprob_prior: bool = True,
                 stop_on_verified: bool = True, rollout_max_tokens: int | None = None) -> None:
        if iterations is not None and iterations < 1:
            raise UserError(f"mcts needs iterations >= 1, got {iterations}")
        if expand_k < 1 or max_steps < 1 or max_iterations < 1:
            raise UserError("mcts needs expand_k, max_steps and max_iterations >= 1")
        if evaluation not in EVALUATIONS:
            raise UserError(f"unknown mcts evaluation {evaluation!r}; choose one of {', '.join(EVALUATIONS)}")
        if not 0.0 <= rollout_weight <= 1.0:
            raise UserError(f"mcts rollout_weight must be in [0, 1], got {rollout_weight}")
        if c_puct < 0:
            raise UserError(f"mcts c_puct must be >= 0, got {c_puct}")
        self.iterations = iterations
        self.expand_k = expand_k
        self.c_puct = c_puct
        self.evaluation = evaluation
        self.rollout_weight = rollout_weight
        self.aggregation = check_aggregation(aggregation)
        self.max_steps = max_steps
        self.max_iterations = max_iterations
        self.logprob_prior = logprob_prior
        self.stop_on_verified = stop_on_verified
        self.rollout_max_tokens = rollout_max_tokens

    # ------------------------------------------------------------ phases
    def puct(self, tree: SearchTree, parent: int, child: int) -> float:
        """The PUCT score of ``child`` under ``parent``."""
        c = tree[child]
        q = c["value"] / c["visits"] if c["visits"] else 0.0
        n_parent = max(tree[parent]["visits"], 1)
        return q + self.c_puct * c.get("prior", 1.0) * math.sqrt(n_parent) / (1 + c["visits"])

    def select(self, tree: SearchTree) -> int:
        """Descend from the root by PUCT to an unexpanded or finished node."""
        node = 0
        while True:
            kids = tree.children(node)
            if not kids or self._finished(tree, node):
                return node
            node = max(kids, key=lambda k: (self.puct(tree, node, k), -k))

    @staticmethod
    def backpropagate(tree: SearchTree, node: int, value: float) -> None:
        """Add one visit and ``value`` to ``node`` and each ancestor."""
        cur: int | None = node
        while cur is not None:
            attrs = tree[cur]
            visits, total = attrs["visits"] + 1, attrs["value"] + value
            if cur == 0:
                attrs.update(visits=visits, value=total)
            else:
                # Traced so a reader sees the visit counts and Q that PUCT used.
                tree.scored(cur, visits=visits, value=total, q=total / visits)
            cur = attrs["parent"]

    def _set_priors(self, tree: SearchTree, kids: list[int]) -> None:
        lps = [tree[k].get("logprob") for k in kids]
        if self.logprob_prior and all(lp is not None for lp in lps):
            priors = softmax([float(lp) for lp in lps])  # type: ignore[arg-type]
        else:
            priors = [1.0 / len(kids)] * len(kids)
        for k, p in zip(kids, priors, strict=True):
            tree.scored(k, prior=p)

    @staticmethod
    def _finished(tree: SearchTree, node: int) -> bool:
        attrs = tree[node]
        return bool(attrs["terminal"] or attrs.get("capped"))

    async def _outcome(self, problem: Problem, ctx: RunContext, text: str, state: dict[str, Any],
                       candidate: Candidate) -> float:
        """Score a complete solution: verifier, else PRM over its steps."""
        stats = state["stats"]
        if ctx.verifier is not None:
            verdict = await verify(problem, ctx, text, stats)
            candidate.score = verdict.score
            candidate.data["passed"] = verdict.passed
            if verdict.passed:
                state["verified"].append(candidate)
            return verdict.score
        scores = await ctx.prm.score_steps(problem, split_steps(text, ctx.step_delimiter), ctx)  # type: ignore[union-attr]
        stats["prm_calls"] += 1
        candidate.score = aggregate(scores, ctx.prm.aggregation) if scores else 0.0  # type: ignore[union-attr]
        return candidate.score

    async def evaluate(self, problem: Problem, ctx: RunContext, tree: SearchTree, node: int,
                       state: dict[str, Any]) -> float:
        """The value of ``node`` (cached for finished nodes); raises SearchStop when the budget cannot pay for it."""
        attrs = tree[node]
        if attrs.get("eval") is not None:
            return attrs["eval"]
        prm_value = None
        if self.evaluation in ("prm", "both") or attrs["terminal"]:
            if not await score_nodes(problem, ctx, tree, [node], state["stats"], how=self.aggregation):
                raise SearchStop("the budget cannot pay to evaluate this node")
            prm_value = float(attrs["score"])
        outcome = None
        if attrs["terminal"]:
            cand = node_candidate(tree, node)
            state["terminals"].append(cand)
            if ctx.verifier is not None:
                outcome = await self._outcome(problem, ctx, cand.text, state, cand)
                tree.scored(node, passed=bool(cand.data.get("passed")), verdict_score=float(outcome))
            else:
                cand.score = state_score(attrs["step_scores"], ctx.prm.aggregation)  # type: ignore[union-attr]
                outcome = cand.score
        elif self.evaluation in ("rollout", "both"):
            cand = await complete(problem, ctx, tree, node, max_tokens=self.rollout_max_tokens)
            if cand is None:
                raise SearchStop("the budget cannot pay to evaluate this node")
            cand.data["rollout"] = True
            state["rollouts"].setdefault(node, []).append(cand)
            outcome = await self._outcome(problem, ctx, cand.text, state, cand)
        value = self._combine(prm_value, outcome)
        if self._finished(tree, node):
            tree.set(node, eval=value)
        return value

    def _combine(self, prm_value: float | None, outcome: float | None) -> float:
        if self.evaluation == "prm" or outcome is None:
            return prm_value if prm_value is not None else (outcome or 0.0)
        if self.evaluation == "rollout" or prm_value is None:
            return outcome
        return (1.0 - self.rollout_weight) * prm_value + self.rollout_weight * outcome

    # ------------------------------------------------------------ search
    async def search(self, problem: Problem, ctx: RunContext) -> SearchResult:
        require_prm(ctx, self.name)
        start = ctx.ledger.usage
        tree = SearchTree(ctx)
        stats: dict[str, Any] = {"iterations": 0, "expansions": 0, "prm_calls": 0, "verifier_calls": 0}
        state: dict[str, Any] = {"stats": stats, "verified": [], "terminals": [], "rollouts": {}}
        ctx.tracer.emit("strategy_start", strategy=self.name, params=self.params())
        limit = self.iterations or self.max_iterations
        stopped = "done"
        while stats["iterations"] < limit:
            leaf = self.select(tree)
            expanding = not self._finished(tree, leaf) and tree[leaf]["step"] < self.max_steps
            if expanding and not self._room_to_continue(problem, ctx, tree, leaf):
                stopped = "budget_exhausted"
                break
            try:
                node = leaf
                if expanding:
                    kids = await expand(problem, ctx, tree, leaf, self.expand_k, max_steps=self.max_steps,
                                        logprobs=self.logprob_prior)
                    stats["expansions"] += 1
                    self._set_priors(tree, kids)
                    node = max(kids, key=lambda k: (tree[k]["prior"], -k))
                elif not self._finished(tree, leaf):
                    tree.set(leaf, capped=True)
                tree.select(node, reason="simulate")
                value = await self.evaluate(problem, ctx, tree, node, state)
            except SearchStop:
                stopped = "budget_exhausted"
                break
            self.backpropagate(tree, node, value)
            stats["iterations"] += 1
            ctx.tracer.emit("search_round", round=stats["iterations"], alive=len(tree.graph) - 1,
                            best_score=value, node=node)
            if self.stop_on_verified and state["verified"]:
                stopped = "verified"
                break
        result = await self._finalize(problem, ctx, tree, state, stopped)
        stats["prefix_cache"] = prefix_cache_report(ctx, start)
        ctx.tracer.emit("strategy_end", strategy=self.name, answer=result.answer,
                        stopped_reason=result.stopped_reason, prefix_cache=stats["prefix_cache"])
        return result

    def _room_to_continue(self, problem: Problem, ctx: RunContext, tree: SearchTree, leaf: int) -> bool:
        """One expansion plus one completion must still fit, so the final
        path can be finished after the search."""
        expansion = step_request(problem, ctx, tree.steps(leaf), n=1)
        finish = completion_request(problem, ctx, tree, leaf, self.rollout_max_tokens)
        return can_afford(ctx, expansion, finish)

    def most_visited_path(self, tree: SearchTree) -> int:
        """The node reached by following the most-visited child from the root."""
        node = 0
        while True:
            kids = [k for k in tree.children(node) if tree[k]["visits"] > 0]
            if not kids:
                return node
            node = max(kids, key=lambda k: (tree[k]["visits"], tree[k]["value"] / tree[k]["visits"], -k))

    async def _finalize(self, problem: Problem, ctx: RunContext, tree: SearchTree,
                        state: dict[str, Any], stopped: str) -> SearchResult:
        stats = state["stats"]
        rollouts = [c for cands in state["rollouts"].values() for c in cands]
        candidates: list[Candidate] = [*state["terminals"], *rollouts]
        best: Candidate | None = None
        if state["verified"]:
            best = max(state["verified"], key=lambda c: c.score or 0.0)
            stats["final"] = "verified"
        else:
            node = self.most_visited_path(tree)
            stats["final"] = "most_visited"
            if node != 0 and tree[node]["terminal"]:
                best = next((c for c in state["terminals"] if c.node == node), None) or node_candidate(tree, node)
            elif node in state["rollouts"]:
                best = max(state["rollouts"][node], key=lambda c: c.score or 0.0)
            elif node != 0 or not candidates:
                best = await complete(problem, ctx, tree, node)
                if best is None:
                    stopped = "budget_exhausted"
                    best = node_candidate(tree, node) if node != 0 else None
                else:
                    best.score = tree[node]["score"]
                if best is not None:
                    candidates.append(best)
            if best is None and candidates:
                best = max(candidates, key=lambda c: c.score or 0.0)
        if best is not None and best.node is not None:
            tree.select(best.node, reason="final")
        for n in tree.graph.nodes:
            if n != 0 and tree[n]["score"] is None and tree[n].get("prior") is not None:
                # Never evaluated: its prior is the only number PUCT ranked it by.
                tree.scored(n, score=float(tree[n]["prior"]), score_source="prior")
        stats["root_visits"] = tree[0]["visits"]
        return SearchResult(
            answer=best.answer if best else None,
            text=best.text if best else "",
            score=best.score if best else None,
            candidates=candidates,
            tree=tree.graph,
            stopped_reason=stopped,
            stats=stats,
        )
