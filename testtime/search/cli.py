"""The ``testtime bench`` subcommand (strategy comparison on the simulator).

``testtime bench --sim [--suite NAME] [--strategies a,b] [--budgets 2k,8k,32k]
[--problems N] [--seed S] [--verifier SPEC] [--prm SPEC] [--json]`` -- see :mod:`testtime.sim.bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from testtime.errors import UserError


def register(subparsers: Any) -> None:
    """Add ``bench`` to the ``testtime`` command."""
    from testtime.sim.bench import DEFAULT_PROBLEMS

    p = subparsers.add_parser(
        "bench", help="compare search strategies at matched token budgets on the simulator")
    p.add_argument("--sim", action="store_true",
                   help="run on the seeded simulator (required: the only benchmark backend)")
    p.add_argument("--suite", default="calibrated",
                   help="simulator suite: calibrated (default), overconfident, overconfident_strong, "
                        "noisy, hard, verifier")
    p.add_argument("--strategies", default=None,
                   help="comma-separated strategy names (default: every strategy available)")
    p.add_argument("--budgets", default="2k,8k,32k", help="token budgets (default 2k,8k,32k)")
    p.add_argument("--problems", type=int, default=DEFAULT_PROBLEMS,
                   help=f"problems per (strategy, budget) (default {DEFAULT_PROBLEMS})")
    p.add_argument("--seed", type=int, default=0, help="problem-set and sampling seed (default 0)")
    p.add_argument("--verifier", default=None,
                   help="outcome verifier spec replacing the suite's (e.g. math: sim problems carry answers)")
    p.add_argument("--prm", default=None, help="PRM spec replacing the suite's (e.g. sim:noisy)")
    p.add_argument("--json", action="store_true", help='print {"rows": [...]} as JSON')
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    if not args.sim:
        raise UserError("testtime bench needs --sim (the simulator is the only benchmark backend)")
    from testtime.sim.bench import render, run_bench

    report = asyncio.run(run_bench(suite=args.suite, strategies=args.strategies, budgets=args.budgets,
                                   problems=args.problems, seed=args.seed, prm=args.prm,
                                   verifier=args.verifier))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        render(report)
    return 0
