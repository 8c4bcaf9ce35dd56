"""Step-level beam search guided by a process reward model.

Keep ``beam_width`` (B) partial solutions. Each round, every live beam asks
the policy for ``expansions`` (M) next steps (one request with ``n=M`` and
the step delimiter as stop; the first round samples ``B x M`` steps from the
empty solution), the PRM scores every child (its step scores folded by the
PRM's aggregation, or ``aggregation``), and the best children fill the free
slots. A child is terminal when it states a final answer or the model ended
on its own (:func:`~testtime.search.base.is_terminal_step`), or at
``max_steps``; a terminal child that wins a slot completes that beam and the
next round has one live beam fewer. The search ends when every beam is
complete. The answer is the best-scored terminal solution (``select="prm"``)
or the answer with the largest summed score (``select="weighted"``).

Budget: with ``beam_width=None`` the width is derived from the budget --
``remaining / (M x cost per child x expected remaining steps)``, capped by
``max_width`` -- using a worst-case guess of a child's cost in round one and
the measured cost afterwards, and it shrinks (never grows) when the budget
falls behind. When the budget refuses a call the search stops; if no beam has
finished, the best partial solution is completed in one full-solution request
shortened to what still fits (budget forcing), and failing that the best
partial is returned, all with ``stopped_reason="budget_exhausted"``.

:meth:`BeamSearch.run_beam` is reused by DVTS for its subtrees.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

from testtime.budget import Usage
from testtime.context import RunContext
from testtime.errors import SearchStop, UserError
from testtime.models.base import Generation, GenerationRequest
from testtime.search.base import (
    Candidate,
    Problem,
    SearchResult,
    SearchStrategy,
    SearchTree,
    affordable_n,
    fit_request,
    is_terminal_step,
    join_steps,
    normalize_answer,
    split_steps,
    step_request,
    vote,
)
from testtime.search.stepwise import (
    affordable_count,
    complete,
    completion_request,
    diff_usage,
    prefix_cache_report,
    require_prm,
    scale_usage,
)
from testtime.verifiers.answer import extract_answer
from testtime.verifiers.base import aggregate

SELECTIONS = ("prm", "weighted")


@dataclass(slots=True, kw_only=True)
class Beam:
    """A partial (or complete) solution in the search."""

    node: int
    steps: list[str]
    score: float | None = None
    terminal: bool = False
    tokens: int = 0


@dataclass(slots=True, kw_only=True)
class BeamOutcome:
    """What one beam search (or one DVTS subtree) produced."""

    terminals: list[Beam] = field(default_factory=list)
    completed: list[Beam] = field(default_factory=list)
    active: list[Beam] = field(default_factory=list)
    stopped: str = "done"
    rounds: int = 0
    width: int = 0
    forced: Beam | None = None


def _rank_key(b: Beam) -> float:
    return -1.0 if b.score is None else b.score


def pick_final(beams: list[Beam], select: str, delimiter: str) -> tuple[Beam | None, dict[str, float]]:
    """The chosen terminal beam: highest score, or highest summed score per answer."""
    if not beams:
        return None, {}
    if select == "weighted":
        cands = [Candidate(text="", answer=extract_answer(join_steps(b.steps, delimiter)),
                           score=b.score or 0.0) for b in beams]
        winner, tally = vote(cands, weighted=True)
        if winner is not None:
            group = [b for b, c in zip(beams, cands, strict=True) if normalize_answer(c.answer) == winner]
            return max(group, key=_rank_key), tally
    return max(beams, key=_rank_key), {}


class BeamSearch(SearchStrategy):
    """Step-level beam search with a PRM.

    Args:
        beam_width: live beams B; None derives it from the budget.
        expansions: next steps sampled per beam per round (M).
        max_steps: depth limit (a child at this depth is terminal).
        expected_steps: guess of solution depth used to derive the width.
        max_width: cap on the derived width.
        select: final pick, ``"prm"`` (best score) or ``"weighted"``.
        aggregation: PRM aggregation override (min/last/product/mean).
        force_finish: complete the best partial when the budget ends first.
        adapt_expansions: sample fewer than M next steps (down to 1, unscored)
            when the budget left cannot pay M per step for the expected depth.
    """

    name = "beam"
    needs_prm = True

    def __init__(self, beam_width: int | None = None, *, expansions: int = 4, max_steps: int = 24,
                 expected_steps: int = 6, max_width: int = 16, select: str = "prm",
                 aggregation: str | None = None, force_finish: bool = True,
                 adapt_expansions: bool = True) -> None:
        if beam_width is not None and beam_width < 1:
            raise UserError(f"beam needs beam_width >= 1, got {beam_width}")
        if expansions < 1 or max_steps < 1 or expected_steps < 1 or max_width < 1:
            raise UserError("beam needs expansions, max_steps, expected_steps and max_width >= 1")
        if select not in SELECTIONS:
            raise UserError(f"beam select must be one of {', '.join(SELECTIONS)}, got {select!r}")
        self.beam_width = beam_width
        self.expansions = expansions
        self.max_steps = max_steps
        self.expected_steps = expected_steps
        self.max_width = max_width
        self.select = select
        self.aggregation = aggregation
        self.force_finish = force_finish
        self.adapt_expansions = adapt_expansions

    async def search(self, problem: Problem, ctx: RunContext) -> SearchResult:
        require_prm(ctx, self.name)
        ctx.tracer.emit("strategy_start", strategy=self.name, params=self.params())
        before = ctx.ledger.usage
        tree = SearchTree(ctx)
        outcome = await self.run_beam(problem, ctx, tree, width=self.beam_width)
        result = self.result_from(outcome, tree, ctx)
        result.stats["prefix_cache"] = prefix_cache_report(ctx, before)
        ctx.tracer.emit("strategy_end", strategy=self.name, answer=result.answer,
                        stopped_reason=result.stopped_reason, prefix_cache=result.stats["prefix_cache"])
        return result

    # ------------------------------------------------------------ the search
    def child_cost_guess(self, problem: Problem, ctx: RunContext, steps: list[str]) -> Usage:
        """Worst-case cost of one child (its share of a step call + PRM scoring)."""
        req = step_request(problem, ctx, steps, n=self.expansions)
        worst = ctx.model.worst_case(req)
        # The PRM reads about what the policy was sent; guess it costs half.
        return scale_usage(worst, (1.0 / self.expansions) * 1.5)

    def derive_width(self, per_child: Usage, ctx: RunContext, depth: int, expected: int) -> int:
        left = max(expected - depth, 1)
        units = affordable_count(ctx, scale_usage(per_child, self.expansions * left))
        if units == math.inf:
            return self.max_width
        return max(1, min(self.max_width, int(units)))

    async def run_beam(self, problem: Problem, ctx: RunContext, tree: SearchTree, *,
                       width: int | None, root: int = 0, tag: dict | None = None) -> BeamOutcome:
        """Run one beam search from ``root`` under ``ctx.ledger``.

        Args:
            width: fixed width, or None to derive it from the budget.
            tag: extra attributes stored on every node (DVTS marks subtrees).
        """
        adaptive = width is None
        per_child = self.child_cost_guess(problem, ctx, [])
        expected = self.expected_steps
        if width is None:
            width = self.derive_width(per_child, ctx, 0, expected)
        out = BeamOutcome(width=width)
        active = [Beam(node=root, steps=[])]
        slots = width
        for depth in range(self.max_steps):
            if not active or slots <= 0:
                break
            if adaptive and depth > 0:
                slots = min(slots, self.derive_width(per_child, ctx, depth, expected))
                active = active[:slots]
            m = self._expansions_now(per_child, ctx, depth, expected, slots)
            plan = self._plan_round(problem, ctx, active, m * slots if depth == 0 else m)
            if not plan:
                out.stopped = "budget_exhausted"
                break
            shrunk = (m < self.expansions or len(plan) < len(active)
                      or any(r.n < m for _, r in plan))
            if shrunk:
                out.stopped = "budget_exhausted"
            refused = False  # a call of *this* round was refused
            active = [b for b, _ in plan]
            out.rounds += 1
            before = ctx.ledger.usage
            replies = await asyncio.gather(*(self._expand(ctx, req) for _, req in plan))
            children: list[Beam] = []
            for parent, reply in zip(active, replies, strict=True):
                if isinstance(reply, SearchStop):
                    out.stopped = "budget_exhausted"
                    refused = True
                    continue
                children.extend(self._children(parent, reply, depth))
            if shrunk and len(children) <= slots:
                # Nothing to choose between and little budget left: keep the
                # parent's score instead of paying the PRM.
                for c in children:
                    c.score = next((b.score for b in active if b.node == c.node), None)
            else:
                scored = await asyncio.gather(*(self._score(problem, ctx, c) for c in children))
                if not all(scored):
                    out.stopped = "budget_exhausted"
                    refused = True
            for c in children:
                c.node = tree.add(c.node, c.steps[-1], score=c.score, tokens=c.tokens,
                                  terminal=c.terminal, **(tag or {}))
                if c.terminal:
                    out.terminals.append(c)
            if children:
                spent = diff_usage(ctx.ledger.usage, before)
                per_child = scale_usage(spent, 1.0 / len(children))
            if any(c.terminal for c in children):
                expected = max(depth + 1, 1)
            ranked = sorted(children, key=_rank_key, reverse=True)
            chosen = ranked[:slots]
            for c in ranked[slots:]:
                tree.prune(c.node, "beam")
            done = [c for c in chosen if c.terminal]
            out.completed.extend(done)
            active = [c for c in chosen if not c.terminal]
            slots -= len(done)
            for c in active:
                tree.select(c.node, "beam")
            ctx.tracer.emit("search_round", round=depth + 1, alive=len(active),
                            best_score=ranked[0].score if ranked else None)
            # A planned shrink keeps going on what is left; an unplanned
            # refusal this round means the budget is really gone.
            if refused and not shrunk:
                break
        out.active = active
        if not out.terminals and active and self.force_finish:
            out.forced = await self._force_finish(problem, ctx, tree, active[0], tag)
            out.stopped = "budget_exhausted" if out.stopped == "done" and out.forced is None else out.stopped
        return out

    def _expansions_now(self, per_child: Usage, ctx: RunContext, depth: int, expected: int,
                        slots: int) -> int:
        """Expansions per beam this round: M, or fewer when the budget left
        cannot pay M children per beam for the expected remaining depth."""
        if not self.adapt_expansions:
            return self.expansions
        left = max(expected - depth, 1)
        units = affordable_count(ctx, scale_usage(per_child, left * max(slots, 1)))
        if units == math.inf:
            return self.expansions
        return max(1, min(self.expansions, int(units)))

    def _plan_round(self, problem: Problem, ctx: RunContext, active: list[Beam],
                    n: int) -> list[tuple[Beam, GenerationRequest]]:
        """This round's step requests, degraded to what the budget can pay.

        Drop the weakest beams first, then sample fewer next steps for the
        best one, then ask for a shortened step; empty when nothing fits.
        """
        plan = [(b, step_request(problem, ctx, b.steps, n=n)) for b in active]
        while plan:
            total = Usage()
            for _, req in plan:
                total = total + ctx.model.worst_case(req)
            if ctx.ledger.can_afford(total):
                return plan
            if len(plan) == 1:
                break
            plan.pop()
        if not plan:
            return []
        beam, req = plan[0]
        k = affordable_n(ctx, req, cap=req.n)
        if k >= 1:
            return [(beam, req.with_(n=k))]
        short = fit_request(ctx, req.with_(n=1))
        return [(beam, short)] if short is not None else []

    async def _expand(self, ctx: RunContext, request: GenerationRequest) -> list[Generation] | SearchStop:
        try:
            return await ctx.generate(request)
        except SearchStop as exc:
            return exc

    def _children(self, parent: Beam, gens: list[Generation], depth: int) -> list[Beam]:
        seen: set[str] = set()
        kids = []
        for g in gens:
            text = g.text.strip()
            if not text or text in seen:
                continue
            seen.add(text)
            terminal = is_terminal_step(g, text) or depth + 1 >= self.max_steps
            # ``node`` holds the parent until the child is added to the tree.
            kids.append(Beam(node=parent.node, steps=[*parent.steps, text], terminal=terminal,
                             tokens=g.usage.output_tokens))
        return kids

    async def _score(self, problem: Problem, ctx: RunContext, beam: Beam) -> bool:
        prm = ctx.prm
        if prm is None:
            return False
        try:
            scores = await prm.score_steps(problem, beam.steps, ctx)
        except SearchStop:
            return False
        beam.score = aggregate(scores, self.aggregation or prm.aggregation)
        return True

    async def _force_finish(self, problem: Problem, ctx: RunContext, tree: SearchTree, beam: Beam,
                            tag: dict | None) -> Beam | None:
        """Complete ``beam`` in one full-solution request shortened to fit
        (:func:`~testtime.search.stepwise.complete`)."""
        done = await complete(problem, ctx, tree, beam.node)
        if done is None:
            return None
        # Only the generated continuation becomes new steps: re-splitting the
        # whole text would misalign when a kept step holds the delimiter.
        prefix = completion_request(problem, ctx, tree, beam.node).prefix
        continuation = done.text[len(prefix):] if done.text.startswith(prefix) else done.text
        rest = split_steps(continuation, ctx.step_delimiter)
        if not rest:
            return None
        tokens = done.tokens - sum(tree[n]["tokens"] for n in tree.path(beam.node))
        forced = Beam(node=beam.node, steps=[*beam.steps, *rest], score=beam.score, terminal=True,
                      tokens=tokens)
        forced.node = tree.add(beam.node, ctx.step_delimiter.join(rest), score=beam.score,
                               tokens=tokens, terminal=True, forced=True, **(tag or {}))
        return forced

    # ----------------------------------------------------------------- result
    def result_from(self, outcome: BeamOutcome, tree: SearchTree, ctx: RunContext) -> SearchResult:
        """Turn an outcome into a SearchResult (final pick among terminals)."""
        delim = ctx.step_delimiter
        pool = list(outcome.terminals) or ([outcome.forced] if outcome.forced else [])
        chosen, tally = pick_final(pool, self.select, delim)
        stopped = outcome.stopped
        if chosen is None and outcome.active:
            chosen = max(outcome.active, key=_rank_key)
            stopped = "budget_exhausted"
        if chosen is None:
            return SearchResult(answer=None, text="", tree=tree.graph, stopped_reason="budget_exhausted",
                                stats={"rounds": outcome.rounds, "width": outcome.width})
        tree.select(chosen.node, "final")
        text = join_steps(chosen.steps, delim)
        cands = [Candidate(text=join_steps(b.steps, delim), answer=extract_answer(join_steps(b.steps, delim)),
                           score=b.score, tokens=b.tokens, node=b.node)
                 for b in sorted(pool, key=_rank_key, reverse=True)]
        return SearchResult(
            answer=extract_answer(text) if chosen.terminal else None, text=text, score=chosen.score,
            candidates=cands, tree=tree.graph, stopped_reason=stopped,
            stats={"rounds": outcome.rounds, "width": outcome.width, "terminals": len(outcome.terminals),
                   "forced": outcome.forced is not None, "tally": tally},
        )
