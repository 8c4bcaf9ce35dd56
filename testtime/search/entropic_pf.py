"""``entropic_pf``: particle filtering that resists premature exploitation.

After "Mitigating Premature Exploitation in Particle-based Monte Carlo for
Inference-Time Scaling". PRMs are overconfident early in a solution, so plain
PF resamples the whole population onto the few particles the PRM happened to
like at step one or two (particle impoverishment). Two fixes on top of
:class:`~testtime.search.particle_filter.ParticleFilter`:

1. **Entropic Annealing.** Before resampling, compute the normalised entropy
   H(w) / log N of the weights. When it is below the step's threshold, raise
   the softmax temperature -- the smallest temperature in
   [temperature, max_temperature] found by bisection -- until the entropy
   reaches the threshold again (or max_temperature is hit). The threshold
   follows a schedule that is stricter early in the trajectory::

       threshold(t) = base + (1 - base) * early_boost * decay ** t

   With the defaults (base 0.5, early_boost 0.6, decay 0.5) that is 0.80 at
   step 0, 0.65 at step 1, 0.575 at step 2, tending to 0.5: early weights,
   where the PRM is least trustworthy, are flattened the most.
2. **Look-ahead Modulation** (default, ``lookahead_mode="successor"``). A
   state is judged by its potential: before resampling, every unfinished
   particle samples a short successor step (``lookahead_tokens``) from its
   current state; the PRM scores the path extended by it, and the particle's
   weight becomes ``(1 - alpha) * score(state) + alpha * score(successor)``.
   The successor is information from *beyond* the current state. It is
   discarded after weighting (a short, possibly cut step is not a state to
   continue from); the kept particles sample their next steps afresh. The
   k particles on one node get their k successors from one ``n=k`` request
   (the prefix is shared, so a prefix cache computes it once), and the PRM
   scores each distinct successor once. Look-ahead generation is billed
   under role ``"lookahead"``, its PRM calls under ``"verify"``, and the
   budget-derived population is sized for it. When every particle holds the
   same state, resampling cannot change anything, so no successor is drawn.

   ``lookahead_mode="two_step_average"`` is a cheap variant that is **not**
   the paper's method: a particle's current node is weighted by the average
   of its parent's and its own PRM score, and resampling of the parent state
   is deferred by one round (the first round does not resample). It costs
   nothing beyond plain PF, but it sees nothing beyond the current state --
   it is PF with two-step score smoothing. Kept for ablations; the old name
   ``"reuse"`` is accepted for it (and ``"probe"`` for ``"successor"``).

The annealing is exposed as pure functions (:func:`entropy_threshold`,
:func:`anneal_temperature`, :func:`annealed_weights`, :func:`modulate`) so it
can be checked on constructed weights.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import Any

from testtime.context import RunContext
from testtime.errors import SearchStop, UserError
from testtime.search.base import Problem, SearchTree
from testtime.search.particle_filter import ParticleFilter
from testtime.search.particles import normalized_entropy, softmax, transform_score
from testtime.search.stepwise import expand_groups, score_steps, trajectory_cost

#: How look-ahead is done (see the module docstring): ``"successor"`` is the
#: paper's Look-ahead Modulation; ``"two_step_average"`` is not.
LOOKAHEAD_MODES = ("successor", "two_step_average")
#: Older names of the modes.
LOOKAHEAD_ALIASES = {"probe": "successor", "reuse": "two_step_average"}


def entropy_threshold(step: int, *, base: float = 0.5, early_boost: float = 0.6,
                      decay: float = 0.5) -> float:
    """The normalised-entropy threshold at trajectory step ``step`` (0-based).

    ``base + (1 - base) * early_boost * decay ** step``: highest at the first
    step and decaying geometrically to ``base``.
    """
    if not 0.0 <= base <= 1.0:
        raise UserError(f"entropy threshold base must be in [0, 1], got {base}")
    return min(1.0, base + (1.0 - base) * early_boost * decay ** max(step, 0))


def anneal_temperature(values: Sequence[float], temperature: float, threshold: float, *,
                       max_temperature: float = 50.0, iters: int = 40) -> float:
    """The smallest temperature >= ``temperature`` whose softmax weights reach
    normalised entropy ``threshold``.

    The entropy of softmax(values / T) grows monotonically with T, so a
    bisection (in log-temperature) finds it. Returns ``temperature`` when the
    weights are already diverse enough and ``max_temperature`` when even that
    does not restore the threshold.
    """
    if normalized_entropy(softmax(values, temperature)) >= threshold:
        return temperature
    if max_temperature <= temperature or normalized_entropy(softmax(values, max_temperature)) < threshold:
        return max(max_temperature, temperature)
    lo, hi = temperature, max_temperature
    for _ in range(iters):
        mid = (lo * hi) ** 0.5
        if normalized_entropy(softmax(values, mid)) >= threshold:
            hi = mid
        else:
            lo = mid
    return hi


def annealed_weights(values: Sequence[float], temperature: float, threshold: float, *,
                     max_temperature: float = 50.0) -> tuple[list[float], float, bool]:
    """Resampling weights with entropic annealing.

    Returns ``(weights, temperature_used, annealed)``; ``annealed`` is True
    when the entropy at ``temperature`` was below ``threshold`` and the
    temperature was raised.
    """
    weights = softmax(values, temperature)
    if normalized_entropy(weights) >= threshold:
        return weights, temperature, False
    t = anneal_temperature(values, temperature, threshold, max_temperature=max_temperature)
    return softmax(values, t), t, True


def modulate(score: float, lookahead_score: float | None, alpha: float) -> float:
    """Blend a state's PRM score with its look-ahead successor's score."""
    if lookahead_score is None:
        return score
    return (1.0 - alpha) * score + alpha * lookahead_score


class EntropicParticleFilter(ParticleFilter):
    """Particle filtering with Entropic Annealing and Look-ahead Modulation.

    Takes every :class:`ParticleFilter` argument, plus:

    Args:
        entropy_base: the threshold the schedule decays to.
        early_boost: how much stricter the threshold is at step 0 (fraction
            of the gap between ``entropy_base`` and 1).
        decay: geometric decay of the boost per step.
        max_temperature: upper bound of the temperature search.
        anneal: turn Entropic Annealing off with False (ablations).
        lookahead: turn Look-ahead Modulation off with False (ablations).
        lookahead_mode: ``"successor"`` (Look-ahead Modulation: a short
            successor per particle, PRM-scored, then discarded) or
            ``"two_step_average"`` (cheap smoothing, not the paper's method).
        lookahead_tokens: max tokens of a look-ahead successor (None:
            ctx.step_max_tokens // 2, at least 8).
        alpha: weight of the look-ahead score in [0, 1].
    """

    name = "entropic_pf"

    def __init__(self, n_particles: int | None = None, *, entropy_base: float = 0.5,
                 early_boost: float = 0.6, decay: float = 0.5, max_temperature: float = 50.0,
                 anneal: bool = True, lookahead: bool = True, lookahead_mode: str = "successor",
                 lookahead_tokens: int | None = None, alpha: float = 0.5, **kwargs: Any) -> None:
        super().__init__(n_particles, **kwargs)
        lookahead_mode = LOOKAHEAD_ALIASES.get(lookahead_mode, lookahead_mode)
        if not 0.0 <= alpha <= 1.0:
            raise UserError(f"entropic_pf alpha must be in [0, 1], got {alpha}")
        if not 0.0 <= entropy_base <= 1.0:
            raise UserError(f"entropic_pf entropy_base must be in [0, 1], got {entropy_base}")
        if lookahead_mode not in LOOKAHEAD_MODES:
            raise UserError(f"unknown entropic_pf lookahead_mode {lookahead_mode!r}; choose one of "
                            f"{', '.join(LOOKAHEAD_MODES)}")
        if lookahead_tokens is not None and lookahead_tokens < 1:
            raise UserError(f"entropic_pf lookahead_tokens must be >= 1, got {lookahead_tokens}")
        self.entropy_base = entropy_base
        self.early_boost = early_boost
        self.decay = decay
        self.max_temperature = max_temperature
        self.anneal = anneal
        self.lookahead = lookahead
        self.lookahead_mode = lookahead_mode
        self.lookahead_tokens = lookahead_tokens
        self.alpha = alpha

    def _lookahead_tokens(self, ctx: RunContext) -> int:
        return self.lookahead_tokens or max(8, ctx.step_max_tokens // 2)

    @property
    def _probing(self) -> bool:
        return self.lookahead and self.lookahead_mode == "successor"

    @property
    def _reusing(self) -> bool:
        return self.lookahead and self.lookahead_mode == "two_step_average"

    def _extra_tokens_per_step(self, ctx: RunContext) -> int:
        # Two-step averaging generates nothing extra: nothing to size for.
        return self._lookahead_tokens(ctx) if self._probing else 0

    def _repeat_cost_factor(self, problem: Problem, ctx: RunContext, n_prev: int) -> float:
        if not self._probing or n_prev >= 2:
            return 1.0
        # A lone particle ran without look-ahead; the next population will not.
        steps = self.expected_steps or self.default_expected_steps(ctx)
        plain = trajectory_cost(problem, ctx, steps).tokens
        probed = trajectory_cost(problem, ctx, steps, extra_tokens_per_step=self._lookahead_tokens(ctx)).tokens
        return probed / max(plain, 1)

    def _resample_now(self, tree: SearchTree, slots: list[int], rnd: int) -> bool:
        if not self._reusing:
            return True
        # Every particle still judges the root (the state all share): its
        # successors are its look-aheads, nothing to choose between yet.
        return any(tree[n]["parent"] not in (None, 0) for n in slots if n != 0)

    def _judged_step(self, rnd: int) -> int:
        """0-based step of the states judged in round ``rnd`` (the schedule's t).

        Reusing look-ahead delays each state's resampling by one round (round
        0 is skipped), so round r judges the step-r states: t = r - 1.
        """
        return max(rnd - 1, 0) if self._reusing else rnd

    def _weights(self, scores: list[float], rnd: int, stats: dict[str, Any]) -> list[float]:
        values = [transform_score(s, self.transform) for s in scores]
        if not self.anneal:
            return softmax(values, self.temperature)
        step = self._judged_step(rnd)
        stats["anneal_checks"] = stats.get("anneal_checks", 0) + 1
        threshold = entropy_threshold(step, base=self.entropy_base, early_boost=self.early_boost,
                                      decay=self.decay)
        weights, temp, annealed = annealed_weights(values, self.temperature, threshold,
                                                   max_temperature=self.max_temperature)
        if annealed:
            before = normalized_entropy(softmax(values, self.temperature))
            stats["anneal_triggers"] = stats.get("anneal_triggers", 0) + 1
            stats.setdefault("annealed", []).append(
                {"round": rnd, "step": step, "threshold": round(threshold, 4), "entropy_before": round(before, 4),
                 "entropy_after": round(normalized_entropy(weights), 4), "temperature": round(temp, 4)})
        return weights

    async def _modulate(self, problem: Problem, ctx: RunContext, tree: SearchTree,
                        slots: list[int], scores: list[float], stats: dict[str, Any]) -> list[float]:
        if not self.lookahead:
            return scores
        if self._reusing:
            return self._modulate_reused(tree, slots, scores, stats)
        return await self._modulate_successor(problem, ctx, tree, slots, scores, stats)

    def _modulate_reused(self, tree: SearchTree, slots: list[int], scores: list[float],
                         stats: dict[str, Any]) -> list[float]:
        """Weight each slot's *state* (the parent of its newest step) by that
        step, its look-ahead successor: (1 - alpha) * score(state) + alpha *
        score(successor). The successor is the node the particle holds, so
        resampling keeps exactly the step that was scored."""
        out = []
        for sc, node in zip(scores, slots, strict=True):
            parent = tree[node]["parent"] if node != 0 else None
            if parent in (None, 0):
                # The root has no PRM score: the successor alone speaks for it.
                out.append(sc)
                continue
            value = modulate(self._score(tree, parent), sc, self.alpha)
            if tree[node].get("lookahead_of") is None:
                # Recorded once per step: the state it was drawn from scored it.
                tree.set(node, lookahead_of=parent, state_score=self._score(tree, parent),
                         modulated_score=value)
                stats["lookaheads"] = stats.get("lookaheads", 0) + 1
            out.append(value)
        return out

    async def _modulate_successor(self, problem: Problem, ctx: RunContext, tree: SearchTree,
                                  slots: list[int], scores: list[float],
                                  stats: dict[str, Any]) -> list[float]:
        """Look-ahead Modulation: one short successor per unfinished particle,
        PRM-scored, modulating that particle's weight; then discarded."""
        if len(set(slots)) < 2:
            # One distinct state: resampling keeps it whatever the weights.
            return scores
        groups = Counter(n for n in slots if n != 0 and not self._finished(tree, n))
        if not groups:
            return scores
        # A refusal here only means some particles go unmodulated; the next
        # round's step calls will stop the search if the budget is gone.
        gens_of, _, _ = await expand_groups(problem, ctx, tree, dict(groups),
                                            max_tokens=self._lookahead_tokens(ctx), role="lookahead")
        stats["lookahead_requests"] = stats.get("lookahead_requests", 0) + len(gens_of)
        texts = {node: [g.text.strip("\n") for g in gens] for node, gens in gens_of.items()}
        wanted = list(dict.fromkeys((node, t) for node, ts in texts.items() for t in ts if t.strip()))
        probe: dict[tuple[int, str], float] = {}

        async def one(node: int, text: str) -> None:
            try:
                s = await score_steps(problem, ctx, [*tree.steps(node), text], stats)
            except SearchStop:
                return
            probe[(node, text)] = s[-1]

        await asyncio.gather(*(one(node, text) for node, text in wanted))
        queues = {node: list(ts) for node, ts in texts.items()}
        out = []
        for sc, node in zip(scores, slots, strict=True):
            pending = queues.get(node)
            la = probe.get((node, pending.pop(0))) if pending else None
            if la is not None:
                stats["lookaheads"] = stats.get("lookaheads", 0) + 1
            out.append(modulate(sc, la, self.alpha))
        for node in groups:
            got = [probe[(node, t)] for t in dict.fromkeys(texts.get(node, [])) if (node, t) in probe]
            if got:
                tree.set(node, lookahead_score=sum(got) / len(got))
        return out
