"""Compare search strategies on the simulator at matched token budgets.

Usage::

    python bench/search.py [--suites calibrated,overconfident,hard] [--problems 60]
                           [--budgets 2k,8k,32k] [--seed 0]

Prints one Markdown table per suite (the tables in bench/search.md come from
this script) plus, per suite and budget, each strategy's accuracy relative to
best-of-N. Every number comes from the real strategy code and the real
ledger; only the models are simulated (see testtime/sim).
"""

from __future__ import annotations

import argparse
import asyncio
import time

from testtime.sim.bench import markdown, run_bench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suites", default="calibrated,overconfident,hard")
    ap.add_argument("--problems", type=int, default=60)
    ap.add_argument("--budgets", default="2k,8k,32k")
    ap.add_argument("--strategies", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for suite in args.suites.split(","):
        t0 = time.monotonic()
        report = asyncio.run(run_bench(suite=suite, strategies=args.strategies, budgets=args.budgets,
                                       problems=args.problems, seed=args.seed))
        print(f"\n### suite `{suite}` ({args.problems} problems, seed {args.seed}, "
              f"{time.monotonic() - t0:.1f}s)\n")
        print(markdown(report))
        bon = {r.budget: r.accuracy for r in report.rows if r.strategy == "best_of_n"}
        if bon:
            print("\naccuracy minus best_of_n at the same budget:\n")
            for r in report.rows:
                if r.strategy != "best_of_n" and r.budget in bon:
                    print(f"- {r.strategy} @ {r.budget:,}: {r.accuracy - bon[r.budget]:+.3f}")
        for note in report.notes:
            print(f"\nnote: {note}")


if __name__ == "__main__":
    main()
