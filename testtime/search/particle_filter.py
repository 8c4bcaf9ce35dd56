"""``particle_filter``: particle-based Monte Carlo over reasoning steps.

After Puri et al., "A Probabilistic Inference Approach to Inference-Time
Scaling of LLMs using Particle-Based Monte Carlo Methods". N particles
(partial solutions) advance one step at a time. Each new state is scored by
the PRM; a particle's weight is softmax(transform(score) / temperature) over
the population, and N particles are resampled from those weights, so the
population follows promising states without committing to the single best
one (beam search's failure mode under an imperfect PRM).

Finished particles (a final answer, or ``max_steps`` reached) take part in
resampling with their last weight but are never extended; the loop ends when
every slot holds a finished particle. The answer is the best-weighted
finished particle, or a score-weighted vote over all finished particles.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from testtime.context import RunContext
from testtime.errors import SearchStop, UserError
from testtime.search.base import (
    Candidate,
    Problem,
    SearchResult,
    SearchStrategy,
    SearchTree,
    normalize_answer,
    split_steps,
    step_request,
    vote,
)
from testtime.search.particles import (
    RESAMPLING,
    TRANSFORMS,
    normalized_entropy,
    resample,
    softmax,
    transform_score,
)
from testtime.search.stepwise import (
    add_step_nodes,
    affordable_count,
    can_afford,
    check_aggregation,
    complete,
    completion_request,
    expand_groups,
    node_candidate,
    prefix_cache_report,
    repeats_affordable,
    require_prm,
    run_waves,
    score_nodes,
    score_steps,
    spend_snapshot,
    state_score,
    trajectory_cost,
)

FINALS = ("best", "vote")


class ParticleFilter(SearchStrategy):
    """Particle filtering with a PRM (Puri et al.).

    Args:
        n_particles: population size; None derives it from the budget: the
            number of worst-case step calls the budget affords divided by
            ``expected_steps`` (clamped to [1, ``max_particles``];
            ``default_particles`` when the budget is unlimited).
        temperature: softmax temperature of the resampling weights.
        transform: ``"logit"`` (weights proportional to (s/(1-s))^(1/T)) or
            ``"raw"`` (softmax of the score itself).
        resampling: ``"multinomial"`` or ``"systematic"``.
        final: ``"best"`` (highest-scored finished particle) or ``"vote"``
            (PRM-score-weighted vote over finished particles).
        aggregation: how a path's step scores give its state score
            (``"last"``: the PRM's judgement of the newest step).
        max_steps: steps per trajectory before a particle counts as finished.
        max_particles: cap on the derived population.
        default_particles: population when the budget is unlimited.
        expected_steps: steps per trajectory assumed when deriving N (None:
            see :meth:`default_expected_steps`).
        max_populations: with a derived N, budget left after a population
            runs further independent populations (sized by what a particle
            actually cost), up to this many in all; finished particles of
            all populations compete for the answer.
        group_requests: send the k particles on one node as one ``n=k``
            request (default; all N at the root in one request), so the
            prefix is sent -- and, with a prefix cache, computed -- once.
            False sends one ``n=1`` request per particle (ablation).
    """

    name = "particle_filter"
    needs_prm = True

    def __init__(self, n_particles: int | None = None, *, temperature: float = 1.0,
                 transform: str = "logit", resampling: str = "multinomial", final: str = "best",
                 aggregation: str = "last", max_steps: int = 12, max_particles: int = 32,
                 default_particles: int = 8, expected_steps: int | None = None,
                 max_populations: int = 8, group_requests: bool = True) -> None:
        if n_particles is not None and n_particles < 1:
            raise UserError(f"{self.name} needs n_particles >= 1, got {n_particles}")
        if temperature <= 0:
            raise UserError(f"{self.name} needs temperature > 0, got {temperature}")
        if transform not in TRANSFORMS:
            raise UserError(f"unknown transform {transform!r}; choose one of {', '.join(TRANSFORMS)}")
        if resampling not in RESAMPLING:
            raise UserError(f"unknown resampling {resampling!r}; choose one of {', '.join(RESAMPLING)}")
        if final not in FINALS:
            raise UserError(f"unknown final selection {final!r}; choose one of {', '.join(FINALS)}")
        if max_steps < 1 or max_particles < 1 or default_particles < 1:
            raise UserError(f"{self.name} needs max_steps, max_particles and default_particles >= 1")
        self.n_particles = n_particles
        self.temperature = temperature
        self.transform = transform
        self.resampling = resampling
        self.final = final
        self.aggregation = check_aggregation(aggregation)
        self.max_steps = max_steps
        self.max_particles = max_particles
        self.default_particles = default_particles
        self.expected_steps = expected_steps
        self.max_populations = max(1, max_populations)
        self.group_requests = group_requests

    # ------------------------------------------------------------ sizing
    def _extra_tokens_per_step(self, ctx: RunContext) -> int:
        """Output tokens of any extra call per particle step (ePF look-ahead)."""
        return 0

    def default_expected_steps(self, ctx: RunContext) -> int:
        """Steps a trajectory may take: ``max_tokens`` in steps of
        ``step_max_tokens`` (at least 2, at most ``max_steps``). Sizing on
        the long case lets most populations finish; budget they leave runs
        further populations."""
        return max(2, min(self.max_steps, math.ceil(ctx.max_tokens / ctx.step_max_tokens)))

    def _repeat_cost_factor(self, problem: Problem, ctx: RunContext, n_prev: int) -> float:
        """How much more a particle of the next population may cost than one
        of the last (ePF: a lone particle skipped its look-ahead)."""
        return 1.0

    def particle_count(self, problem: Problem, ctx: RunContext) -> int:
        """N: given, or derived from what the remaining budget affords.

        The derived N is how many worst-case trajectories of
        ``expected_steps`` steps fit (each step re-sends the growing prefix,
        see :func:`~testtime.search.stepwise.trajectory_cost`), clamped to
        [1, ``max_particles``].
        """
        if self.n_particles is not None:
            return self.n_particles
        steps = self.expected_steps or self.default_expected_steps(ctx)
        cost = trajectory_cost(problem, ctx, steps, extra_tokens_per_step=self._extra_tokens_per_step(ctx))
        units = affordable_count(ctx, cost)
        if math.isinf(units):
            return min(self.default_particles, self.max_particles)
        return max(1, min(self.max_particles, int(units)))

    # ------------------------------------------------------------- hooks
    async def _modulate(self, problem: Problem, ctx: RunContext, tree: SearchTree,
                        slots: list[int], scores: list[float], stats: dict[str, Any]) -> list[float]:
        """Adjust scores before weighting (plain PF: unchanged)."""
        return scores

    def _weights(self, scores: list[float], rnd: int, stats: dict[str, Any]) -> list[float]:
        """Resampling weights: softmax(transform(score) / temperature)."""
        return softmax([transform_score(s, self.transform) for s in scores], self.temperature)

    def _resample_now(self, tree: SearchTree, slots: list[int], rnd: int) -> bool:
        """Whether this round resamples (plain PF: every round)."""
        return True

    # ------------------------------------------------------------ search
    def _finished(self, tree: SearchTree, node: int) -> bool:
        attrs = tree[node]
        return bool(attrs["terminal"] or attrs.get("capped"))

    @staticmethod
    def _score(tree: SearchTree, node: int) -> float:
        # An unscored node (PRM refused by the budget) inherits its parent's score.
        while node is not None:
            score = tree[node]["score"]
            if score is not None:
                return float(score)
            node = tree[node]["parent"]
        return 0.0

    async def search(self, problem: Problem, ctx: RunContext) -> SearchResult:
        require_prm(ctx, self.name)
        start = ctx.ledger.usage
        tree = SearchTree(ctx)
        n = self.particle_count(problem, ctx)
        stats: dict[str, Any] = {"n_particles": n, "populations": 0, "prm_calls": 0, "rounds": 0}
        ctx.tracer.emit("strategy_start", strategy=self.name, params={**self.params(), "n_particles": n})
        slots: list[int] = []
        stopped = "done"
        while n >= 1 and stats["populations"] < self.max_populations:
            before = spend_snapshot(ctx)
            stats["populations"] += 1
            slots, stopped = await self._population(problem, ctx, tree, n, stats)
            if stopped != "done" or self.n_particles is not None:
                break
            # The worst-case estimate behind N is loose (steps end early), so
            # the first population usually leaves budget. Spend it on further
            # independent populations sized by what a particle really cost.
            factor = self._repeat_cost_factor(problem, ctx, n)
            prev = n
            n = repeats_affordable(ctx, before, prev, cap=self.max_particles, safety=1.1 * factor)
            if n < 2 and factor > 1.0:
                # A lone particle runs without the extra per-step cost the
                # factor sizes for (ePF: no look-ahead): size it as measured.
                n = min(1, repeats_affordable(ctx, before, prev, cap=self.max_particles, safety=1.1))
            if n < 1:
                break
            stats["n_particles_total"] = stats.get("n_particles_total", stats["n_particles"]) + n
        result = await self._finalize(problem, ctx, tree, slots, stopped, stats)
        stats["prefix_cache"] = prefix_cache_report(ctx, start)
        ctx.tracer.emit("strategy_end", strategy=self.name, answer=result.answer,
                        stopped_reason=result.stopped_reason, prefix_cache=stats["prefix_cache"])
        return result

    async def _population(self, problem: Problem, ctx: RunContext, tree: SearchTree, n: int,
                          stats: dict[str, Any]) -> tuple[list[int], str]:
        """Run one population of ``n`` particles to the end; returns final slots."""
        slots = [0] * n
        for rnd in range(self.max_steps):
            active = [i for i, node in enumerate(slots) if not self._finished(tree, node)]
            if not active:
                break
            stats["rounds"] += 1
            # The k particles holding the same node share its prefix: one
            # request with n=k per distinct node (all N at the root), so a
            # prefix cache computes the prefix once and it is billed once.
            groups = Counter(slots[i] for i in active)
            if self.group_requests:
                requests = [step_request(problem, ctx, tree.steps(node), n=k) for node, k in groups.items()]
            else:
                requests = [step_request(problem, ctx, tree.steps(slots[i])) for i in active]
            if not self._room_for_round(problem, ctx, tree, slots, requests):
                # Keep what it takes to finish the best particle instead of
                # running out mid-round with nothing complete.
                return slots, "budget_exhausted"
            stats["step_requests"] = stats.get("step_requests", 0) + len(requests)
            fresh = []
            if self.group_requests:
                _, kids_of, refused = await expand_groups(problem, ctx, tree, dict(groups),
                                                          max_steps=self.max_steps, requests=requests)
                for i in active:
                    kids = kids_of.get(slots[i])
                    if kids:
                        slots[i] = kids.pop(0)
                        fresh.append(slots[i])
            else:  # one n=1 request per particle (ablation: what PF did before)
                results, refused = await run_waves(ctx, requests)
                for i, gens in zip(active, results, strict=True):
                    if gens:
                        slots[i] = add_step_nodes(tree, slots[i], gens, max_steps=self.max_steps)[0]
                        fresh.append(slots[i])
            scored = await score_nodes(problem, ctx, tree, fresh, stats, how=self.aggregation)
            if refused or not scored:
                return slots, "budget_exhausted"
            scores = [self._score(tree, node) for node in slots]
            scores = await self._modulate(problem, ctx, tree, slots, scores, stats)
            # A round may defer resampling (ePF with reused look-ahead: while
            # every particle still judges the shared root, there is nothing
            # to choose between); its weights are then uniform.
            resample_now = self._resample_now(tree, slots, rnd)
            weights = (self._weights(scores, rnd, stats) if resample_now
                       else [1.0 / len(slots)] * len(slots))
            self._trace_weights(tree, slots, scores, weights)
            alive = sum(not self._finished(tree, node) for node in slots)
            ctx.tracer.emit("search_round", round=rnd, alive=alive, best_score=max(scores),
                            entropy=round(normalized_entropy(weights), 6))
            if alive == 0:
                break
            if resample_now:
                slots = self._resample(ctx, tree, slots, weights)
        return slots, "done"

    @staticmethod
    def _trace_weights(tree: SearchTree, slots: list[int], scores: list[float],
                       weights: list[float]) -> None:
        """One ``node_scored`` per distinct particle node: the score that
        weighted it and its total normalised weight (summed over the
        particles holding it)."""
        total: dict[int, float] = {}
        score_of: dict[int, float] = {}
        for node, sc, w in zip(slots, scores, weights, strict=True):
            total[node] = total.get(node, 0.0) + w
            score_of.setdefault(node, sc)
        for node, w in total.items():
            if node != 0:
                tree.scored(node, score=float(score_of[node]), weight=round(w, 6))

    def _room_for_round(self, problem: Problem, ctx: RunContext, tree: SearchTree,
                        slots: list[int], requests: list[Any]) -> bool:
        """True when a whole round plus one completion of the best
        unfinished particle fits the remaining budget."""
        partial = [n for n in dict.fromkeys(slots) if not self._finished(tree, n)]
        best = max(partial, key=lambda n: self._score(tree, n)) if partial else 0
        return can_afford(ctx, *requests, completion_request(problem, ctx, tree, best))

    def _resample(self, ctx: RunContext, tree: SearchTree, slots: list[int],
                  weights: list[float]) -> list[int]:
        picks = resample(weights, len(slots), ctx.rng, self.resampling)
        new = [slots[j] for j in picks]
        kept = set(new)
        for node in dict.fromkeys(slots):
            if node in kept:
                tree.select(node, reason="resampled")
                tree.set(node, visits=tree[node]["visits"] + new.count(node))
            else:
                tree.prune(node, reason="resampled away")
        return new

    async def _score_text(self, problem: Problem, ctx: RunContext, text: str,
                          stats: dict[str, Any], default: float) -> float:
        """PRM state score of a completed text (``default`` if the budget refuses)."""
        try:
            scores = await score_steps(problem, ctx, split_steps(text, ctx.step_delimiter), stats)
        except SearchStop:
            return default
        return state_score(scores, self.aggregation) if scores else default

    async def _finalize(self, problem: Problem, ctx: RunContext, tree: SearchTree, slots: list[int],
                        stopped: str, stats: dict[str, Any]) -> SearchResult:
        finished = [node_candidate(tree, node, score=self._score(tree, node))
                    for node in tree.graph.nodes if node != 0 and tree[node]["terminal"]]
        if stopped != "done" or not finished:
            # The last population did not finish (budget) or none ever did:
            # complete its best unfinished particle -- the search kept room.
            partial = [node for node in dict.fromkeys(slots) if node != 0 and not tree[node]["terminal"]]
            if partial:
                node = max(partial, key=lambda nd: self._score(tree, nd))
                done = await complete(problem, ctx, tree, node)
                if done is None:
                    stopped = "budget_exhausted"
                    fallback = node_candidate(tree, node, score=self._score(tree, node))
                    if not finished:
                        finished.append(fallback)
                else:
                    done.score = await self._score_text(problem, ctx, done.text, stats,
                                                        self._score(tree, node))
                    finished.append(done)
        best: Candidate | None = None
        if finished and self.final == "vote":
            winner, tally = vote(finished, weighted=True)
            pool = [c for c in finished if normalize_answer(c.answer) == winner] or finished
            best = max(pool, key=lambda c: c.score or 0.0)
            stats["tally"] = tally
        elif finished:
            best = max(finished, key=lambda c: c.score or 0.0)
        if best is not None:
            tree.select(best.node if best.node is not None else 0, reason="final")
        stats["finished"] = sum(1 for c in finished if c.node is not None and tree[c.node]["terminal"])
        return SearchResult(
            answer=best.answer if best else None,
            text=best.text if best else "",
            score=best.score if best else None,
            candidates=finished,
            tree=tree.graph,
            stopped_reason=stopped,
            stats=stats,
        )
