"""``testtime tune RESULTS.jsonl [--out table.json]``: fit ``--strategy auto``'s policy table.

Reads a bench results store (``testtime bench ... --out DIR`` writes
``DIR/results.jsonl``; a directory argument means that file), fits a table
with :func:`testtime.search.tune.fit_table` and prints it as Markdown; with
``--out`` it is also written as JSON, ready for ``--strategy auto -o
table=FILE``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: Any) -> None:
    """Add ``tune`` to the ``testtime`` command."""
    p = subparsers.add_parser("tune", help="fit --strategy auto's policy table from bench results")
    p.add_argument("results", nargs="+", help="results.jsonl file(s) or bench output directories")
    p.add_argument("--out", default=None, help="write the table here (JSON)")
    p.add_argument("--probe-n", type=int, default=4, help="probe samples per problem (default 4)")
    p.add_argument("--bins", type=int, default=3, help="difficulty bins (default 3)")
    p.add_argument("--tie", type=float, default=0.0,
                   help="accuracies within this of the best tie; ties go to fewer tokens (default 0)")
    p.add_argument("--confidence", type=float, default=1.0,
                   help="a bin leaves the best single strategy only for one better by more than this many "
                        "standard errors (default 1; 0: plain argmax, which overfits small stores)")
    p.add_argument("--feature", choices=("agreement", "agreement+score"), default=None,
                   help="probe feature (default: agreement+score when the samples are scored)")
    p.add_argument("--dataset", default=None, help="fit on this dataset's rows only")
    p.add_argument("--json", action="store_true", help="print the table as JSON instead of Markdown")
    p.set_defaults(func=_cmd_tune)


def _cmd_tune(args: argparse.Namespace) -> int:
    from testtime.search.tune import describe, fit_table, read_results, save_table

    rows = read_results(args.results)
    table = fit_table(rows, probe_n=args.probe_n, bins=args.bins, tie=args.tie, feature=args.feature,
                      dataset=args.dataset, confidence=args.confidence)
    if args.out:
        save_table(table, args.out)
    if args.json:
        print(json.dumps(table, indent=1))
    else:
        print(describe(table))
        if args.out:
            print(f"\nwrote {args.out}: use it with --strategy auto -o table={args.out}")
    return 0
