"""The Python entry points: ``await testtime.arun(...)`` and ``testtime.run(...)``."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from testtime.budget import Budget, BudgetLedger
from testtime.context import RunContext, final_stopped_reason, spend_report
from testtime.errors import UserError
from testtime.models.base import Model
from testtime.models.prices import require_prices
from testtime.models.registry import load_model
from testtime.search.base import Candidate, Problem, SearchStrategy
from testtime.search.registry import make_strategy
from testtime.trace.events import TraceEvent, Tracer
from testtime.trace.jsonl import JsonlWriter

#: Used when the caller gives no budget: enough for a handful of samples.
DEFAULT_BUDGET = "tokens=4000"


@dataclass(slots=True, kw_only=True)
class Result:
    """The outcome of a run.

    Attributes:
        answer: the extracted final answer (None if none was found).
        text: the full text of the chosen solution.
        strategy / model: what ran.
        usage: tokens, calls, USD and seconds actually spent, with ``by_role``.
        budget: the limits the run was held to.
        stopped_reason: ``done``, ``verified``, ``budget_exhausted``,
            ``budget_overdrawn`` (a backend billed more than was reserved; see
            ``usage["overdrawn"]``) or ``errors`` (calls failed after their
            retries; ``usage["errors"]`` counts them).
        candidates: every candidate considered, with scores.
        tree: the search tree (networkx DiGraph), possibly empty.
        run_id: identifies the run in traces and checkpoints.
    """

    answer: str | None
    text: str
    strategy: str
    model: str
    usage: dict[str, Any]
    budget: dict[str, float]
    stopped_reason: str
    candidates: list[Candidate] = field(default_factory=list)
    score: float | None = None
    tree: nx.DiGraph = field(default_factory=nx.DiGraph)
    run_id: str = ""
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the tree is summarised by its size)."""
        return {
            "answer": self.answer,
            "text": self.text,
            "score": self.score,
            "strategy": self.strategy,
            "model": self.model,
            "usage": self.usage,
            "budget": self.budget,
            "stopped_reason": self.stopped_reason,
            "candidates": [c.to_dict() for c in self.candidates],
            "tree_nodes": self.tree.number_of_nodes(),
            "run_id": self.run_id,
            "stats": _jsonable(self.stats),
        }


def usage_report(ledger: BudgetLedger, stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``usage`` block of a result: totals, seconds, by role, errors and any overdraw."""
    u = ledger.usage
    report: dict[str, Any] = u.to_dict()
    report["seconds"] = round(ledger.elapsed(), 3)
    report["by_role"] = {role: ru.to_dict() for role, ru in ledger.usage_by_role().items()}
    if stats is not None:
        report.update(spend_report(ledger, stats))
    return report


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return repr(x)


def build_context(
    *,
    model: str | Model = "local",
    base_url: str | None = None,
    budget: str | Budget | None = None,
    seed: int | None = None,
    verifier: Any = None,
    prm: Any = None,
    tracer: Tracer | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    step_delimiter: str | None = None,
    model_options: dict[str, Any] | None = None,
) -> RunContext:
    """Resolve specs into a ready :class:`RunContext` (used by run and the CLI)."""
    if isinstance(budget, Budget):
        limits = budget
    else:
        limits = Budget.parse(DEFAULT_BUDGET if budget is None else budget)
    opts = dict(model_options or {})
    if base_url:
        opts["base_url"] = base_url
    # A usd limit needs a price for every API model: refuse before loading (no probe, no call).
    require_prices([model], limits, options=opts)
    policy = load_model(model, **opts)
    ctx = RunContext(
        model=policy,
        ledger=BudgetLedger(limits),
        tracer=tracer or Tracer(),
        rng=random.Random(seed),
        seed=seed,
    )
    if verifier is not None:
        ctx.verifier = _load_verifier(verifier, ctx)
    if prm is not None:
        ctx.prm = _load_prm(prm, ctx)
    if max_tokens is not None:
        if max_tokens < 1:
            raise UserError(f"max_tokens must be >= 1, got {max_tokens}")
        ctx.max_tokens = max_tokens
    if temperature is not None:
        ctx.temperature = temperature
    if step_delimiter is not None:
        ctx.step_delimiter = step_delimiter.encode().decode("unicode_escape")
    require_prices([policy, ctx.verifier, ctx.prm], limits)  # and the judges' models, once loaded
    return ctx


def _load_verifier(spec: Any, ctx: RunContext) -> Any:
    if not isinstance(spec, str):
        return spec
    from testtime.verifiers.registry import load_verifier

    return load_verifier(spec, ctx=ctx)


def _load_prm(spec: Any, ctx: RunContext) -> Any:
    if not isinstance(spec, str):
        return spec
    from testtime.verifiers.registry import load_prm

    return load_prm(spec, ctx=ctx)


async def arun(
    question: str | Problem,
    *,
    model: str | Model = "local",
    strategy: str | SearchStrategy = "self_consistency",
    budget: str | Budget | None = None,
    n: int | None = None,
    seed: int | None = None,
    base_url: str | None = None,
    verifier: Any = None,
    prm: Any = None,
    trace: str | None = None,
    on_event: Callable[[TraceEvent], None] | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    strategy_options: dict[str, Any] | None = None,
    context: RunContext | None = None,
) -> Result:
    """Answer ``question`` with ``strategy`` on ``model`` within ``budget``.

    Args:
        question: the question text, or a :class:`Problem`.
        model: a spec (``local``, ``openai:gpt-4o-mini``, ``sim``...) or a Model.
        strategy: a strategy name or instance.
        budget: limits, e.g. ``"tokens=20k,usd=0.5"`` (default ``tokens=4000``).
        n: sample count for sampling strategies (default: from the budget).
        seed: makes sampling and search reproducible where the backend allows.
        base_url: for OpenAI-compatible servers.
        verifier / prm: specs or instances.
        trace: path of a JSONL trace file to write.
        on_event: callback for every trace event (live views use it).
        strategy_options: extra keyword arguments for the strategy.
        context: a prebuilt RunContext (overrides model/budget/seed/...).

    Returns:
        A :class:`Result`; when the budget runs out it holds the best answer
        found so far and ``stopped_reason == "budget_exhausted"``.
    """
    problem = question if isinstance(question, Problem) else Problem(question=question)
    if not problem.question.strip():
        raise UserError("the question is empty")
    tracer = context.tracer if context is not None else Tracer()
    writer = JsonlWriter(trace) if trace else None
    if writer is not None:
        tracer.add_sink(writer)
    if on_event is not None:
        tracer.add_sink(on_event)
    ctx = context or build_context(model=model, base_url=base_url, budget=budget, seed=seed,
                                   verifier=verifier, prm=prm, tracer=tracer,
                                   max_tokens=max_tokens, temperature=temperature)
    options = dict(strategy_options or {})
    if n is not None:
        options["n"] = n
    strat = make_strategy(strategy, **options)
    if strat.needs_prm and ctx.prm is None:
        raise UserError(f"strategy {strat.name!r} needs a process reward model: pass --prm SPEC")
    tracer.emit("run_start", question=problem.question[:500], strategy=strat.name,
                model=ctx.model.spec, budget=ctx.ledger.budget.to_dict(), seed=seed)
    t0 = time.monotonic()
    try:
        return await _search(problem, strat, ctx, tracer, writer, seed, t0)
    finally:
        if context is None and isinstance(model, str):
            # The model this call loaded from a spec: close its HTTP pools on
            # this loop rather than at garbage collection on a closed one.
            await ctx.model.aclose()


async def _search(problem: Problem, strat: SearchStrategy, ctx: RunContext, tracer: Tracer,
                  writer: JsonlWriter | None, seed: int | None, t0: float) -> Result:
    try:
        found = await strat.search(problem, ctx)
    except BaseException as exc:
        tracer.emit("run_end", answer=None, stopped_reason="error",
                    error=f"{type(exc).__name__}: {exc}", usage=usage_report(ctx.ledger, ctx.stats))
        if writer is not None:
            writer.close()
        raise
    stopped = final_stopped_reason(found.stopped_reason, ctx.ledger, ctx.stats)
    last_error = ctx.stats.get("last_error")
    if last_error is not None and not ctx.stats.get("calls_ok") and found.answer is None:
        # Not one call succeeded: there is nothing to return but the error.
        tracer.emit("run_end", answer=None, stopped_reason="error", error=f"{type(last_error).__name__}: "
                    f"{last_error}", usage=usage_report(ctx.ledger, ctx.stats))
        if writer is not None:
            writer.close()
        raise last_error
    result = Result(
        answer=found.answer,
        text=found.text,
        score=found.score,
        strategy=strat.name,
        model=ctx.model.spec,
        usage=usage_report(ctx.ledger, ctx.stats),
        budget=ctx.ledger.budget.to_dict(),
        stopped_reason=stopped,
        candidates=found.candidates,
        tree=found.tree,
        run_id=tracer.run_id,
        stats={**found.stats, "wall_s": round(time.monotonic() - t0, 3)},
    )
    tracer.emit("run_end", answer=result.answer, stopped_reason=result.stopped_reason,
                usage=result.usage)
    if writer is not None:
        writer.close()
    return result


def run(question: str | Problem, **kwargs: Any) -> Result:
    """Synchronous :func:`arun` (for scripts and notebooks without a loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(arun(question, **kwargs))
    raise UserError("testtime.run() was called inside a running event loop; use `await testtime.arun(...)`")
