"""Strategy comparison on the simulator at matched token budgets.

:func:`run_bench` runs each strategy at each token budget on the same
problems, through the real strategy code, ``RunContext.generate`` and the
real :class:`~testtime.budget.BudgetLedger` -- the simulator only replaces
the models. Every (strategy, budget, problem) run gets a fresh ledger limited
to ``tokens=BUDGET`` and the same per-problem seed, so strategies see the
same problems and the same random stream (common random numbers). Problems
run concurrently with asyncio.

Strategy names may carry options, ``"mcts(logprob_prior=false)"`` or
``"beam(beam_width=2,expansions=2)"`` (:func:`parse_strategy_spec`), so
ablations are rows of the same table. :func:`run_problem` runs one cell on
one problem and returns it as a results-store row (the ``results.jsonl``
schema of ``testtime bench``, with every drawn candidate under ``samples``
and the hidden difficulty); :func:`run_seeds` repeats :func:`run_bench` over
several seeds and reports mean and spread per cell.

Per row it reports accuracy (normalised answer == reference), the mean
tokens spent, the mean and the largest spent/limit ratio (the mean says how
much of the budget a strategy uses; the largest must be <= 1: the budget
invariant), and which PRM/verifier was actually called (``None`` when the
strategy spent nothing on role ``"verify"``).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from testtime.api import usage_report
from testtime.budget import Budget
from testtime.errors import CapabilityError, UserError
from testtime.search.base import Problem, SearchStrategy
from testtime.search.registry import STRATEGIES, available_strategies, make_strategy
from testtime.sim.suites import Suite, get_suite
from testtime.verifiers.answer import normalize_answer

#: Strategies the simulator cannot exercise meaningfully, and why.
NOT_ON_SIM: dict[str, str] = {
    "plan_and_budget": "decomposes a question into sub-questions; simulator tasks have none",
    "code_monkeys": "writes and tests programs; simulator tasks are arithmetic, not code",
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
        requested = [n.strip() for n in _split_specs(names) if n.strip()]
    else:
        requested = list(names)
    if not requested:
        raise UserError("--strategies is empty; give names like best_of_n,beam")
    runnable, notes = [], []
    for spec in requested:
        name, _ = parse_strategy_spec(spec)
        if name not in STRATEGIES:
            raise UserError(f"unknown strategy {name!r}; choose from: {', '.join(default_strategies())}")
        if name in NOT_ON_SIM:
            notes.append(f"skipped {name}: {NOT_ON_SIM[name]}")
            continue
        module = STRATEGIES[name].partition(":")[0]
        if importlib.util.find_spec(module) is None:
            notes.append(f"skipped {name}: module {module} is not in this install")
            continue
        runnable.append(spec)
    return runnable, notes


_SPEC = re.compile(r"^\s*([A-Za-z_][\w-]*)\s*(?:\((.*)\))?\s*$")


def _split_specs(text: str) -> list[str]:
    """Split ``"a,b(x=1,y=2),c"`` at the commas outside parentheses."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
            continue
        depth += ch == "("
        depth -= ch == ")"
        cur += ch
    out.append(cur)
    return out


def parse_strategy_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"mcts(logprob_prior=false,c_puct=2)"`` -> ``("mcts", {"logprob_prior": False, "c_puct": 2})``.

    Values are JSON (``true``, ``2``, ``0.5``, ``"x"``), else strings.

    Raises:
        UserError: a malformed spec.
    """
    m = _SPEC.match(spec)
    if m is None:
        raise UserError(f"bad strategy spec {spec!r}: expected NAME or NAME(key=value,...)")
    name = m.group(1).lower().replace("-", "_")
    options: dict[str, Any] = {}
    for part in _split_specs(m.group(2) or ""):
        if not part.strip():
            continue
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise UserError(f"bad option {part!r} in strategy spec {spec!r}: expected key=value")
        try:
            options[key.strip()] = json.loads(value.strip())
        except ValueError:
            options[key.strip()] = value.strip()
    return name, options


def strategy_from_spec(spec: str) -> SearchStrategy:
    """The strategy a spec names, with its options (see :func:`parse_strategy_spec`)."""
    name, options = parse_strategy_spec(spec)
    return make_strategy(name, **options)


def _label(scorer: Any) -> str:
    return str(getattr(scorer, "spec", None) or getattr(scorer, "name", None) or type(scorer).__name__)


def _draw_order(cands: Sequence[Any]) -> list[Any]:
    # Strategies may return candidates ranked; node ids record the order drawn.
    if cands and all(getattr(c, "node", None) is not None for c in cands):
        return sorted(cands, key=lambda c: c.node)
    return list(cands)


def _config_hash(suite: Suite, spec: str, budget: int, scorer: str) -> str:
    text = json.dumps([suite.name, spec, budget, scorer, suite.policy, suite.policy_options, suite.prm,
                       suite.prm_options, suite.verifier], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


async def run_problem(strategy: SearchStrategy, suite: Suite, problem: Problem, budget: int, seed: int,
                      shared: dict[str, Any] | None = None, *, label: str | None = None,
                      run_seed: int | None = None) -> dict[str, Any]:
    """Run one strategy on one problem under ``tokens=budget``; return a results-store row.

    The row follows the ``results.jsonl`` schema of ``testtime bench``
    (``v, config_hash, dataset, problem_id, strategy, budget, seed, answer,
    correct, stopped_reason, usage, seconds, trace_id, samples, difficulty``)
    plus ``used_scorer`` (True when anything was spent on role ``verify``).
    ``samples`` lists every candidate the result reports, in draw order, as
    ``{"answer", "correct", "score"}``; ``difficulty`` is the hidden true
    difficulty (for analysis only: strategies never see it).

    Args:
        strategy: the strategy object.
        suite: where the models come from.
        problem: the problem.
        budget: token limit of this run's ledger.
        seed: the run's random seed (the per-problem stream).
        shared: ``{"policy", "prm", "verifier"}`` model objects to reuse
            (None: made from the suite).
        label: the strategy spec written to the row (default ``strategy.name``).
        run_seed: the bench seed written to the row (default ``seed``).
    """
    shared = shared or {"policy": suite.make_policy(), "prm": suite.make_prm(),
                        "verifier": suite.make_verifier()}
    ctx = suite.context(Budget(tokens=budget), seed=seed, model=shared["policy"],
                        prm_model=shared["prm"], verifier_model=shared["verifier"])
    t0 = time.monotonic()
    result = await strategy.search(problem, ctx)
    if ctx.ledger.open_reservations():
        raise RuntimeError(f"{strategy.name} left {ctx.ledger.open_reservations()} open reservations")
    ref = normalize_answer(problem.answer)

    def right(answer: str | None) -> bool | None:
        if ref is None:
            return None
        return answer is not None and normalize_answer(answer) == ref

    samples = [{"answer": c.answer, "correct": right(c.answer),
                "score": None if c.score is None else round(float(c.score), 6)}
               for c in _draw_order(result.candidates)]
    scorer = shared["verifier"] if shared["verifier"] is not None else shared["prm"]
    spec = label or strategy.name
    return {
        "v": 1, "config_hash": _config_hash(suite, spec, budget, _label(scorer) if scorer else "-"),
        "dataset": f"sim:{suite.name}", "problem_id": problem.id, "strategy": spec,
        "budget": f"tokens={budget}", "seed": seed if run_seed is None else run_seed,
        "answer": result.answer, "correct": right(result.answer),
        "stopped_reason": result.stopped_reason, "usage": usage_report(ctx.ledger),
        "seconds": round(time.monotonic() - t0, 4), "trace_id": None, "samples": samples,
        "difficulty": problem.meta.get("difficulty"),
        "used_scorer": "verify" in ctx.ledger.usage_by_role(),
        "stats": _small_stats(result.stats),
    }


def _small_stats(stats: dict[str, Any]) -> dict[str, Any]:
    # Keep what is small and JSON-able (auto's choice, counts), not tallies.
    out = {}
    for k, v in stats.items():
        if isinstance(v, (int, float, str, bool)) or v is None:
            out[k] = v
        elif k == "auto" and isinstance(v, dict):
            out[k] = {kk: vv for kk, vv in v.items() if isinstance(vv, (int, float, str, bool)) or vv is None}
    return out


async def run_bench(*, suite: str | Suite = "calibrated", strategies: str | Sequence[str] | None = None,
                    budgets: str | Sequence[int] | None = None, problems: int = DEFAULT_PROBLEMS,
                    seed: int = 0, concurrency: int = 64, prm: str | None = None,
                    verifier: str | None = None,
                    records: list[dict[str, Any]] | None = None) -> BenchReport:
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
        records: when given, every per-problem results-store row
            (:func:`run_problem`) is appended to it.

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
            try:
                strategy = strategy_from_spec(name)
            except UserError as exc:
                report.notes.append(f"skipped {name}: {exc}")
                break

            async def limited(i: int, p: Problem, strategy: SearchStrategy = strategy,
                              budget: int = budget, name: str = name) -> dict[str, Any]:
                async with sem:
                    return await run_problem(strategy, the_suite, p, budget, seed * 100_003 + i, shared,
                                             label=name, run_seed=seed)

            t0 = time.monotonic()
            try:
                results = await asyncio.gather(*(limited(i, p) for i, p in enumerate(probs)))
            except (UserError, CapabilityError) as exc:
                report.notes.append(f"skipped {name} at {budget} tokens: {exc}")
                continue
            except Exception as exc:  # a broken strategy must not hide the others' rows
                report.notes.append(f"error in {name} at {budget} tokens: {type(exc).__name__}: {exc}")
                continue
            if records is not None:
                records.extend(results)
            n = len(results)
            spent = [float(r["usage"]["tokens"]) for r in results]
            report.rows.append(BenchRow(
                strategy=name, budget=budget,
                accuracy=sum(bool(r["correct"]) for r in results) / n,
                mean_tokens=sum(spent) / n,
                mean_spend_ratio=sum(spent) / n / budget,
                max_spend_ratio=max(spent) / budget,
                prm=scorer if any(r["used_scorer"] for r in results) else None,
                problems=n,
                budget_exhausted=sum(r["stopped_reason"] == "budget_exhausted" for r in results),
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


@dataclass(frozen=True, slots=True, kw_only=True)
class SeedRow:
    """One (strategy, budget) cell over several seeds: mean and spread."""

    strategy: str
    budget: int
    accuracies: tuple[float, ...]
    mean_tokens: float
    max_spend_ratio: float
    prm: str | None

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def sd(self) -> float:
        """Sample standard deviation over seeds (0 with one seed)."""
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else 0.0

    @property
    def low(self) -> float:
        return min(self.accuracies)

    @property
    def high(self) -> float:
        return max(self.accuracies)

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "budget": self.budget, "mean": round(self.mean, 4),
                "sd": round(self.sd, 4), "min": round(self.low, 4), "max": round(self.high, 4),
                "accuracies": [round(a, 4) for a in self.accuracies],
                "mean_tokens": round(self.mean_tokens, 1), "max_spend_ratio": round(self.max_spend_ratio, 4),
                "prm": self.prm}


@dataclass(slots=True, kw_only=True)
class SeedsReport:
    """:func:`run_seeds`'s result: per-cell mean/spread plus the per-seed reports."""

    suite: str
    seeds: tuple[int, ...]
    rows: list[SeedRow] = field(default_factory=list)
    reports: list[BenchReport] = field(default_factory=list)
    seconds: float = 0.0

    def row(self, strategy: str, budget: int) -> SeedRow | None:
        return next((r for r in self.rows if r.strategy == strategy and r.budget == budget), None)

    def to_dict(self) -> dict[str, Any]:
        return {"suite": self.suite, "seeds": list(self.seeds), "rows": [r.to_dict() for r in self.rows],
                "seconds": round(self.seconds, 3)}


async def run_seeds(*, seeds: Sequence[int], records: list[dict[str, Any]] | None = None,
                    **kwargs: Any) -> SeedsReport:
    """:func:`run_bench` once per seed (different problems and random streams).

    Keyword arguments go to :func:`run_bench`. Each cell's accuracy is
    reported per seed, with mean, sample standard deviation, min and max.
    """
    if not seeds:
        raise UserError("give at least one seed")
    t0 = time.monotonic()
    reports = [await run_bench(seed=s, records=records, **kwargs) for s in seeds]
    out = SeedsReport(suite=reports[0].suite, seeds=tuple(seeds), reports=reports)
    cells: dict[tuple[str, int], list[BenchRow]] = {}
    for rep in reports:
        for r in rep.rows:
            cells.setdefault((r.strategy, r.budget), []).append(r)
    for (strategy, budget), rows in cells.items():
        out.rows.append(SeedRow(strategy=strategy, budget=budget, accuracies=tuple(r.accuracy for r in rows),
                                mean_tokens=statistics.fmean(r.mean_tokens for r in rows),
                                max_spend_ratio=max(r.max_spend_ratio for r in rows),
                                prm=next((r.prm for r in rows if r.prm), None)))
    out.seconds = time.monotonic() - t0
    return out


def seeds_markdown(report: SeedsReport, *, baseline: str | None = "best_of_n") -> str:
    """Mean +- sd (min-max) per cell; with ``baseline``, the mean difference to it and
    on how many seeds the strategy beat / tied / lost to it."""
    head = "| strategy | budget | accuracy mean +- sd | min-max | mean tokens | max spend/limit |"
    sep = "|---|---:|---:|---:|---:|---:|"
    if baseline:
        head += f" vs {baseline} (mean, W/T/L) |"
        sep += "---:|"
    lines = [head, sep]
    for r in report.rows:
        line = (f"| {r.strategy} | {r.budget:,} | {r.mean:.3f} +- {r.sd:.3f} | {r.low:.3f}-{r.high:.3f} | "
                f"{r.mean_tokens:,.0f} | {r.max_spend_ratio:.3f} |")
        if baseline:
            base = report.row(baseline, r.budget)
            if base is None or r.strategy == baseline:
                line += " - |"
            else:
                pairs = list(zip(r.accuracies, base.accuracies, strict=False))
                w = sum(a > b for a, b in pairs)
                t = sum(a == b for a, b in pairs)
                line += f" {r.mean - base.mean:+.3f} ({w}/{t}/{len(pairs) - w - t}) |"
        lines.append(line)
    return "\n".join(lines)
