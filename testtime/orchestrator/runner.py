"""Running a workflow: budget, models, checkpointer, resume, result.

:meth:`Workflow.arun` delegates here. A run streams the compiled graph with
``durability="sync"`` so each node's checkpoint is on disk before the next
node starts; with checkpoints on, every model call is also journaled ahead of
sending and when it ends, and a resumed run replays the calls an earlier
process completed (see :mod:`testtime.orchestrator.checkpoint`).
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from testtime.budget import Budget, BudgetLedger, Usage
from testtime.context import RunContext, final_stopped_reason
from testtime.errors import UserError
from testtime.models.base import Model
from testtime.models.prices import require_prices
from testtime.orchestrator import template
from testtime.orchestrator.checkpoint import CallJournal, default_checkpoint_path, open_checkpointer
from testtime.orchestrator.state import DONE, SKIPPED, WorkflowRuntime, new_record
from testtime.trace.events import TraceEvent, Tracer
from testtime.trace.jsonl import JsonlWriter

if TYPE_CHECKING:
    from testtime.orchestrator.workflow import Workflow, WorkflowResult


def checkpoint_path(checkpoint: str | Path | bool | None, resume: str | None) -> Path | None:
    """Resolve the ``checkpoint`` argument (resuming implies the default path)."""
    if checkpoint is None or checkpoint is False:
        return default_checkpoint_path() if resume else None
    if checkpoint is True:
        return default_checkpoint_path()
    return Path(checkpoint)


@asynccontextmanager
async def _maybe_saver(path: Path | None) -> AsyncIterator[Any]:
    if path is None:
        yield None
        return
    async with open_checkpointer(path) as saver:
        yield saver


async def read_checkpoint(wf: Workflow, run_id: str, path: str | Path | None = None) -> dict[str, Any]:
    """The checkpointed state of ``run_id`` (inputs, stages, run settings).

    Raises:
        UserError: no such run in the database, or the task definition changed.
    """
    p = Path(path) if path is not None else default_checkpoint_path()
    if not p.exists():
        raise UserError(f"cannot resume {run_id!r}: checkpoint database {p} does not exist "
                        f"(set TESTTIME_HOME to the folder used by the crashed run)")
    async with open_checkpointer(p) as saver:
        app = wf.compile(saver)
        snap = await app.aget_state({"configurable": {"thread_id": run_id}})
    values = dict(snap.values or {})
    if not values:
        raise UserError(f"no checkpointed run {run_id!r} in {p}")
    if values.get("task_hash") != wf.fingerprint():
        raise UserError(f"run {run_id!r} was checkpointed for a different definition of task "
                        f"{wf.name!r}; resume it with the task file it was started with")
    values["finished"] = not snap.next
    return values


def required_inputs(wf: Workflow, given: Mapping[str, Any]) -> dict[str, Any]:
    """Inputs with defaults applied; missing required ones raise UserError."""
    out = dict(given)
    if wf.inputs is not None:
        unknown = sorted(set(out) - set(wf.inputs))
        if unknown:
            raise UserError(f"unknown task input(s) {', '.join(unknown)}; this task takes: "
                            f"{', '.join(wf.inputs) or 'no inputs'}")
        for name, default in wf.inputs.items():
            if name not in out and default is not None:
                out[name] = default
    needed: set[str] = set()
    for s in wf.stages.values():
        texts = [s.prompt] + [v for v in s.meta.values() if isinstance(v, str)]
        for t in texts:
            needed |= {r.name for r in template.references(t) if r.kind == "inputs"}
    missing = sorted(needed - set(out))
    if missing:
        flags = " ".join(f"--input {m}=VALUE" for m in missing)
        raise UserError(f"task {wf.name!r} needs input(s) {', '.join(missing)}: pass {flags}")
    return out


def _budget(value: str | Budget | Mapping[str, float] | None) -> Budget:
    if isinstance(value, Budget):
        return value
    if isinstance(value, Mapping):
        return Budget(**value)
    return Budget.parse(value)


def build_runtime(wf: Workflow, *, budget: Budget, seed: int | None, model: str | Model | None,
                  base_url: str | None, tracer: Tracer, context: RunContext | None) -> WorkflowRuntime:
    """Load the models and make the root context for a run."""
    options = {"base_url": base_url} if base_url else {}
    placeholder = context.model if context is not None else None
    root = context or RunContext(model=placeholder, ledger=BudgetLedger(budget), tracer=tracer,  # type: ignore[arg-type]
                                 rng=random.Random(seed), seed=seed)
    rt = WorkflowRuntime(workflow=wf, root=root, model_override=model, model_options=options)
    # A usd limit needs a price for every API model the run can use: refuse before loading any.
    stage_specs = [s.model for s in wf.stages.values() if isinstance(s.model, str) and s.model not in wf.models]
    require_prices([model] if model is not None else [*wf.models.values(), wf.default_model, *stage_specs],
                   root.ledger, options=options)
    for key, spec in wf.models.items():
        if model is not None or isinstance(spec, str):
            rt.models[key] = rt.load(spec if isinstance(spec, (str, Model)) else spec["spec"])
        elif isinstance(spec, Mapping):  # {"spec": ..., **backend options}
            from testtime.models.registry import load_model

            opts = {k: v for k, v in spec.items() if k != "spec"}
            rt.models[key] = load_model(spec["spec"], **{**options, **opts})
        else:
            rt.models[key] = spec
    default = wf.default_model
    if model is not None:
        root.model = rt.load(model)
    elif isinstance(default, Model):
        root.model = default
    elif isinstance(default, str):
        root.model = rt.models[default] if default in rt.models else rt.load(default)
    elif context is None or context.model is None:
        root.model = next(iter(rt.models.values())) if rt.models else rt.load("local")
    return rt


async def execute(wf: Workflow, *, inputs: dict[str, Any], budget: Any, seed: int | None,
                  model: str | Model | None, base_url: str | None, trace: str | Path | None,
                  on_event: Callable[[TraceEvent], None] | None, tracer: Tracer | None,
                  checkpoint: str | Path | bool | None, run_id: str | None, resume: str | None,
                  context: RunContext | None) -> WorkflowResult:
    wf.validate()
    path = checkpoint_path(checkpoint, resume)
    stored: dict[str, Any] | None = None
    if resume:
        stored = await read_checkpoint(wf, resume, path)
        inputs = dict(stored.get("inputs", {}))
        run_info = stored.get("run", {})
        if budget is None:
            budget = run_info.get("budget")
        if seed is None:
            seed = run_info.get("seed")
    else:
        inputs = required_inputs(wf, inputs)
    if seed is None:
        seed = wf.seed
    limits = _budget(budget if budget is not None else (wf.budget or _default_budget()))
    if context is not None:  # a prebuilt context brings its own ledger and seed
        limits, seed = context.ledger.budget, context.seed
    tracer = tracer or (context.tracer if context is not None else None) or Tracer()
    rid = resume or run_id or (tracer.run_id if tracer.run_id else uuid.uuid4().hex[:12])
    tracer.run_id = rid
    added: list[Any] = []
    writer = JsonlWriter(trace, append=bool(resume)) if trace else None
    for sink in (writer, on_event):
        if sink is not None:
            tracer.add_sink(sink)
            added.append(sink)
    if context is not None:
        context.tracer = tracer
    rt = build_runtime(wf, budget=limits, seed=seed, model=model, base_url=base_url, tracer=tracer,
                       context=context)
    root = rt.root
    journal: CallJournal | None = None
    t0 = time.monotonic()
    try:
        async with _maybe_saver(path) as saver:
            app = wf.compile(saver)
            cfg = {"configurable": {"thread_id": rid}}
            abandoned = None
            if path is not None:
                journal = CallJournal(path, rid, clock=root.ledger.elapsed, fresh=stored is None)
                rt.journal = journal
            if stored is not None and journal is not None:
                abandoned = _restore(rt, stored, journal)
            tracer.emit("run_start", task=wf.name, stages=list(wf.stages), model=root.model.spec,
                        models={k: m.spec for k, m in rt.models.items() if not k.startswith("__")},
                        budget=limits.to_dict(), seed=seed, resumed=resume is not None,
                        checkpoint=str(path) if path else None,
                        inputs={k: str(v)[:200] for k, v in inputs.items()})
            if stored is not None:
                done = [n for n, r in stored.get("stages", {}).items() if r.get("status") == DONE]
                tracer.emit("run_resumed", completed_stages=done, restored_usage=root.ledger.usage.to_dict(),
                            restored_seconds=round(root.ledger.elapsed(), 3))
                if abandoned is not None and abandoned.count:
                    # Calls in flight when the earlier process died: they may
                    # have been billed, so their worst case is charged (when
                    # their stage ends, or at the end of the run).
                    tracer.emit("abandoned_calls", count=abandoned.count, usage=abandoned.usage.to_dict(),
                                by_stage=abandoned.by_stage)
                first: Any = None
                final: dict[str, Any] = stored
            else:
                first = {"inputs": inputs, "stages": {n: new_record() for n in wf.stages},
                         "task_hash": wf.fingerprint(),
                         "run": {"budget": limits.to_dict(), "seed": seed, "task": wf.name}}
                final = first
            # durability="sync": a node's checkpoint is on disk before the next starts.
            extra = {"durability": "sync"} if saver is not None else {}
            async for mode, chunk in app.astream(first, cfg, context=rt, stream_mode=["updates", "values"],
                                                 **extra):
                if mode == "values":
                    final = chunk
                elif path is not None and isinstance(chunk, dict):
                    tracer.emit("checkpoint", run_id=rid, step=sorted(chunk))
            if journal is not None:  # journaled spend of stages that did not end in this process
                for roles in journal.take_all().values():
                    for role, usage in roles.items():
                        root.ledger.charge(usage, role=role)
            result = _result(wf, rt, final, rid, path, resume is not None, time.monotonic() - t0)
    except BaseException as exc:
        tracer.emit("run_end", answer=None, stopped_reason="error", error=f"{type(exc).__name__}: {exc}",
                    usage=_usage(root.ledger, {}, root.stats))
        raise
    finally:
        if journal is not None:
            journal.close()
        if writer is not None:
            writer.close()
        for sink in added:  # a caller's tracer keeps only its own sinks
            if sink in tracer.sinks:
                tracer.sinks.remove(sink)
    return result


def _default_budget() -> str:
    from testtime.orchestrator.workflow import DEFAULT_BUDGET

    return DEFAULT_BUDGET


def _restore(rt: WorkflowRuntime, stored: dict[str, Any], journal: CallJournal) -> Any:
    """Bring the journaled spend and time of the earlier processes into the ledgers.

    Finished (and skipped) stages are charged to the root now. A stage that
    was running gets its spend back through replayed calls as it re-runs, and
    the rest when it ends (:meth:`WorkflowRuntime.settle_journal`); stages
    that never run again are charged at the end of the run. Entries left
    pending (in flight at the crash) are marked abandoned and charged at their
    worst case with their stage. Returns the abandoned calls found.
    """
    stages = stored.get("stages", {})
    abandoned = journal.abandon_pending()
    ledger = rt.root.ledger
    finished = journal.take_all_where(lambda name: name not in rt.workflow.stages
                                      or stages.get(name, {}).get("status") in (DONE, SKIPPED))
    for roles in finished.values():
        for role, usage in roles.items():
            ledger.charge(usage, role=role)
    ledger.restore(Usage(), seconds=journal.elapsed())
    return abandoned


def _usage(ledger: BudgetLedger, stages: dict[str, dict[str, Any]],
           stats: dict[str, Any] | None = None) -> dict[str, Any]:
    from testtime.api import usage_report

    report = usage_report(ledger, stats)
    report["by_stage"] = {n: {**(r.get("usage") or {}), "by_role": r.get("by_role", {})}
                          for n, r in stages.items() if r.get("usage")}
    return report


def _result(wf: Workflow, rt: WorkflowRuntime, final: dict[str, Any], rid: str, path: Path | None,
            resumed: bool, wall: float) -> WorkflowResult:
    from testtime.orchestrator.workflow import WorkflowResult

    records = final.get("stages", {})
    order = [n for n in wf.stages]
    stages: dict[str, dict[str, Any]] = {}
    for n in order:
        r = records.get(n, {})
        stages[n] = {"status": r.get("status"), "answer": r.get("answer"), "text": r.get("text", ""),
                     "score": r.get("score"), "passed": r.get("passed"),
                     "rounds": int(r.get("round", 0)) + 1 if r.get("status") == DONE else 0,
                     "stopped_reason": r.get("stopped_reason"), "usage": r.get("usage"),
                     "by_role": r.get("by_role", {}), "budget": r.get("budget"), "route": r.get("route"),
                     "history": r.get("history", [])}
    output = wf.output
    if output is None:
        done = [n for n in order if stages[n]["status"] == DONE]
        output = done[-1] if done else None
    out = stages.get(output or "", {})
    exhausted = any(s["stopped_reason"] == "budget_exhausted" for s in stages.values())
    if exhausted:
        stopped = "budget_exhausted"
    elif out.get("passed"):
        stopped = "verified"
    else:
        stopped = "done"
    ledger = rt.root.ledger
    stats = rt.root.stats
    stopped = final_stopped_reason(stopped, ledger, stats)
    last_error = stats.get("last_error")
    if last_error is not None and not stats.get("calls_ok") and out.get("answer") is None:
        raise last_error  # not one call succeeded: the error is all there is to report
    usage = _usage(ledger, records, stats)
    result = WorkflowResult(
        answer=out.get("answer"), text=out.get("text", ""), score=out.get("score"), stages=stages,
        usage=usage, budget=ledger.budget.to_dict(), stopped_reason=stopped,
        run_id=rid, output=output, checkpoint=str(path) if path else None, resumed=resumed,
        model=", ".join(sorted({m.spec for k, m in rt.models.items()} | {rt.root.model.spec})),
    )
    rt.root.tracer.emit("run_end", answer=result.answer, stopped_reason=stopped, usage=result.usage,
                        output_stage=output, wall_s=round(wall, 3))
    return result
