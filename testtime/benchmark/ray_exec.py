"""``--executor ray``: problems as Ray tasks, the sweep budget in one Ray actor.

Each problem's pending cells run as one Ray task (one CPU), in the same
order and through the same :func:`~testtime.benchmark.cells.run_cell` as the
local executor, so a cell's row is the same on either executor (up to wall
times). Before each cell the task reserves the cell's worst case on the
sweep gate -- a :class:`~testtime.benchmark.gate.SweepGate` living in a single
Ray actor -- and settles what the cell spent after it; reservations are
serialised by the actor, so workers on any number of machines cannot pass
the sweep budget together. Finished tasks' rows are appended to the store
by the driver as each task returns.

Without an address, a local Ray runtime is started (``num_cpus=2``, no
dashboard) and shut down at the end; with ``--ray-address`` the sweep joins
that cluster (its workers need testtime installed and the model reachable).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from testtime.benchmark.cells import (
    CellEnv,
    problem_from_dict,
    problem_to_dict,
    run_cell,
    spent_by_failed_cell,
)
from testtime.benchmark.gate import SweepGate
from testtime.errors import CapabilityError, MissingDependency, UserError

#: CPUs of the local runtime started when no --ray-address is given.
LOCAL_CPUS = 2


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MissingDependency("ray", "ray", "--executor ray") from None
    return ray


def problem_task(env_spec: dict[str, Any], problem: dict[str, Any], cells: list[tuple[str, str, int]],
                 worst: dict[str, dict[str, float]], gate: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Run one problem's cells inside a Ray worker; returns (rows, errors)."""
    ray = _ray()
    env = CellEnv(env_spec)
    p = problem_from_dict(problem)

    async def go() -> tuple[list[dict[str, Any]], list[str]]:
        rows: list[dict[str, Any]] = []
        errors: list[str] = []
        skip: set[str] = set()
        try:
            for strategy, budget, seed in cells:
                if strategy in skip:
                    continue
                hold = ray.get(gate.reserve.remote(worst.get(budget, {})))
                if hold is None:
                    break  # the sweep budget refused: start nothing more
                try:
                    row = await run_cell(env, p, strategy, budget, seed)
                except (UserError, CapabilityError) as exc:
                    ray.get(gate.settle.remote(hold, spent_by_failed_cell(exc)))
                    skip.add(strategy)
                    errors.append(f"skipped {strategy}: {exc}")
                    continue
                except Exception as exc:  # a rerun retries the cell
                    ray.get(gate.settle.remote(hold, spent_by_failed_cell(exc)))
                    errors.append(f"{p.id} {strategy} {budget} seed {seed}: {type(exc).__name__}: {exc}")
                    continue
                ray.get(gate.settle.remote(hold, row["usage"]))
                rows.append(row)
        finally:
            await env.aclose()
        return rows, errors

    return asyncio.run(go())


def run_ray(plan: Any, *, address: str | None = None, on_row: Any = None) -> tuple[int, list[str], dict[str, Any]]:
    """Run ``plan`` on Ray; returns (cells run, errors, sweep snapshot)."""
    ray = _ray()
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        else:
            # Local workers import testtime from the tree this driver runs: the
            # runtime's processes inherit PYTHONPATH when they start, here.
            root = str(Path(__file__).resolve().parents[2])
            before = os.environ.get("PYTHONPATH")
            paths = [p for p in (before or "").split(os.pathsep) if p]
            os.environ["PYTHONPATH"] = os.pathsep.join([root, *[p for p in paths if p != root]])
            try:
                ray.init(num_cpus=LOCAL_CPUS, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING)
            finally:
                if before is None:
                    os.environ.pop("PYTHONPATH", None)
                else:
                    os.environ["PYTHONPATH"] = before
        started = True
    try:
        gate = ray.remote(num_cpus=0)(SweepGate).remote(plan.spec.sweep_budget)
        task = ray.remote(num_cpus=1, max_retries=0)(problem_task)
        groups: dict[str, tuple[Any, list[tuple[str, str, int]]]] = {}
        for problem, strategy, budget, seed in plan.todo:
            groups.setdefault(problem.id, (problem, []))[1].append((strategy, budget, seed))
        pending = [task.remote(plan.env_spec, problem_to_dict(p), cells, plan.worst, gate)
                   for p, cells in groups.values()]
        ran, errors, skipped = 0, [], []
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                rows, errs = ray.get(ready[0])
            except Exception as exc:  # the task died (worker lost, import error): a rerun retries its cells
                errors.append(f"ray task failed: {type(exc).__name__}: {str(exc)[:300]}")
                continue
            plan.store.append_many(rows)
            ran += len(rows)
            for e in errs:
                (skipped if e.startswith("skipped ") else errors).append(e)
            if on_row is not None and rows:
                snap = ray.get(gate.snapshot.remote())
                for row in rows:
                    on_row(row, snap)
        plan.notes.extend(dict.fromkeys(skipped))
        return ran, errors, ray.get(gate.snapshot.remote())
    finally:
        if started:
            ray.shutdown()
