"""``testtime trace show FILE.jsonl``: render a trace as a tree with a budget table."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from testtime.errors import UserError


def register(subparsers: Any) -> None:
    """Add the ``trace`` command group to the ``testtime`` parser."""
    p = subparsers.add_parser("trace", help="inspect JSONL traces written with --trace")
    sub = p.add_subparsers(dest="trace_command")
    show = sub.add_parser("show", help="render a trace as a tree (stages -> strategies -> search nodes)")
    show.add_argument("file", metavar="FILE.jsonl", help="trace file")
    show.add_argument("--max-nodes", type=int, default=40, help="search nodes shown per strategy (default 40)")
    show.set_defaults(func=_cmd_show)
    p.set_defaults(func=_cmd_help, _trace_parser=p)


def _cmd_help(args: argparse.Namespace) -> int:
    raise UserError("testtime trace: give a subcommand, e.g. `testtime trace show FILE.jsonl`")


def _cmd_show(args: argparse.Namespace) -> int:
    from testtime.trace.render import show

    if args.max_nodes < 0:
        raise UserError(f"--max-nodes must be >= 0, got {args.max_nodes}")
    skipped = show(args.file, max_nodes=args.max_nodes)
    if skipped:
        lineno, why = skipped[0]
        print(f"testtime: warning: skipped {len(skipped)} unreadable line(s) of {args.file} "
              f"(first: line {lineno}: {why})", file=sys.stderr)
    return 0
