"""A benchmark sweep: source x strategies x budgets x seeds -> the results store -> a report.

:func:`run_sweep` plans the cells (every problem, strategy, budget and
seed), skips those the store already holds, runs the rest on an executor
(local asyncio with ``concurrency`` cells in flight, or Ray), appends each
row the moment its cell ends, and draws the report from the store.

Cells run smallest budget first (then seed, problem, strategy), so a sweep
stopped by ``--sweep-budget`` has finished the cheap end of every strategy's
curve rather than all of one strategy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testtime.benchmark.cells import CellEnv, run_cell, spent_by_failed_cell
from testtime.benchmark.gate import SweepGate, cell_worst_case
from testtime.benchmark.sources import Source, load_source
from testtime.benchmark.store import ResultsStore, cell_key
from testtime.budget import Budget
from testtime.errors import CapabilityError, UserError
from testtime.models.base import Model
from testtime.search.base import Problem

DEFAULT_BUDGETS = "tokens=2k,8k,32k"
DEFAULT_STRATEGIES = ("single", "self_consistency", "best_of_n")


def parse_budgets(spec: str | Sequence[str] | None) -> list[str]:
    """``"tokens=2k,8k,32k"`` -> ``["tokens=2000", "tokens=8000", "tokens=32000"]``.

    A bare number takes the dimension of the last ``DIM=`` before it (tokens
    at the start: ``"2k,8k"`` works); ``+`` joins limits of one budget
    (``tokens=8k+seconds=60``). Specs are canonical (``str(Budget)``), so the
    same budget always has the same name in the store.
    """
    if spec is None:
        spec = DEFAULT_BUDGETS
    parts = list(spec) if not isinstance(spec, str) else [p for p in spec.split(",")]
    out: list[str] = []
    dim = "tokens"
    for raw in parts:
        part = raw.strip()
        if not part:
            continue
        pieces = []
        for piece in part.split("+"):
            piece = piece.strip()
            if "=" in piece:
                dim = piece.partition("=")[0].strip()
                pieces.append(piece)
            else:
                pieces.append(f"{dim}={piece}")
        budget = Budget.parse(",".join(pieces))
        if budget.is_unlimited() or any(v <= 0 for v in budget.limits().values()):
            raise UserError(f"bad budget {part!r} in --budgets: every limit must be positive (e.g. tokens=8k)")
        name = str(budget)
        if name not in out:
            out.append(name)
    if not out:
        raise UserError("--budgets is empty; give budgets like tokens=2k,8k,32k or usd=0.001,0.01")
    return out


def parse_seeds(spec: str | Sequence[int] | None) -> list[int]:
    if spec is None:
        return [0]
    if not isinstance(spec, str):
        return [int(s) for s in spec]
    try:
        seeds = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"bad --seeds {spec!r}: expected integers like 0,1,2") from None
    if not seeds:
        raise UserError("--seeds is empty; give integers like 0,1,2")
    return list(dict.fromkeys(seeds))


def parse_strategies(spec: str | Sequence[str] | None, source: Source) -> tuple[list[str], list[str]]:
    """Strategy names (validated) and notes about skipped ones."""
    from testtime.search.registry import STRATEGIES
    from testtime.sim.bench import NOT_ON_SIM, default_strategies

    if spec is None:
        names = default_strategies() if source.kind == "sim" else list(DEFAULT_STRATEGIES)
    elif isinstance(spec, str):
        names = [n.strip().lower().replace("-", "_") for n in spec.split(",") if n.strip()]
    else:
        names = list(spec)
    if not names:
        raise UserError("--strategies is empty; give names like single,best_of_n,beam")
    out, notes = [], []
    for n in names:
        if n not in STRATEGIES:
            raise UserError(f"unknown strategy {n!r}; choose from: {', '.join(STRATEGIES)}")
        if source.kind == "sim" and n in NOT_ON_SIM:
            notes.append(f"skipped {n}: {NOT_ON_SIM[n]}")
            continue
        if n not in out:
            out.append(n)
    return out, notes


@dataclass(slots=True, kw_only=True)
class SweepSpec:
    """Everything a sweep is configured by (CLI flags, or the Python API).

    ``options`` maps a strategy name to its keyword options. ``model`` may be
    a spec or (local executor only) a Model object; None uses a sim suite's policy.
    """

    dataset: str
    model: str | Model | None = None
    strategies: str | Sequence[str] | None = None
    budgets: str | Sequence[str] | None = None
    seeds: str | Sequence[int] | None = None
    problems: int | None = None
    verifier: str | None = None
    prm: str | None = None
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    max_tokens: int | None = None
    temperature: float | None = None
    base_url: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    question_field: str | None = None
    answer_field: str | None = None
    concurrency: int = 4
    out: str | Path = "bench-results"
    fresh: bool = False
    sweep_budget: str | None = None
    executor: str = "local"
    ray_address: str | None = None
    traces: bool = False


@dataclass(slots=True, kw_only=True)
class Plan:
    """A resolved sweep: the cells to run and how."""

    spec: SweepSpec
    source: Source
    problems: list[Problem]
    strategies: list[str]
    budgets: list[str]
    seeds: list[int]
    store: ResultsStore
    env_spec: dict[str, Any]
    env: CellEnv
    todo: list[tuple[Problem, str, str, int]]
    total: int
    notes: list[str]
    worst: dict[str, dict[str, float]]  # budget -> worst case on the sweep ledger


def plan_sweep(spec: SweepSpec) -> Plan:
    """Resolve and validate everything before any model is called.

    Raises:
        UserError: bad source, strategy, budget, option, or a changed configuration.
    """
    if spec.concurrency < 1:
        raise UserError(f"--concurrency must be >= 1, got {spec.concurrency}")
    if spec.executor not in ("local", "ray"):
        raise UserError(f"--executor must be local or ray, got {spec.executor!r}")
    source = load_source(spec.dataset, question_field=spec.question_field, answer_field=spec.answer_field,
                         problems=spec.problems)
    problems = source.take(spec.problems)
    strategies, notes = parse_strategies(spec.strategies, source)
    budgets = parse_budgets(spec.budgets)
    seeds = parse_seeds(spec.seeds)
    from testtime.search.registry import make_strategy

    for name in list(strategies):  # bad options fail now, not in the first cell
        strat = make_strategy(name, **dict(spec.options.get(name) or {}))
        if strat.needs_prm and spec.prm is None and source.kind != "sim":
            strategies.remove(name)
            notes.append(f"skipped {name}: it needs a process reward model; pass --prm SPEC")
    if not strategies:
        raise UserError("no strategy can run in this configuration: " + "; ".join(notes))
    unknown = set(spec.options) - set(strategies)
    if unknown:
        raise UserError(f"--option names strategies not in --strategies: {', '.join(sorted(unknown))}")
    model_spec = spec.model.spec if isinstance(spec.model, Model) else spec.model
    if model_spec is None and source.kind != "sim":
        raise UserError("--model is required for this dataset (e.g. local, openai:MODEL, vllm:MODEL)")
    if spec.executor == "ray" and isinstance(spec.model, Model):
        raise UserError("--executor ray needs a model spec string (workers load it), not a Model object")
    options = {k: dict(v) for k, v in sorted(spec.options.items()) if v}
    config = {
        "dataset": source.name, "dataset_hash": source.content_hash, "model": model_spec or f"{source.name} policy",
        "verifier": spec.verifier, "prm": spec.prm, "options": options, "grader": source.grader,
        "max_tokens": spec.max_tokens, "temperature": spec.temperature,
    }
    store = ResultsStore(spec.out, config, fresh=spec.fresh)
    env_spec = {
        "kind": source.kind, "suite": source.suite.name if source.suite is not None else None,
        "model": model_spec if not isinstance(spec.model, Model) else None,
        "model_options": {**spec.model_options, **({"base_url": spec.base_url} if spec.base_url else {})},
        "verifier": spec.verifier, "prm": spec.prm, "options": options, "max_tokens": spec.max_tokens,
        "temperature": spec.temperature, "grader": source.grader, "dataset": source.name,
        "config_hash": store.hash, "traces": str(Path(spec.out) / "traces") if spec.traces else None,
    }
    if env_spec["traces"]:
        Path(env_spec["traces"]).mkdir(parents=True, exist_ok=True)
    env = CellEnv(env_spec, model=spec.model if isinstance(spec.model, Model) else None)
    sweep_budget = Budget.parse(spec.sweep_budget) if spec.sweep_budget else Budget()
    worst: dict[str, dict[str, float]] = {}
    if not sweep_budget.is_unlimited():
        from testtime.models.prices import require_prices

        require_prices(env.scorer_models(), sweep_budget)
        rate = env.usd_per_token() if sweep_budget.usd is not None else 0.0
        worst = {b: cell_worst_case(Budget.parse(b), sweep_budget, rate) for b in budgets}
    done = store.done()
    cells = [(p, s, b, seed) for b in budgets for seed in seeds for p in problems for s in strategies]
    todo = [c for c in cells if (c[0].id, c[1], c[2], c[3]) not in done]
    return Plan(spec=spec, source=source, problems=problems, strategies=strategies, budgets=budgets, seeds=seeds,
                store=store, env_spec=env_spec, env=env, todo=todo, total=len(cells), notes=notes, worst=worst)


@dataclass(slots=True, kw_only=True)
class SweepOutcome:
    """What a sweep did (the report is drawn from the store, not from this)."""

    out: Path
    total: int
    skipped: int  # finished in an earlier run
    ran: int
    errors: list[str]
    notes: list[str]
    stopped: str | None  # why the sweep stopped early (None: it finished)
    sweep: dict[str, Any]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "cells": self.total, "skipped_done": self.skipped, "ran": self.ran,
                "errors": self.errors, "notes": self.notes, "stopped": self.stopped, "sweep": self.sweep,
                "seconds": round(self.seconds, 3)}


#: Called after every stored row with (row, gate snapshot).
OnRow = Callable[[dict[str, Any], dict[str, Any]], None]


async def run_local(plan: Plan, gate: SweepGate, on_row: OnRow | None = None) -> tuple[int, list[str], set[str]]:
    """Run the plan's cells with asyncio, ``concurrency`` at a time; rows go to the store as they end.

    Returns (cells run, errors, strategies skipped because they cannot run here).
    """
    queue: asyncio.Queue[tuple[Problem, str, str, int]] = asyncio.Queue()
    for cell in plan.todo:
        queue.put_nowait(cell)
    ran = 0
    errors: list[str] = []
    broken: set[str] = set()
    broken_why: list[str] = []

    async def worker() -> None:
        nonlocal ran
        while not queue.empty():
            problem, strategy, budget, seed = queue.get_nowait()
            if strategy in broken:
                continue
            hold = gate.reserve(plan.worst.get(budget, {}))
            if hold is None:
                return  # the sweep budget refused: start nothing more
            try:
                row = await run_cell(plan.env, problem, strategy, budget, seed)
            except (UserError, CapabilityError) as exc:
                gate.settle(hold, spent_by_failed_cell(exc))
                if strategy not in broken:
                    broken.add(strategy)
                    broken_why.append(f"skipped {strategy}: {exc}")
                continue
            except Exception as exc:  # one failing cell must not lose the others; a rerun retries it
                gate.settle(hold, spent_by_failed_cell(exc))
                errors.append(f"{problem.id} {strategy} {budget} seed {seed}: {type(exc).__name__}: {exc}")
                continue
            gate.settle(hold, row["usage"])
            plan.store.append(row)
            ran += 1
            if on_row is not None:
                on_row(row, gate.snapshot())

    try:
        await asyncio.gather(*(worker() for _ in range(min(plan.spec.concurrency, max(len(plan.todo), 1)))))
    finally:
        await plan.env.aclose()
    plan.notes.extend(broken_why)
    return ran, errors, broken


def run_sweep(spec: SweepSpec, *, on_row: OnRow | None = None, on_plan: Callable[[Plan], None] | None = None,
              write_report: bool = True) -> SweepOutcome:
    """Plan, run and report a sweep (synchronous; see the module docstring).

    Raises:
        UserError: bad configuration (nothing is run).
    """
    t0 = time.monotonic()
    plan = plan_sweep(spec)
    if on_plan is not None:
        on_plan(plan)
    if spec.executor == "ray":
        from testtime.benchmark.ray_exec import run_ray

        ran, errors, snapshot = run_ray(plan, address=spec.ray_address, on_row=on_row)
    else:
        gate = SweepGate(spec.sweep_budget)
        ran, errors, _ = asyncio.run(run_local(plan, gate, on_row))
        snapshot = gate.snapshot()
    stored = plan.store.done()
    missing = [c for c in plan.todo if cell_key({"problem_id": c[0].id, "strategy": c[1], "budget": c[2],
                                                 "seed": c[3]}) not in stored]
    stopped = None
    if snapshot.get("closed"):
        stopped = (f"sweep budget {Budget.parse(spec.sweep_budget) if spec.sweep_budget else ''} refused the next "
                   f"cell ({snapshot['closed']}): {plan.total - len(missing)} of {plan.total} cells are done; "
                   "rerun the same command with a larger --sweep-budget to finish (done cells are kept)")
    if write_report:
        from testtime.benchmark.report import write_report as _write

        _write(plan.store)
    return SweepOutcome(out=Path(spec.out), total=plan.total, skipped=plan.total - len(plan.todo), ran=ran,
                        errors=errors, notes=plan.notes, stopped=stopped, sweep=snapshot,
                        seconds=time.monotonic() - t0)

