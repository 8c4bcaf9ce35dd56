"""Strategy comparison on the simulator at matched token budgets.

:func:`run_bench` runs each strategy at each token budget on the same
problems, through the real strategy code, ``RunContext.generate`` and the
real :class:`~testtime.budget.BudgetLedger` -- the simulator only replaces
the models. Every (strategy, budget, problem) run gets a fresh ledger limited
to ``tokens=BUDGET`` and the same per-problem seed, so strategies see the
same problems and the same random stream (common random numbers). Problems
run concurrently with asyncio.

Per row it reports accuracy (normalised answer == reference), the mean
tokens spent, the mean and the largest spent/limit ratio (the mean says how
much of the budget a strategy uses; the largest must be <= 1: the budget
invariant), and which PRM/verifier was actually called (``None`` when the
strategy spent nothing on role ``"verify"``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from testtime.budget import Budget
from testtime.errors import CapabilityError, UserError
from testtime.search.base import Problem, SearchStrategy
from testtime.search.registry import STRATEGIES, available_strategies, make_strategy
from testtime.sim.suites import Suite, get_suite
from testtime.verifiers.answer import normalize_answer

#: Strategies the simulator cannot exercise meaningfully, and why.
NOT_ON_SIM: dict[str, str] = {
    "plan_and_budget": "decomposes a question into sub-questions; simulator tasks have none",
}

DEFAULT_BUDGETS: tuple[int, ...] = (2000, 8000, 32000)
DEFAULT_PROBLEMS = 30


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchRow:
    """One (strategy, budget) cell of the comparison."""

    strategy: str
    budget: int
    accuracy: float
    mean_tokens: float
    max_spend_ratio: float
    prm: str | None
    problems: int
    budget_exhausted: int = 0
    seconds: float = 0.0
    mean_spend_ratio: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "budget": self.budget, "accuracy": round(self.accuracy, 4),
                "mean_tokens": round(self.mean_tokens, 1),
                "mean_spend_ratio": round(self.mean_spend_ratio, 4),
                "max_spend_ratio": round(self.max_spend_ratio, 4), "prm": self.prm,
                "problems": self.problems, "budget_exhausted": self.budget_exhausted,
                "seconds": round(self.seconds, 3)}


@dataclass(slots=True, kw_only=True)
class BenchReport:
    """All rows plus notes (skipped strategies and why)."""

    suite: str
    seed: int
    rows: list[BenchRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"suite": self.suite, "seed": self.seed, "rows": [r.to_dict() for r in self.rows],
                "notes": self.notes, "seconds": round(self.seconds, 3)}


def parse_budgets(spec: str | Sequence[int] | None) -> list[int]:
    """``"2k,8k,32k"`` -> ``[2000, 8000, 32000]`` (token budgets)."""
    if spec is None:
        return list(DEFAULT_BUDGETS)
    if not isinstance(spec, str):
        return [int(b) for b in spec]
    out = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        budget = Budget.parse(f"tokens={part}")
        if not budget.tokens:
            raise UserError(f"bad budget {part!r} in --budgets: expected a positive token count like 8k")
        out.append(int(budget.tokens))
    if not out:
        raise UserError("--budgets is empty; give token budgets like 2k,8k,32k")
    return out


def default_strategies() -> list[str]:
    """Every strategy present in this install that can run on the simulator."""
    return [s for s in available_strategies() if s not in NOT_ON_SIM]


def resolve_strategies(names: str | Sequence[str] | None) -> tuple[list[str], list[str]]:
    """Requested strategy names -> (runnable names, notes about skipped ones)."""
    if names is None:
        requested = [s for s in STRATEGIES if s not in NOT_ON_SIM]
    elif isinstance(names, str):
        requested = [n.strip().lower().replace("-", "_") for n in names.split(",") if n.strip()]
    else:
        requested = list(names)
    if not requested:
        raise UserError("--strategies is empty; give names like best_of_n,beam")
    runnable, notes = [], []
    for name in requested:
        if name not in STRATEGIES:
            raise UserError(f"unknown strategy {name!r}; choose from: {', '.join(default_strategies())}")
        if name in NOT_ON_SIM:
            notes.append(f"skipped {name}: {NOT_ON_SIM[name]}")
            continue
        module = STRATEGIES[name].partition(":")[0]
        if importlib.util.find_spec(module) is None:
            notes.append(f"skipped {name}: module {module} is not in this install")
            continue
        runnable.append(name)
    return runnable, notes


def _label(scorer: Any) -> str:
    return str(getattr(scorer, "spec", None) or getattr(scorer, "name", None) or type(scorer).__name__)


async def _one(strategy: SearchStrategy, suite: Suite, problem: Problem, budget: int, seed: int,
               shared: dict[str, Any]) -> tuple[bool, float, str, bool]:
    ctx = suite.context(Budget(tokens=budget), seed=seed, model=shared["policy"],
                        prm_model=shared["prm"], verifier_model=shared["verifier"])
    result = await strategy.search(problem, ctx)
    if ctx.ledger.open_reservations():
        raise RuntimeError(f"{strategy.name} left {ctx.ledger.open_reservations()} open reservations")
    correct = (result.answer is not None
               and normalize_answer(result.answer) == normalize_answer(problem.answer))
    used_scorer = "verify" in ctx.ledger.usage_by_role()
    return correct, ctx.ledger.spent("tokens"), result.stopped_reason, used_scorer


async def run_bench(*, suite: str | Suite = "calibrated", strategies: str | Sequence[str] | None = None,
                    budgets: str | Sequence[int] | None = None, problems: int = DEFAULT_PROBLEMS,
                    seed: int = 0, concurrency: int = 64, prm: str | None = None,
                    verifier: str | None = None) -> BenchReport:
    """Run the comparison and return its rows.

    Args:
        suite: a suite name or object (:mod:`testtime.sim.suites`).
        strategies: names (list or comma-separated); None = every strategy available.
        budgets: token budgets (list or ``"2k,8k"``).
        problems: how many problems (the same for every strategy and budget).
        seed: selects the problems and the per-problem random streams.
        concurrency: problems in flight at once.
        prm / verifier: specs (``--prm`` / ``--verifier`` forms) replacing the
            suite's own simulated PRM / verifier, e.g. ``verifier="math"``
            (simulated problems carry their reference answer).

    Raises:
        UserError: unknown suite/strategy or bad budgets.
    """
    if problems < 1:
        raise UserError(f"--problems must be >= 1, got {problems}")
    the_suite = suite if isinstance(suite, Suite) else get_suite(suite)
    names, notes = resolve_strategies(strategies)
    sizes = parse_budgets(budgets)
    probs = the_suite.problems(problems, seed=seed)
    shared: dict[str, Any] = {"policy": the_suite.make_policy(), "prm": the_suite.make_prm(),
                              "verifier": the_suite.make_verifier()}
    if prm is not None or verifier is not None:
        from testtime.verifiers.registry import load_prm, load_verifier

        if prm is not None:
            shared["prm"] = load_prm(prm)
        if verifier is not None:
            shared["verifier"] = load_verifier(verifier)
    scorer = _label(shared["verifier"]) if shared["verifier"] is not None else _label(shared["prm"])
    report = BenchReport(suite=the_suite.name, seed=seed, notes=notes)
    sem = asyncio.Semaphore(max(concurrency, 1))
    t_start = time.monotonic()
    for name in names:
        for budget in sizes:
            strategy = make_strategy(name)

            async def limited(i: int, p: Problem, strategy: SearchStrategy = strategy,
                              budget: int = budget) -> tuple[bool, float, str, bool]:
                async with sem:
                    return await _one(strategy, the_suite, p, budget, seed * 100_003 + i, shared)

            t0 = time.monotonic()
            try:
                results = await asyncio.gather(*(limited(i, p) for i, p in enumerate(probs)))
            except (UserError, CapabilityError) as exc:
                report.notes.append(f"skipped {name} at {budget} tokens: {exc}")
                continue
            except Exception as exc:  # a broken strategy must not hide the others' rows
                report.notes.append(f"error in {name} at {budget} tokens: {type(exc).__name__}: {exc}")
                continue
            n = len(results)
            report.rows.append(BenchRow(
                strategy=name, budget=budget,
                accuracy=sum(r[0] for r in results) / n,
                mean_tokens=sum(r[1] for r in results) / n,
                mean_spend_ratio=sum(r[1] for r in results) / n / budget,
                max_spend_ratio=max(r[1] for r in results) / budget,
                prm=scorer if any(r[3] for r in results) else None,
                problems=n,
                budget_exhausted=sum(r[2] == "budget_exhausted" for r in results),
                seconds=time.monotonic() - t0,
            ))
    report.seconds = time.monotonic() - t_start
    return report


def render(report: BenchReport, *, console: Any = None) -> None:
    """Print the report as a rich table (one row per strategy and budget)."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        # Piped output defaults to 80 columns, which would cut strategy names.
        console = Console()
        if console.width < 120:
            console = Console(width=120)
    table = Table(title=f"testtime bench --sim --suite {report.suite} (seed {report.seed})")
    for col, justify in [("strategy", "left"), ("budget", "right"), ("accuracy", "right"),
                         ("mean tokens", "right"), ("mean spend/limit", "right"),
                         ("max spend/limit", "right"),
                         ("budget hit", "right"), ("scorer", "left")]:
        table.add_column(col, justify=justify)
    last = None
    for r in report.rows:
        if last is not None and r.strategy != last:
            table.add_section()
        last = r.strategy
        table.add_row(r.strategy, f"{r.budget:,}", f"{r.accuracy:.3f}", f"{r.mean_tokens:,.0f}",
                      f"{r.mean_spend_ratio:.3f}", f"{r.max_spend_ratio:.3f}", f"{r.budget_exhausted}/{r.problems}", r.prm or "-")
    console.print(table)
    for note in report.notes:
        console.print(f"[dim]note: {note}[/dim]")
    console.print(f"[dim]{len(report.rows)} rows in {report.seconds:.1f}s[/dim]")


def markdown(report: BenchReport) -> str:
    """The report as a Markdown table (for bench/search.md)."""
    lines = ["| strategy | budget | accuracy | mean tokens | mean spend/limit | max spend/limit | budget hit "
             "| scorer |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in report.rows:
        lines.append(f"| {r.strategy} | {r.budget:,} | {r.accuracy:.3f} | {r.mean_tokens:,.0f} | "
                     f"{r.mean_spend_ratio:.3f} | {r.max_spend_ratio:.3f} | "
                     f"{r.budget_exhausted}/{r.problems} | {r.prm or '-'} |")
    return "\n".join(lines)
