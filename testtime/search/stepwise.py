"""Building blocks for step-level search with a PRM (MCTS, A*, particle filters).

Every helper spends through ``ctx.generate`` / ``ctx.prm`` / ``ctx.verifier``
and reports budget refusals instead of hiding them, so strategies stay
anytime: they stop expanding and return the best they have.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

from testtime.budget import Usage
from testtime.context import RunContext
from testtime.errors import SearchStop, UserError
from testtime.models.base import Generation, GenerationRequest
from testtime.search.base import (
    SPEND_DIMENSIONS,
    Candidate,
    Problem,
    SearchTree,
    fit_request,
    is_terminal_step,
    solution_request,
    step_request,
)
from testtime.verifiers.answer import extract_answer
from testtime.verifiers.base import AGGREGATIONS, Verdict, aggregate

#: How a node's step scores fold into one state score. "last" is the PRM's
#: estimate for the current state (what Puri et al. call model aggregation).
SCORE_AGGREGATIONS = AGGREGATIONS


def require_prm(ctx: RunContext, strategy: str) -> None:
    """Raise a UserError naming the fix when a PRM-driven strategy has no PRM."""
    if ctx.prm is None:
        raise UserError(f"strategy {strategy!r} needs a process reward model: pass --prm SPEC "
                        "(or set ctx.prm)")


def check_aggregation(how: str) -> str:
    if how not in SCORE_AGGREGATIONS:
        raise UserError(f"unknown score aggregation {how!r}; choose one of {', '.join(SCORE_AGGREGATIONS)}")
    return how


def can_afford(ctx: RunContext, *requests: GenerationRequest) -> bool:
    """True when the worst cases of all ``requests`` fit together right now."""
    total = Usage()
    for r in requests:
        total = total + ctx.model.worst_case(r)
    return ctx.ledger.can_afford(total)


async def run_waves(ctx: RunContext, requests: Sequence[GenerationRequest], *,
                    role: str = "solve") -> tuple[list[list[Generation] | None], bool]:
    """Send ``requests`` concurrently in waves that fit the budget.

    Sending everything at once would reserve every worst case together and
    get refusals even when settled usage would leave room, so each wave takes
    the longest prefix of the pending requests whose worst cases fit now.
    Returns one result per request (None where refused) and whether any
    request was refused.
    """
    results: list[list[Generation] | None] = [None] * len(requests)
    pending = list(range(len(requests)))
    refused = False
    while pending:
        wave: list[int] = []
        total = Usage()
        for i in pending:
            nxt = total + ctx.model.worst_case(requests[i])
            if not ctx.ledger.can_afford(nxt):
                break
            total = nxt
            wave.append(i)
        if not wave:
            return results, True

        async def one(i: int) -> tuple[int, list[Generation] | None]:
            try:
                return i, await ctx.generate(requests[i], role=role)
            except SearchStop:
                return i, None

        for i, gens in await asyncio.gather(*(one(i) for i in wave)):
            results[i] = gens
            refused = refused or gens is None
        pending = pending[len(wave):]
        if refused:
            # Someone else took the room (shared ledger): stop here.
            return results, True
    return results, refused


def add_step_nodes(tree: SearchTree, parent: int, gens: Sequence[Generation], *,
                   max_steps: int | None = None, dedupe: bool = False) -> list[int]:
    """Add one child per generated step; a step at ``max_steps`` is capped.

    With ``dedupe`` a step whose text repeats an earlier one of ``gens`` gets
    that child's id again instead of a new node (the returned list stays
    aligned with ``gens``): identical states are scored and expanded once.
    """
    out = []
    seen: dict[str, int] = {}
    for g in gens:
        text = g.text.strip("\n")
        if dedupe and text in seen:
            out.append(seen[text])
            continue
        terminal = is_terminal_step(g, text)
        node = tree.add(parent, text, tokens=g.usage.output_tokens, terminal=terminal,
                        finish_reason=g.finish_reason, logprob=g.mean_logprob())
        if not terminal and max_steps is not None and tree[node]["step"] >= max_steps:
            tree.set(node, capped=True)
        seen[text] = node
        out.append(node)
    return out


async def expand_groups(problem: Problem, ctx: RunContext, tree: SearchTree, groups: dict[int, int], *,
                        max_steps: int | None = None, max_tokens: int | None = None,
                        role: str = "solve", dedupe: bool = True,
                        requests: list[GenerationRequest] | None = None,
                        ) -> tuple[dict[int, list[Generation]], dict[int, list[int]], bool]:
    """Sample ``k`` next steps for each ``node: k`` of ``groups``: one request with ``n=k`` per node.

    The k particles (or children) that share a node share its prompt and
    prefix, so they go out together and a backend with a prefix cache
    (vLLM, SGLang, llama.cpp) computes that prefix once (ETS-style
    prefix-aware batching); at the root all N go out as one ``n=N``
    request. Requests are sent in waves that fit the budget (see
    :func:`run_waves`).

    Returns the generations and the child ids per node (aligned; with
    ``dedupe`` identical steps share a child), and whether a request was
    refused. With ``max_tokens`` the steps are short look-ahead probes and
    are not added to the tree (the ids map is empty). ``requests``, when the
    caller already built them (to check the round fits), are those of the
    nodes with ``k > 0`` in ``groups``' order.
    """
    nodes = [n for n, k in groups.items() if k > 0]
    if requests is None:
        requests = [step_request(problem, ctx, tree.steps(n), n=groups[n], max_tokens=max_tokens)
                    for n in nodes]
    elif len(requests) != len(nodes):
        raise ValueError(f"{len(requests)} requests for {len(nodes)} nodes")
    results, refused = await run_waves(ctx, requests, role=role)
    gens_of: dict[int, list[Generation]] = {}
    kids_of: dict[int, list[int]] = {}
    for n, gens in zip(nodes, results, strict=True):
        if not gens:
            continue
        gens_of[n] = list(gens)
        if max_tokens is None:
            kids_of[n] = add_step_nodes(tree, n, gens, max_steps=max_steps, dedupe=dedupe)
    return gens_of, kids_of, refused


async def expand(problem: Problem, ctx: RunContext, tree: SearchTree, node: int, k: int, *,
                 max_steps: int | None = None, logprobs: bool = False) -> list[int]:
    """Sample up to ``k`` next steps after ``node`` in one call.

    ``k`` shrinks to what the budget affords; raises BudgetExhausted when not
    even one step fits.
    """
    request = step_request(problem, ctx, tree.steps(node), n=k, logprobs=logprobs)
    while k > 1 and not can_afford(ctx, request):
        k -= 1
        request = request.with_(n=k)
    gens = await ctx.generate(request)
    return add_step_nodes(tree, node, gens, max_steps=max_steps)


def state_score(scores: Sequence[float], how: str = "last") -> float:
    """Fold a path's step scores into one score for the current state."""
    return aggregate(list(scores), how) if scores else 0.0


async def score_nodes(problem: Problem, ctx: RunContext, tree: SearchTree, nodes: Sequence[int],
                      stats: dict[str, Any], *, how: str = "last") -> bool:
    """PRM-score each node's path concurrently; sets ``score`` and ``step_scores``.

    Nodes already scored are skipped. Returns False when a PRM call was
    refused by the budget (those nodes stay unscored).
    """
    todo = list(dict.fromkeys(n for n in nodes if tree[n].get("step_scores") is None))

    async def one(n: int) -> bool:
        try:
            scores = await ctx.prm.score_steps(problem, tree.steps(n), ctx)  # type: ignore[union-attr]
        except SearchStop:
            return False
        stats["prm_calls"] = stats.get("prm_calls", 0) + 1
        tree.scored(n, score=state_score(scores, how), step_scores=[float(s) for s in scores])
        return True

    ok = await asyncio.gather(*(one(n) for n in todo))
    return all(ok)


async def score_steps(problem: Problem, ctx: RunContext, steps: Sequence[str],
                      stats: dict[str, Any]) -> list[float]:
    """One PRM call (counted in ``stats["prm_calls"]``); may raise BudgetExhausted."""
    scores = await ctx.prm.score_steps(problem, list(steps), ctx)  # type: ignore[union-attr]
    stats["prm_calls"] = stats.get("prm_calls", 0) + 1
    return [float(s) for s in scores]


async def verify(problem: Problem, ctx: RunContext, text: str, stats: dict[str, Any]) -> Verdict:
    """One verifier call (counted in ``stats["verifier_calls"]``); may raise BudgetExhausted."""
    verdict = await ctx.verifier.verify(problem, text, ctx)  # type: ignore[union-attr]
    stats["verifier_calls"] = stats.get("verifier_calls", 0) + 1
    return verdict


def path_tokens(tree: SearchTree, node: int) -> int:
    return sum(tree[n]["tokens"] for n in tree.path(node))


def node_candidate(tree: SearchTree, node: int, *, score: float | None = None) -> Candidate:
    """The solution ending at ``node`` as a Candidate."""
    text = tree.path_text(node)
    return Candidate(text=text, answer=extract_answer(text),
                     score=tree[node].get("score") if score is None else score,
                     tokens=path_tokens(tree, node), node=node)


def completion_request(problem: Problem, ctx: RunContext, tree: SearchTree, node: int,
                       max_tokens: int | None = None) -> GenerationRequest:
    """A request for the rest of the solution after ``node``'s steps."""
    prefix = tree.path_text(node)
    if prefix:
        prefix += tree.delimiter
    return solution_request(problem, ctx, prefix=prefix, max_tokens=max_tokens)


async def complete(problem: Problem, ctx: RunContext, tree: SearchTree, node: int, *,
                   max_tokens: int | None = None, role: str = "solve") -> Candidate | None:
    """Finish the partial solution at ``node`` in one call (shortened to fit).

    Returns the completed candidate (``data["completed_from"] = node``; its
    text is :func:`completion_request`'s prefix + the generated rest) or
    None when the budget cannot pay for even a short completion.
    """
    request = fit_request(ctx, completion_request(problem, ctx, tree, node, max_tokens))
    if request is None:
        return None
    try:
        gens = await ctx.generate(request, role=role)
    except SearchStop:
        return None
    text = request.prefix + gens[0].text
    return Candidate(text=text, answer=extract_answer(text), tokens=path_tokens(tree, node)
                     + gens[0].usage.output_tokens, node=node, data={"completed_from": node})


def spend_snapshot(ctx: RunContext) -> dict[str, float]:
    """What the ledger has spent so far on each countable dimension."""
    return {dim: ctx.ledger.spent(dim) for dim in SPEND_DIMENSIONS}


def repeats_affordable(ctx: RunContext, before: dict[str, float], units: int, *,
                       cap: int, safety: float = 1.25) -> int:
    """How many more units (e.g. particles) the budget affords, judged by the
    real spend of the last ``units`` since ``before``, with a safety margin.

    Returns 0 when nothing is limited (an unlimited run does not repeat).
    """
    if units <= 0:
        return 0
    best = math.inf
    for dim in SPEND_DIMENSIONS:
        room = ctx.ledger.remaining(dim)
        per = (ctx.ledger.spent(dim) - before[dim]) / units
        if room != math.inf and per > 0:
            best = min(best, room / (per * safety))
    if math.isinf(best):
        return 0
    return max(0, min(cap, int(best)))


def trajectory_cost(problem: Problem, ctx: RunContext, steps: int, *,
                    extra_tokens_per_step: int = 0) -> Usage:
    """Worst-case cost of growing one partial solution by ``steps`` steps.

    Step-level search re-sends the prompt and the growing prefix with every
    step, so input grows with depth; the estimate assumes each step uses
    ``ctx.step_max_tokens``. ``extra_tokens_per_step`` adds one more call per
    step of that many output tokens on the same prefix (look-ahead probes).
    """
    total = Usage()
    filler = "x " * ctx.step_max_tokens
    for j in range(steps):
        request = step_request(problem, ctx, [filler] * j)
        total = total + ctx.model.worst_case(request)
        if extra_tokens_per_step:
            total = total + ctx.model.worst_case(request.with_(max_tokens=extra_tokens_per_step))
    return total


def scale_usage(u: Usage, factor: float) -> Usage:
    """``u`` multiplied by ``factor`` (rounded up on integer fields)."""
    return Usage(input_tokens=math.ceil(u.input_tokens * factor),
                 output_tokens=math.ceil(u.output_tokens * factor),
                 calls=math.ceil(u.calls * factor), usd=u.usd * factor)


def diff_usage(after: Usage, before: Usage) -> Usage:
    """What was spent between two ledger readings."""
    return Usage(input_tokens=after.input_tokens - before.input_tokens,
                 output_tokens=after.output_tokens - before.output_tokens,
                 cached_tokens=after.cached_tokens - before.cached_tokens,
                 calls=after.calls - before.calls, usd=after.usd - before.usd,
                 reasoning_tokens=after.reasoning_tokens - before.reasoning_tokens)


def prefix_cache_report(ctx: RunContext, before: Usage | None = None) -> dict[str, Any]:
    """Prompt tokens sent, how many the backend served from its prefix cache,
    and the tokens it actually computed (prompt not cached + output), since
    ``before`` (a ledger usage reading; None: the whole ledger).

    ``cached_ratio`` is None when the backend reported no cached tokens at
    all (many do not report them; a ratio of 0 would claim a cache miss).
    """
    used = ctx.ledger.usage if before is None else diff_usage(ctx.ledger.usage, before)
    ratio = (used.cached_tokens / used.input_tokens) if used.input_tokens and used.cached_tokens else None
    return {"prompt_tokens": used.input_tokens, "cached_prompt_tokens": used.cached_tokens,
            "cached_ratio": None if ratio is None else round(ratio, 4),
            "computed_tokens": used.input_tokens - used.cached_tokens + used.output_tokens}


def affordable_count(ctx: RunContext, cost: Usage) -> float:
    """How many times ``cost`` fits in what remains (inf if nothing limits it)."""
    units = math.inf
    for dim in SPEND_DIMENSIONS:
        need = cost.amount(dim)
        room = ctx.ledger.remaining(dim)
        if need > 0 and room != math.inf:
            units = min(units, room / need)
    return units
