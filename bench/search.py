"""Compare search strategies on the simulator at matched token budgets, over seeds.

Usage::

    python bench/search.py [--suites calibrated,hard,mixed] [--seeds 101-105]
                           [--problems 40] [--budgets 2k,8k,32k] [--strategies a,b(x=1)]
    python bench/search.py --ablation            # MCTS with / without logprob priors
    python bench/search.py --fit-table testtime/search/auto_table.json   # refit auto's default
    python bench/search.py --auto [--write-default]  # fit auto on seeds 0-3, judge it on 101-105
    python bench/search.py --bom                 # Best-of-Majority's regime: a PRM that favours a wrong answer

Every cell runs the same problems per seed (common random numbers) through
the real strategy code, ``RunContext.generate`` and the real ledger; only the
models are simulated (``testtime/sim``). Each seed draws a different problem
set and random stream; the tables give accuracy mean +- sample sd over the
seeds, the min-max range, and the mean difference to best-of-N with how many
seeds it won / tied / lost. The default seeds 101-105 were not used to build
or tune anything (the auto table is fitted on seeds 0-3).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

from testtime.search.tune import describe, fit_table, save_table
from testtime.sim.bench import SeedsReport, run_seeds, seeds_markdown

DEFAULT_TABLE = Path(__file__).resolve().parents[1] / "testtime" / "search" / "auto_table.json"

ABLATION = "best_of_n,mcts,mcts(logprob_prior=false)"
FIT_STRATEGIES = ("single,self_consistency,weighted_self_consistency,best_of_n,best_of_majority,beam,dvts,"
                  "mcts,astar,particle_filter,entropic_pf")


def parse_seeds(text: str) -> list[int]:
    """``"101-105"`` or ``"1,2,5"`` -> a list of seeds."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part[1:]:
            a, b = part.split("-", 1) if not part.startswith("-") else (part, part)
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


def _append(path: str, rows: list[dict], *, fresh: bool = False) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w" if fresh else "a", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")


async def _suite(suite: str, args: argparse.Namespace, strategies: str | None, records: list | None = None) -> None:
    t0 = time.monotonic()
    rep = await run_seeds(seeds=parse_seeds(args.seeds), suite=suite, strategies=strategies,
                          budgets=args.budgets, problems=args.problems, records=records)
    print(f"\n### suite `{suite}` ({args.problems} problems x seeds {args.seeds}, "
          f"{time.monotonic() - t0:.0f}s)\n")
    print(seeds_markdown(rep))
    notes = sorted({n for r in rep.reports for n in r.notes})
    for note in notes:
        print(f"\nnote: {note}")
    if args.json:
        _append(args.json, [rep.to_dict()])


async def _fit(args: argparse.Namespace) -> None:
    records: list[dict] = []
    t0 = time.monotonic()
    await run_seeds(seeds=parse_seeds(args.train_seeds), suite=args.fit_suite,
                    strategies=args.strategies or FIT_STRATEGIES, budgets=args.budgets,
                    problems=args.problems, records=records)
    if args.records:
        _append(args.records, records, fresh=True)
    table = fit_table(records, probe_n=args.probe_n, bins=args.bins, tie=args.tie,
                          confidence=args.confidence)
    save_table(table, args.fit_table)
    print(f"fitted on suite {args.fit_suite}, seeds {args.train_seeds}, {len(records)} rows "
          f"({time.monotonic() - t0:.0f}s) -> {args.fit_table}\n")
    print(describe(table))


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(DEFAULT_TABLE.parents[2]))
    except ValueError:
        return str(path)


def _tables_dir(path: str | None) -> Path:
    out = Path(path or tempfile.mkdtemp(prefix="auto-tables-"))
    out.mkdir(parents=True, exist_ok=True)
    return out


async def _auto(args: argparse.Namespace) -> None:
    """Per suite: fit a table on the training seeds, then run auto and every
    fixed strategy on the evaluation seeds and compare."""
    tables = _tables_dir(args.tables_dir)
    for suite in args.auto_suites.split(","):
        suite = suite.strip()
        t0 = time.monotonic()
        records: list[dict] = []
        await run_seeds(seeds=parse_seeds(args.train_seeds), suite=suite, strategies=FIT_STRATEGIES,
                        budgets=args.budgets, problems=args.problems, records=records)
        table = fit_table(records, probe_n=args.probe_n, bins=args.bins, tie=args.tie,
                          confidence=args.confidence)
        path = DEFAULT_TABLE if (args.write_default and suite == "mixed") else tables / f"{suite}.json"
        save_table(table, path)
        fit_s = time.monotonic() - t0
        t1 = time.monotonic()
        spec = f'auto(table="{path}")'
        evals: list[dict] = []
        rep = await run_seeds(seeds=parse_seeds(args.seeds), suite=suite,
                              strategies=f"{args.strategies or FIT_STRATEGIES},{spec}",
                              budgets=args.budgets, problems=args.problems, records=evals)
        rep.rows = [dataclasses.replace(r, strategy="auto") if r.strategy == spec else r for r in rep.rows]
        print(f"\n### auto on suite `{suite}` (table fitted on seeds {args.train_seeds}: {len(records)} rows, "
              f"{fit_s:.0f}s; judged on {args.problems} problems x seeds {args.seeds}, "
              f"{time.monotonic() - t1:.0f}s; table: {_shown(path)})\n")
        print(describe(table))
        print()
        print(auto_summary(rep))
        print()
        print(choices(evals, spec))
        print()
        print(seeds_markdown(rep))


def choices(rows: list[dict], spec: str) -> str:
    """What auto chose, by estimated bin: how many, their mean *true* difficulty
    (hidden from auto), and the strategies picked."""
    from collections import Counter, defaultdict

    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        if r["strategy"] == spec:
            groups[(r["budget"], str(r["stats"].get("auto", {}).get("bin")))].append(r)
    lines = ["| budget | bin (estimated) | problems | mean true difficulty | accuracy | chosen |",
             "|---|---|---:|---:|---:|---|"]
    for (budget, b), rs in sorted(groups.items(), key=lambda kv: (int(kv[0][0].split("=")[1]), kv[0][1])):
        picked = Counter(r["stats"]["auto"].get("strategy") for r in rs)
        diff = statistics.fmean(r["difficulty"] for r in rs)
        acc = statistics.fmean(bool(r["correct"]) for r in rs)
        lines.append(f"| {int(budget.split('=')[1]):,} | {b} | {len(rs)} | {diff:.2f} | {acc:.3f} | "
                     + ", ".join(f"{k} x{v}" for k, v in picked.most_common()) + " |")
    return "\n".join(lines)


def auto_summary(rep: SeedsReport) -> str:
    """Per budget: auto vs the best fixed strategy (by mean) and vs best-of-N."""
    lines = ["| budget | auto | auto tokens | best fixed | its accuracy | auto - best (W/T/L) "
             "| best_of_n | auto - best_of_n (W/T/L) | best_of_n tokens |",
             "|---:|---:|---:|---|---:|---:|---:|---:|---:|"]

    def wtl(a: tuple[float, ...], b: tuple[float, ...]) -> str:
        w = sum(x > y for x, y in zip(a, b, strict=True))
        t = sum(x == y for x, y in zip(a, b, strict=True))
        return f"{statistics.fmean(a) - statistics.fmean(b):+.3f} ({w}/{t}/{len(a) - w - t})"

    for budget in sorted({r.budget for r in rep.rows}):
        auto = rep.row("auto", budget)
        fixed = [r for r in rep.rows if r.budget == budget and r.strategy != "auto"]
        bon = rep.row("best_of_n", budget)
        if auto is None or not fixed or bon is None:
            continue
        best = max(fixed, key=lambda r: (r.mean, -r.mean_tokens))
        lines.append(f"| {budget:,} | {auto.mean:.3f} +- {auto.sd:.3f} | {auto.mean_tokens:,.0f} | {best.strategy} "
                     f"| {best.mean:.3f} +- {best.sd:.3f} | {wtl(auto.accuracies, best.accuracies)} "
                     f"| {bon.mean:.3f} +- {bon.sd:.3f} | {wtl(auto.accuracies, bon.accuracies)} "
                     f"| {bon.mean_tokens:,.0f} |")
    return "\n".join(lines)


BOM = "best_of_n,best_of_majority,best_of_majority(threshold=0.1),weighted_self_consistency,self_consistency"


async def _bom(args: argparse.Namespace) -> None:
    """Suite `biased`: accuracy split by whether the PRM favours a wrong answer
    on the problem (the regime Best-of-Majority targets), mean over seeds."""
    from collections import defaultdict

    from testtime.sim.prm import favoured_answer
    from testtime.sim.suites import get_suite
    from testtime.sim.tasks import task_from_question

    t0 = time.monotonic()
    suite = get_suite("biased")
    cfg = suite.make_prm().config
    records: list[dict] = []
    seeds = parse_seeds(args.seeds)
    await run_seeds(seeds=seeds, suite="biased", strategies=args.strategies or BOM, budgets=args.budgets,
                    problems=args.problems, records=records)
    fooled = {(s, p.id): favoured_answer(cfg, task_from_question(p.question)) is not None
              for s in seeds for p in suite.problems(args.problems, seed=s)}
    cells: dict[tuple[str, str, bool], list[bool]] = defaultdict(list)
    for r in records:
        cells[(r["strategy"], r["budget"], fooled[(r["seed"], r["problem_id"])])].append(bool(r["correct"]))
    n_fooled = sum(fooled.values())
    budgets = sorted({r["budget"] for r in records}, key=lambda b: int(b.split("=")[1]))
    print(f"\n### suite `biased`, split by PRM error ({args.problems} problems x seeds {args.seeds}; "
          f"{n_fooled} of {len(fooled)} problems have a favoured wrong answer; {time.monotonic() - t0:.0f}s)\n")
    print("| strategy | problems | " + " | ".join(f"{int(b.split('=')[1]):,}" for b in budgets) + " |")
    print("|---|---|" + "---:|" * len(budgets))
    for strategy in dict.fromkeys(r["strategy"] for r in records):
        for flag, label in ((True, "PRM favours a wrong answer"), (False, "no favoured answer")):
            vals = [cells[(strategy, b, flag)] for b in budgets]
            print(f"| {strategy} | {label} | " + " | ".join(f"{statistics.fmean(v):.3f}" for v in vals) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suites", default="calibrated,hard,mixed,biased")
    ap.add_argument("--problems", type=int, default=40)
    ap.add_argument("--budgets", default="2k,8k,32k")
    ap.add_argument("--strategies", default=None, help="comma-separated specs, e.g. best_of_n,mcts(c_puct=2)")
    ap.add_argument("--seeds", default="101-105", help="evaluation seeds (default 101-105)")
    ap.add_argument("--json", default=None, help="append each suite's mean/spread rows to this JSONL file")
    ap.add_argument("--ablation", action="store_true",
                    help=f"MCTS with and without logprob priors ({ABLATION}) on calibrated and logprob_oracle")
    ap.add_argument("--fit-table", default=None, metavar="OUT", help="fit auto's policy table and write it here")
    ap.add_argument("--fit-suite", default="mixed")
    ap.add_argument("--train-seeds", default="0-3")
    ap.add_argument("--records", default=None, help="with --fit-table: also write the results rows here")
    ap.add_argument("--probe-n", type=int, default=4)
    ap.add_argument("--bins", type=int, default=3)
    ap.add_argument("--tie", type=float, default=0.0)
    ap.add_argument("--confidence", type=float, default=1.0)
    ap.add_argument("--bom", action="store_true",
                    help="suite biased, split by problems whose PRM favours a wrong answer (Best-of-Majority)")
    ap.add_argument("--auto", action="store_true", help="fit auto per suite on --train-seeds, judge on --seeds")
    ap.add_argument("--auto-suites", default="mixed,mixed_biased")
    ap.add_argument("--tables-dir", default=None, help="with --auto: where fitted tables go (default: a temp dir)")
    ap.add_argument("--write-default", action="store_true",
                    help="with --auto: the `mixed` table becomes the packaged default")
    args = ap.parse_args()
    t0 = time.monotonic()
    if args.bom:
        asyncio.run(_bom(args))
    elif args.auto:
        asyncio.run(_auto(args))
    elif args.fit_table:
        asyncio.run(_fit(args))
    elif args.ablation:
        for suite in ("calibrated", "logprob_oracle"):
            asyncio.run(_suite(suite, args, args.strategies or ABLATION))
    else:
        for suite in args.suites.split(","):
            asyncio.run(_suite(suite.strip(), args, args.strategies))
    print(f"\ntotal {time.monotonic() - t0:.0f}s")


if __name__ == "__main__":
    main()
