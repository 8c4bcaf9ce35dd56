"""``testtime trace show|browse|render|export FILE.jsonl``.

``show`` prints the tree with a budget table, ``browse`` opens the
interactive browser (extra ``tui``), ``render`` draws the search tree as a
picture (matplotlib), ``export`` sends the trace to an OpenTelemetry
collector over OTLP/HTTP (extra ``otel``).
"""

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
    browse = sub.add_parser("browse", help="browse a trace interactively (extra tui)")
    browse.add_argument("file", metavar="FILE.jsonl", help="trace file")
    browse.add_argument("--follow", "-f", action="store_true",
                        help="keep reading events appended to the file (a run still going)")
    browse.set_defaults(func=_cmd_browse)
    render = sub.add_parser("render", help="draw the search tree as a PNG or SVG picture (needs matplotlib)")
    render.add_argument("file", metavar="FILE.jsonl", help="trace file")
    out = render.add_mutually_exclusive_group(required=True)
    out.add_argument("--png", metavar="OUT.png", help="write a PNG")
    out.add_argument("--svg", metavar="OUT.svg", help="write an SVG")
    render.add_argument("--max-nodes", type=int, default=2000, help="draw at most this many nodes (default 2000)")
    render.set_defaults(func=_cmd_render)
    export = sub.add_parser("export", help="send a trace to an OpenTelemetry collector (extra otel)")
    export.add_argument("file", metavar="FILE.jsonl", help="trace file")
    export.add_argument("--otlp", metavar="URL", default=None,
                        help="OTLP/HTTP endpoint, e.g. http://localhost:4318 (default: OTEL_EXPORTER_OTLP_ENDPOINT)")
    export.set_defaults(func=_cmd_export)
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


def _cmd_browse(args: argparse.Namespace) -> int:
    try:
        from testtime.trace.browse import browse
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("textual",):
            raise UserError('`testtime trace browse` needs the tui extra: pip install "testtime[tui]"') from exc
        raise
    browse(args.file, follow=args.follow)
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    from testtime.trace.picture import render_file

    if args.max_nodes < 1:
        raise UserError(f"--max-nodes must be >= 1, got {args.max_nodes}")
    out = args.png or args.svg
    drawn = render_file(args.file, out, fmt="png" if args.png else "svg", max_nodes=args.max_nodes)
    print(f"wrote {out}: {drawn.nodes} node(s), chosen path of {len(drawn.chosen)}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from testtime.trace.otel import export_file

    spans = export_file(args.file, endpoint=args.otlp)
    print(f"exported {spans} span(s) from {args.file}")
    return 0
