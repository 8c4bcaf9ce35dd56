"""The LangGraph nodes of a stage: solve, verify, refine, end (+ routing).

A stage ``S`` compiles to the nodes ``S.solve -> S.verify -> S.refine ->
S.verify ... -> S.end``. Every node gets the :class:`WorkflowRuntime` through
LangGraph's runtime context, does one unit of work (one strategy run, one
verification, one refinement call) and returns a state update, so the
checkpointer saves after each round. Fan-out of samples happens inside the
solve node (the strategy), never as graph branches.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from langgraph.runtime import Runtime

from testtime.budget import _INT_DIMS, DIMENSIONS, Usage
from testtime.context import RunContext
from testtime.errors import SearchStop, UserError
from testtime.orchestrator import template
from testtime.orchestrator.definition import END, Stage
from testtime.orchestrator.state import DONE, PENDING, RUNNING, SKIPPED, WorkflowRuntime, WorkflowState
from testtime.search.base import Problem, fit_request, solution_request
from testtime.search.registry import make_strategy
from testtime.thinking import ThinkingPolicy, with_thinking
from testtime.verifiers.answer import extract_answer

Node = Callable[[WorkflowState, Runtime[WorkflowRuntime]], Awaitable[dict[str, Any]]]

#: Characters of a stage's text kept in trace events (the state keeps all).
_TRACE_TEXT = 400


# ------------------------------------------------------------------ budget
def carve_limits(rt: WorkflowRuntime, stage: Stage, stages: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The budget a stage gets when it starts (the rollover rule).

    ``available`` is what the global ledger has left minus what stages that are
    still running were promised and have not used; the stage gets
    ``available * share / (share + shares of the stages not started yet)``.
    Budget a finished stage did not use is therefore re-divided among the
    stages after it, and the last stage gets everything left.
    """
    root = rt.root.ledger
    wf = rt.workflow
    pending = [s for s in wf.stages.values()
               if s.name != stage.name and stages.get(s.name, {}).get("status", PENDING) == PENDING]
    fraction = stage.share / (stage.share + sum(s.share for s in pending))
    running = [ctx.ledger for name, ctx in rt.stage_ctx.items() if name != stage.name]
    limits: dict[str, float] = {}
    for dim in DIMENSIONS:
        room = root.remaining(dim)
        if room == float("inf"):
            continue
        committed = 0.0
        if dim != "seconds":  # parallel stages share wall time; they do not split it
            for led in running:
                lim = led.budget.limits().get(dim)
                if lim is not None:
                    committed += max(lim - led.spent(dim) - led.reserved(dim), 0.0)
        value = max(room - committed, 0.0) * fraction
        limits[dim] = int(value) if dim in _INT_DIMS else value
    return limits


def budget_left(rt: WorkflowRuntime) -> float:
    """Fraction of the global budget left on its tightest dimension."""
    return max(0.0, 1.0 - rt.root.ledger.fraction_used())


# ----------------------------------------------------------------- context
def stage_context(rt: WorkflowRuntime, stage: Stage, record: dict[str, Any]) -> RunContext:
    """The stage's RunContext: created at stage start, rebuilt on resume."""
    ctx = rt.stage_ctx.get(stage.name)
    if ctx is not None:
        return ctx
    root = rt.root
    ledger = rt.stage_ledger(stage.name, record.get("budget"))
    model = rt.workflow.resolve_model(stage.model, rt)
    policy = rt.workflow.stage_thinking(stage)
    if policy is not None:
        # Every generation of the stage (strategy, refinement) thinks under the
        # stage's policy, the way `run --thinking-budget` wraps the run's model.
        model = with_thinking(model, policy)
    ctx = root.derive(
        model=model,
        ledger=ledger,
        tracer=root.tracer.for_stage(stage.name),
        models=dict(rt.models),
        verifier=None,
        prm=None,
        max_tokens=stage.max_tokens or root.max_tokens,
        temperature=root.temperature if stage.temperature is None else stage.temperature,
        system_prompt=stage.system if stage.system is not None else root.system_prompt,
        in_flight=0,
        journal=rt.journal.for_stage(stage.name, ledger.elapsed) if rt.journal is not None else None,
        call_scope=stage.name,
    )
    verifier = rt.workflow.resolve_verifier(stage.verifier, rt, ctx)
    if stage.search_verifier:
        ctx.verifier = verifier
    if stage.prm is not None:
        ctx.prm = rt.workflow.resolve_prm(stage.prm, rt, ctx)
    rt.verifiers[stage.name] = verifier
    rt.stage_ctx[stage.name] = ctx
    return ctx


def stage_problem(stage: Stage, state: WorkflowState) -> Problem:
    """The stage's prompt and metadata, rendered from inputs and earlier stages."""
    inputs = state.get("inputs", {})
    stages = state.get("stages", {})
    question = template.render(stage.prompt, inputs, stages)
    meta = {k: template.render(v, inputs, stages) if isinstance(v, str) else v
            for k, v in stage.meta.items()}
    answer = meta.pop("answer", None)
    return Problem(question=question, answer=None if answer is None else str(answer),
                   id=f"{stage.name}", meta=meta)


def _node_ctx(rt: WorkflowRuntime, ctx: RunContext, stage: Stage, step: str, round_: int) -> RunContext:
    # The journal scope names the node, so a call's key is the same in every
    # process that runs this node (a resumed run replays it by that key).
    scope = f"{stage.name}/{step}/{round_}"
    rt.enter_node(stage.name, scope, ctx.ledger)
    return ctx.derive(rng=rt.node_rng(stage.name, step, round_), call_scope=scope)


def _answer(stage: Stage, text: str, answer: str | None) -> str | None:
    if stage.answer_from == "text":
        return text or None
    return answer if answer is not None else extract_answer(text)


# ------------------------------------------------------------------- nodes
def make_solve(stage: Stage) -> Node:
    """Start the stage (carve its budget) and run its search strategy once."""

    async def solve(state: WorkflowState, runtime: Runtime[WorkflowRuntime]) -> dict[str, Any]:
        rt = runtime.context
        record = dict(state.get("stages", {}).get(stage.name, {}))
        update: dict[str, Any] = {}
        if record.get("status") != RUNNING:
            # A stage an earlier process started (and died in) keeps the budget
            # it was carved then, so its re-run sees the same limits.
            limits = rt.journal.stage_limits(stage.name) if rt.journal is not None else None
            if limits is None:
                limits = carve_limits(rt, stage, state.get("stages", {}))
                if rt.journal is not None:
                    rt.journal.record_stage_limits(stage.name, limits)
            record["budget"] = limits
            update.update(status=RUNNING, budget=limits, round=0, started=time.time())
        ctx = stage_context(rt, stage, record)
        if "status" in update:
            policy = getattr(ctx.model, "policy", None)
            ctx.tracer.emit("stage_start", stage=stage.name, model=ctx.model.spec,
                            strategy=_strategy_name(stage), share=stage.share,
                            budget=record["budget"], after=list(stage.after),
                            verifier=_verifier_name(rt.verifiers.get(stage.name)),
                            **({"thinking": policy.to_dict()} if isinstance(policy, ThinkingPolicy) else {}))
        problem = stage_problem(stage, state)
        strategy = make_strategy(stage.strategy, **dict(stage.strategy_options))
        if strategy.needs_prm and ctx.prm is None:
            raise UserError(f"stage {stage.name!r}: strategy {strategy.name!r} needs a PRM (set `prm:`)")
        try:
            found = await strategy.search(problem, _node_ctx(rt, ctx, stage, "solve", 0))
            text, answer, score, stopped = found.text, found.answer, found.score, found.stopped_reason
            n_cands = len(found.candidates)
        except SearchStop:
            text, answer, score, stopped, n_cands = "", None, None, "budget_exhausted", 0
        update.update(text=text, answer=_answer(stage, text, answer), score=score,
                      stopped_reason=stopped, candidates=n_cands, passed=None)
        return {"stages": {stage.name: update}}

    return solve


def make_verify(stage: Stage) -> Node:
    """Judge the stage's current text with its verifier."""

    async def verify(state: WorkflowState, runtime: Runtime[WorkflowRuntime]) -> dict[str, Any]:
        rt = runtime.context
        record = state["stages"][stage.name]
        ctx = stage_context(rt, stage, record)
        verifier = rt.verifiers.get(stage.name)
        round_ = int(record.get("round", 0))
        if verifier is None or not record.get("text"):
            return {"stages": {stage.name: {"passed": False if verifier else None}}}
        problem = stage_problem(stage, state)
        try:
            verdict = await verifier.verify(problem, record["text"], _node_ctx(rt, ctx, stage, "verify", round_))
        except SearchStop:
            return {"stages": {stage.name: {"passed": False, "stopped_reason": "budget_exhausted",
                                            "refused": True}}}
        ctx.tracer.emit("verify_round", verifier=_verifier_name(verifier), score=verdict.score,
                        passed=verdict.passed, detail=verdict.detail[:300], round=round_)
        history = list(record.get("history", [])) + [
            {"round": round_, "score": verdict.score, "passed": verdict.passed}]
        return {"stages": {stage.name: {"score": verdict.score, "passed": verdict.passed,
                                        "feedback": verdict.detail, "history": history}}}

    return verify


def after_verify(stage: Stage) -> Callable[[WorkflowState], str]:
    """Loop control: refine again, or end the stage."""

    def decide(state: WorkflowState) -> str:
        rec = state["stages"][stage.name]
        if rec.get("passed") or rec.get("refused") or not rec.get("text"):
            return f"{stage.name}.end"
        if int(rec.get("round", 0)) + 1 >= stage.max_rounds:
            return f"{stage.name}.end"
        return f"{stage.name}.refine"

    return decide


def make_refine(stage: Stage) -> Node:
    """Revise the current text using the verifier's feedback (one call)."""

    async def refine(state: WorkflowState, runtime: Runtime[WorkflowRuntime]) -> dict[str, Any]:
        rt = runtime.context
        record = state["stages"][stage.name]
        ctx = stage_context(rt, stage, record)
        round_ = int(record.get("round", 0)) + 1
        problem = stage_problem(stage, state)
        prompt = stage.refine_prompt.format(question=problem.question, previous=record.get("text", ""),
                                            feedback=record.get("feedback") or "(no detail)")
        node_ctx = _node_ctx(rt, ctx, stage, "refine", round_)
        ctx.tracer.emit("refine", round=round_, feedback=str(record.get("feedback", ""))[:300])
        request = fit_request(node_ctx, solution_request(Problem(question=prompt, id=problem.id,
                                                                 meta=problem.meta), node_ctx))
        if request is None:
            return {"stages": {stage.name: {"refused": True, "stopped_reason": "budget_exhausted"}}}
        try:
            gens = await node_ctx.generate(request, role="solve")
        except SearchStop:
            return {"stages": {stage.name: {"refused": True, "stopped_reason": "budget_exhausted"}}}
        text = gens[0].text
        return {"stages": {stage.name: {"round": round_, "text": text, "answer": _answer(stage, text, None),
                                        "passed": None, "score": None}}}

    return refine


def after_refine(stage: Stage) -> Callable[[WorkflowState], str]:
    def decide(state: WorkflowState) -> str:
        rec = state["stages"][stage.name]
        return f"{stage.name}.end" if rec.get("refused") else f"{stage.name}.verify"

    return decide


def make_end(stage: Stage) -> Node:
    """Close the stage: record its usage, pick the route, release its ledger."""

    async def end(state: WorkflowState, runtime: Runtime[WorkflowRuntime]) -> dict[str, Any]:
        rt = runtime.context
        record = state["stages"][stage.name]
        ctx = stage_context(rt, stage, record)
        # Spend of an earlier process that no replay accounted for (calls in
        # flight at a crash, at their worst case; calls not made again).
        unreplayed = rt.settle_journal(stage.name, ctx.ledger)
        if unreplayed:
            total = sum(unreplayed.values(), Usage())
            ctx.tracer.emit("note", message=f"stage {stage.name!r}: charged journaled spend of an earlier "
                            "process that was not replayed", usage=total.to_dict(),
                            by_role={r: u.to_dict() for r, u in unreplayed.items()})
        usage = ctx.ledger.usage
        by_role = {r: u.to_dict() for r, u in ctx.ledger.usage_by_role().items()}
        update: dict[str, Any] = {stage.name: {"status": DONE, "usage": usage.to_dict(), "by_role": by_role}}
        route = rt.workflow.routes.get(stage.name)
        target = None
        if route is not None:
            target = route.choose(record, budget_left(rt))
            update[stage.name]["route"] = target
            for other in route.targets():
                if other not in (target, END):
                    update[other] = {"status": SKIPPED}
            ctx.tracer.emit("route", stage=stage.name, target=target)
        stopped = record.get("stopped_reason") or "done"
        if record.get("passed"):
            stopped = "verified" if stopped == "done" else stopped
        update[stage.name]["stopped_reason"] = stopped
        ctx.tracer.emit("stage_end", stage=stage.name, answer=record.get("answer"),
                        text=str(record.get("text", ""))[:_TRACE_TEXT], score=record.get("score"),
                        passed=record.get("passed"), rounds=int(record.get("round", 0)) + 1,
                        stopped_reason=stopped, usage=usage.to_dict(), by_role=by_role,
                        budget=record.get("budget"), route=target)
        rt.stage_ctx.pop(stage.name, None)
        return {"stages": update}

    return end


def route_from(stage: Stage) -> Callable[[WorkflowState], str]:
    """Conditional edge after ``S.end``: follow the target the end node chose."""

    def follow(state: WorkflowState) -> str:
        return state["stages"][stage.name].get("route") or END

    return follow


def _strategy_name(stage: Stage) -> str:
    s = stage.strategy
    return s if isinstance(s, str) else getattr(s, "name", type(s).__name__)


def _verifier_name(v: Any) -> str | None:
    if v is None:
        return None
    return getattr(v, "spec", None) or getattr(v, "name", None) or type(v).__name__
