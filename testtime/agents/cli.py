"""``testtime allocate`` and ``testtime compose``."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from collections.abc import Sequence
from typing import Any

from testtime.budget import Budget
from testtime.errors import UserError


def register(subparsers: Any) -> None:
    """Add the ``allocate`` and ``compose`` subcommands."""
    a = subparsers.add_parser("allocate", help="find per-stage models and sample counts under a budget (AgentTTS)")
    a.add_argument("--sim", nargs="?", const="plan-solve-verify", default=None, metavar="TASK",
                   help="simulated task (plan-solve, plan-solve-verify, retrieve-answer, code-test-repair)")
    a.add_argument("--task", default=None, metavar="FILE.yaml", help="real multi-stage task file")
    a.add_argument("--train", default=None, metavar="FILE.jsonl", help="training examples for --task")
    a.add_argument("--models", default=None, help="candidate models for --task: keys or specs, comma-separated "
                   "(default: the task file's models)")
    a.add_argument("--method", default="agent", help="agent (default), random, grid, greedy, bayes")
    a.add_argument("--trials", type=int, default=20, help="allocations to evaluate (default 20)")
    a.add_argument("--budget", default=None, help="total budget of ONE task run, e.g. tokens=12k or usd=0.01 "
                   "(default: the simulated task's)")
    a.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    a.add_argument("--proposer", default="local", help="model spec of the agent method's proposer (default local)")
    a.add_argument("--proposer-budget", default="tokens=200k", help="budget of the proposer's own calls")
    a.add_argument("--n-train", type=int, default=50, help="simulated training examples (0: exact accuracy)")
    a.add_argument("--levels", default=None, help="allowed samples per stage, e.g. 1,2,4,8")
    a.add_argument("--json", action="store_true", help="print one JSON object")
    a.set_defaults(func=_cmd_allocate)

    c = subparsers.add_parser("compose", help="select components under a budget (online knapsack)")
    c.add_argument("--inventory", default=None, metavar="FILE.yaml", help="component inventory file")
    c.add_argument("--sim", action="store_true", help="use a simulated inventory of --size components")
    c.add_argument("--size", type=int, default=120, help="simulated inventory size (default 120)")
    c.add_argument("--misleading", action="store_true", help="simulated descriptions mislead")
    c.add_argument("--task", default=None, help="task description (default: the inventory's)")
    c.add_argument("--budget", required=True, help="budget in the inventory's unit, e.g. usd=0.3")
    c.add_argument("--samples", type=int, default=20, help="sample tasks per component test (default 20)")
    c.add_argument("--order", default="random", help="consideration order: random (default), retrieval, listed")
    c.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=_cmd_compose)


# ------------------------------------------------------------------ allocate
def _levels(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise UserError(f"--levels must be comma-separated integers, got {text!r}") from exc


def _cmd_allocate(args: argparse.Namespace) -> int:
    from testtime.agents.allocation import DEFAULT_LEVELS, make_allocator, search_allocation

    if (args.sim is None) == (args.task is None):
        raise UserError("testtime allocate: give --sim [TASK] or --task FILE.yaml --train FILE.jsonl")
    if args.trials < 1:
        raise UserError(f"--trials must be >= 1, got {args.trials}")
    levels = _levels(args.levels) or DEFAULT_LEVELS
    options: dict[str, Any] = {}
    if args.method.strip().lower() == "agent":
        options = {"model": args.proposer, "budget": args.proposer_budget}
    allocator = make_allocator(args.method, **options)
    extra: dict[str, Any] = {}
    if args.sim is not None:
        from testtime.sim.multistage import sim_task

        task = sim_task(args.sim)
        task = type(task)(name=task.name, stages=task.stages, budget=task.budget, floor=task.floor, levels=levels)
        budget = Budget.parse(args.budget) if args.budget else task.budget
        space = task.space(budget)
        evaluator = task.evaluator(n_train=args.n_train or None, seed=args.seed)
    else:
        if not args.train:
            raise UserError("--task needs --train FILE.jsonl (examples with expected answers)")
        from testtime.agents.realtask import load_train, space_from_workflow, workflow_evaluator
        from testtime.orchestrator import load_task

        wf = load_task(args.task)
        train = load_train(args.train)
        if args.budget:
            budget = Budget.parse(args.budget)
        elif wf.budget is not None:
            budget = wf.budget if isinstance(wf.budget, Budget) else Budget.parse(str(wf.budget))
        else:
            raise UserError("give --budget (the task file has none)")
        models = [m.strip() for m in args.models.split(",")] if args.models else None
        space = space_from_workflow(wf, budget, models=models, levels=levels)
        evaluator = workflow_evaluator(wf, space, train, seed=args.seed)
    result = asyncio.run(search_allocation(space, evaluator, allocator, trials=args.trials, seed=args.seed))
    if args.sim is not None:
        opt, opt_acc = task.optimum(budget)
        best = result.best
        true_best = task.accuracy(best.allocation) if best else 0.0
        extra = {"task": task.name, "oracle": {"allocation": opt.to_dict(space.stages), "accuracy": opt_acc,
                                                "cost": space.cost(opt)},
                 "best_true_accuracy": true_best, "regret": opt_acc - true_best}
        result.extra = extra
    out = result.to_dict()
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    _print_allocation(out, space)
    return 0


def _print_allocation(out: dict[str, Any], space: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"allocate: method {out['method']}, budget {space.budget}")
    table.add_column("#", justify="right")
    table.add_column("allocation")
    table.add_column("accuracy", justify="right")
    table.add_column("cost")
    table.add_column("source")
    best_idx = out["best"]["trial"] if out["best"] else -1
    for t in out["trials"]:
        desc = ", ".join(f"{s}={c['model']} x{c['samples']}" for s, c in t["allocation"].items())
        mark = " *" if t["index"] == best_idx else ""
        cost = ", ".join(f"{d}={t['cost'][d]:g}" for d in space.limits)
        table.add_row(str(t["index"]) + mark, desc, f"{t['accuracy']:.3f}", cost, t["source"])
    console.print(table)
    if out["best"]:
        desc = ", ".join(f"{s}={c['model']} x{c['samples']}" for s, c in out["best"]["allocation"].items())
        console.print(f"best: {desc}  accuracy {out['best']['accuracy']:.3f}")
    if "oracle" in out:
        desc = ", ".join(f"{s}={c['model']} x{c['samples']}" for s, c in out["oracle"]["allocation"].items())
        console.print(f"oracle optimum: {desc}  accuracy {out['oracle']['accuracy']:.3f}; best found has true "
                      f"accuracy {out['best_true_accuracy']:.3f} (regret {out['regret']:.3f})")


# ------------------------------------------------------------------- compose
def utility_evaluator(inventory: Any, *, seed: int = 0):
    """Sample-task outcomes replayed from measured utilities (file inventories).

    A set succeeds on sample ``j`` when any member does; member ``c`` succeeds
    with probability ``utility(c)``, drawn with common random numbers.
    """
    missing = [c.name for c in inventory.components if c.utility is None]
    if missing:
        raise UserError(f"{inventory.source}: components without `utility` (measured success rate): "
                        f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; add it, or use the "
                        f"Python API (OnlineKnapsackComposer.compose) with your own evaluator")

    async def evaluate(members: Sequence[Any], j: int) -> float:
        for m in members:
            if random.Random(f"{seed}:{m.name}:{j}").random() < (m.utility or 0.0):
                return 1.0
        return 0.0
    return evaluate


async def compose_all(inventory: Any, task: str, budget: float, evaluator: Any, *, samples: int, order: str,
                      seed: int, values: dict[str, float] | None, truth: Any = None) -> dict[str, Any]:
    """Run the composer and the baselines; report each and the composer's Pareto position."""
    from testtime.agents.knapsack import (
        OnlineKnapsackComposer,
        dp_optimum,
        greedy_baseline,
        pareto,
        retrieval_baseline,
    )

    composer = OnlineKnapsackComposer(samples=samples, order=order)
    runs = [await composer.compose(inventory, task, budget, evaluator, seed=seed),
            await retrieval_baseline(inventory, task, budget, evaluator, samples=samples),
            await greedy_baseline(inventory, task, budget, evaluator, samples=samples)]
    if values is not None:
        runs.append(dp_optimum(inventory, values, budget))
    for r in runs:
        if truth is not None:
            r.true_success = truth(r.chosen)
    points = {r.method: (r.cost, r.true_success if r.true_success is not None else (r.estimated or 0.0))
              for r in runs}
    lower, upper = composer.bounds(inventory)
    return {"task": task, "budget": budget, "unit": inventory.unit, "components": len(inventory.components),
            "composer": {**runs[0].to_dict(), "bounds": {"L": lower, "U": upper}},
            "baselines": [r.to_dict() for r in runs[1:]],
            "pareto": pareto(points, "composer"),
            "log": runs[0].log}


def _cmd_compose(args: argparse.Namespace) -> int:
    from testtime.agents.components import load_inventory

    if bool(args.sim) == bool(args.inventory):
        raise UserError("testtime compose: give --inventory FILE.yaml or --sim")
    truth = None
    if args.sim:
        from testtime.sim.inventory import make_inventory

        if args.size < 10:
            raise UserError(f"--size must be >= 10, got {args.size}")
        sim = make_inventory(n=args.size, seed=args.seed, misleading=args.misleading)
        inventory, task = sim.inventory, args.task or sim.task
        evaluator = sim.evaluator(seed=args.seed)
        values: dict[str, float] | None = sim.true_values()
        truth = sim.true_success
    else:
        inventory, file_task = load_inventory(args.inventory)
        task = args.task or file_task
        if not task:
            raise UserError("give --task TEXT (the inventory file has no `task:`)")
        evaluator = utility_evaluator(inventory, seed=args.seed)
        values = {c.name: c.utility or 0.0 for c in inventory.components}
    limits = Budget.parse(args.budget).limits()
    if inventory.unit not in limits:
        raise UserError(f"the inventory's costs are in {inventory.unit}: give --budget {inventory.unit}=AMOUNT")
    out = asyncio.run(compose_all(inventory, task, float(limits[inventory.unit]), evaluator,
                                  samples=args.samples, order=args.order, seed=args.seed, values=values,
                                  truth=truth))
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    _print_compose(out)
    return 0


def _print_compose(out: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"compose: {out['components']} components, budget {out['unit']}={out['budget']:g}")
    for col in ("method", "chosen", "cost", "est. success", "true success", "tests"):
        table.add_column(col)
    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    for r in [out["composer"], *out["baselines"]]:
        table.add_row(r["method"], ", ".join(r["chosen"]) or "-", f"{r['cost']:.4g}", fmt(r["estimated_success"]),
                      fmt(r["true_success"]), str(r["tests"]))
    console.print(table)
    p = out["pareto"]
    console.print(f"composer: on the Pareto frontier: {p['on_frontier']}; dominates "
                  f"{', '.join(p['dominates']) or 'none'}; dominated by {', '.join(p['dominated_by']) or 'none'}")
