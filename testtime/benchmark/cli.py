"""``testtime bench``: strategies compared at matched budgets on a dataset, HumanEval or the simulator.

::

    testtime bench --dataset SRC --model SPEC [--strategies a,b] [--budgets tokens=2k,8k,32k | usd=...]
                   [--verifier SPEC] [--prm SPEC] [--problems N] [--seeds 0,1,2] [--concurrency K]
                   [--out DIR] [--fresh] [--sweep-budget usd=5] [--executor local|ray]
                   [--ray-address ADDR] [--json]
    testtime bench report DIR          # redraw report.md / report.json / plots from DIR/results.jsonl
    testtime bench --sim [--suite S]   # = --dataset sim:S (the simulator through the same path)

See :mod:`testtime.benchmark.sweep` and ``docs/benchmark.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from typing import Any

from testtime.errors import UserError

#: Problems per cell group of a simulator sweep when --problems is not given.
SIM_DEFAULT_PROBLEMS = 30


def register(subparsers: Any) -> None:
    """Add ``bench`` to the ``testtime`` command."""
    p = subparsers.add_parser(
        "bench", help="compare strategies at matched budgets on a dataset, HumanEval or the simulator "
                      "(`bench report DIR` redraws a report)")
    p.add_argument("action", nargs="*", metavar="report DIR", help="`report DIR`: redraw the report of a store")
    p.add_argument("--dataset", default=None, metavar="SRC",
                   help="JSONL/CSV/Parquet file or directory, humaneval, or sim:SUITE")
    p.add_argument("--sim", action="store_true", help="alias of --dataset sim:SUITE (suite from --suite)")
    p.add_argument("--suite", default="calibrated", help="simulator suite for --sim (default calibrated)")
    p.add_argument("--model", default=None, help="model spec (local, openai:MODEL, vllm:MODEL, ...); "
                   "sim datasets default to the suite's policy")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible server for --model openai:NAME")
    p.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                   help="backend option for --model, repeatable (e.g. n_threads=1 for local)")
    p.add_argument("--strategies", default=None,
                   help="comma-separated (default single,self_consistency,best_of_n; sim: every strategy)")
    p.add_argument("--budgets", default=None,
                   help="per-cell budgets: tokens=2k,8k,32k (default) or usd=0.001,0.01; '+' joins limits")
    p.add_argument("--verifier", default=None, help="outcome verifier the strategies use (math, genrm:MODEL, ...)")
    p.add_argument("--prm", default=None, help="process reward model the strategies use (prm:llm:MODEL, ...)")
    p.add_argument("--problems", type=int, default=None, help="first N problems (default all; sim: 30)")
    p.add_argument("--seeds", default=None, help="sampling seeds, e.g. 0,1,2 (default 0)")
    p.add_argument("--seed", type=int, default=None, help=argparse.SUPPRESS)  # old --sim flag: --seeds S
    p.add_argument("--concurrency", type=int, default=4, help="cells in flight at once (default 4)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="results store + report directory (default bench-results/NAME; sim: a temporary one)")
    p.add_argument("--fresh", action="store_true", help="discard DIR's results instead of resuming")
    p.add_argument("--sweep-budget", default=None, metavar="LIMITS",
                   help="cap on the whole sweep, e.g. usd=5 or tokens=2M (cells that do not fit do not start)")
    p.add_argument("--executor", default="local", choices=("local", "ray"), help="local asyncio (default) or ray")
    p.add_argument("--ray-address", default=None, help="existing Ray cluster (default: a local runtime)")
    p.add_argument("--question-field", default=None, help="dataset field holding the question")
    p.add_argument("--answer-field", default=None, help="dataset field holding the reference answer")
    p.add_argument("--max-tokens", type=int, default=None, help="max tokens of one solution")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature")
    p.add_argument("--option", "-o", action="append", default=[], metavar="STRATEGY.KEY=VALUE",
                   help="strategy option, repeatable (e.g. -o beam.beam_width=4)")
    p.add_argument("--traces", action="store_true", help="write one JSONL trace per cell to DIR/traces/")
    p.add_argument("--price", action="append", default=[], metavar="MODEL=IN,OUT[,CACHED]",
                   help="price in USD per 1M tokens, repeatable (as on `run`)")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end (no progress bar)")
    p.set_defaults(func=_cmd_bench)


def _strategy_options(pairs: list[str]) -> dict[str, dict[str, Any]]:
    from testtime.cli import parse_options

    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, sep, _ = pair.partition("=")
        strategy, dot, name = key.partition(".")
        if not sep or not dot or not strategy.strip() or not name.strip():
            raise UserError(f"bad --option {pair!r}: expected STRATEGY.KEY=VALUE (e.g. best_of_n.n=8)")
        opt = parse_options([f"{name}={pair.partition('=')[2]}"])
        out.setdefault(strategy.strip().lower().replace("-", "_"), {}).update(opt)
    return out


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.action:
        if args.action[0] != "report" or len(args.action) != 2:
            raise UserError(f"testtime bench: unexpected {' '.join(args.action)!r}; use `testtime bench report DIR` "
                            "or `testtime bench --dataset SRC --model SPEC`")
        return _cmd_report(args.action[1], as_json=args.json)
    if args.sim and args.dataset:
        raise UserError("give --dataset or --sim, not both (--sim is --dataset sim:SUITE)")
    dataset = f"sim:{args.suite}" if args.sim else args.dataset
    if not dataset:
        raise UserError("testtime bench needs --dataset SRC (a JSONL/CSV/Parquet file or directory, humaneval, "
                        "or sim:SUITE), or `testtime bench report DIR`")
    if args.price:
        from testtime.models.prices import apply_price_args

        apply_price_args(args.price)
    if args.seeds is not None and args.seed is not None:
        raise UserError("give --seeds (or the old --seed), not both")
    seeds = args.seeds if args.seeds is not None else (str(args.seed) if args.seed is not None else None)
    is_sim = dataset.lower().startswith("sim")
    problems = args.problems if args.problems is not None else (SIM_DEFAULT_PROBLEMS if is_sim else None)
    temp_out = None
    out = args.out
    if out is None:
        if is_sim:
            temp_out = out = tempfile.mkdtemp(prefix="testtime-bench-")
        else:
            from pathlib import Path

            out = str(Path("bench-results") / _slug(dataset, args.model))
    from testtime.benchmark.progress import SweepProgress
    from testtime.benchmark.sweep import SweepSpec, run_sweep
    from testtime.cli import parse_options

    spec = SweepSpec(dataset=dataset, model=args.model, strategies=args.strategies, budgets=args.budgets,
                     seeds=seeds, problems=problems, verifier=args.verifier, prm=args.prm,
                     options=_strategy_options(args.option), max_tokens=args.max_tokens,
                     temperature=args.temperature, base_url=args.base_url,
                     model_options=parse_options(args.model_option, "--model-option"), question_field=args.question_field,
                     answer_field=args.answer_field, concurrency=args.concurrency, out=out, fresh=args.fresh,
                     sweep_budget=args.sweep_budget, executor=args.executor, ray_address=args.ray_address,
                     traces=args.traces)
    try:
        with SweepProgress(enabled=False if args.json else None) as progress:
            outcome = run_sweep(spec, on_row=progress.on_row, on_plan=lambda plan: progress.start(len(plan.todo)))
        report = json.loads((outcome.out / "report.json").read_text())
    finally:
        if temp_out is not None:
            shutil.rmtree(temp_out, ignore_errors=True)
    if args.json:
        print(json.dumps({**report, "run": outcome.to_dict()}, indent=2))
    else:
        _render(report)
        for note in outcome.notes:
            print(f"note: {note}")
        for err in outcome.errors[:10]:
            print(f"error (not stored; a rerun retries it): {err}", file=sys.stderr)
        done = outcome.total - outcome.skipped
        print(f"{outcome.ran} of {done} cells run, {outcome.skipped} already done, {len(outcome.errors)} failed; "
              + (f"store and report in {outcome.out}/" if temp_out is None else "temporary store removed "
                 "(pass --out DIR to keep it and the plots)"))
    if outcome.stopped:
        print(f"stopped: {outcome.stopped}", file=sys.stderr)
    return 1 if outcome.errors and not outcome.ran else 0


def _slug(dataset: str, model: str | None) -> str:
    import re
    from pathlib import Path

    base = Path(dataset).stem if not dataset.lower().startswith(("sim", "humaneval")) else dataset
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{base}-{model or 'policy'}").strip("_")


def _cmd_report(directory: str, *, as_json: bool) -> int:
    from testtime.benchmark.report import write_report
    from testtime.benchmark.store import ResultsStore

    store = ResultsStore(directory)
    report = write_report(store)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        _render(report)
        print(f"report.md, report.json and {len(report['plots'])} plots written to {store.dir}/")
    return 0


def _render(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if console.width < 160:  # piped output defaults to 80 columns, which would cut strategy names
        console = Console(width=160)
    table = Table(title=f"testtime bench {report['dataset']} ({report['cells']} cells, model {report.get('model')})")
    width = max((len(s) for s in report["strategies"]), default=8)
    table.add_column("strategy", no_wrap=True, min_width=width)
    table.add_column("budget", no_wrap=True)
    for col in ("cells", "accuracy", "95% CI", "mean tokens", "mean $", "mean s", "verify tokens", "budget hit",
                "max spend/limit"):
        table.add_column(col, justify="right")
    last = None
    for r in report["rows"]:
        if last is not None and r["strategy"] != last:
            table.add_section()
        last = r["strategy"]
        table.add_row(r["strategy"], r["budget"], str(r["cells"]), f"{r['accuracy']:.3f}",
                      f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]", f"{r['mean_tokens']:,.0f}", f"{r['mean_usd']:.5f}",
                      f"{r['mean_seconds']:.2f}", f"{r['verify_tokens']:,}", f"{r['budget_exhausted']}/{r['cells']}",
                      f"{r['max_spend_ratio']:.3f}")
    console.print(table)
    match = report.get("match_best_of_n") or []
    if match:
        m = Table(title="spend to reach best_of_n's accuracy (ratio to best_of_n's; n/a: never reached)")
        for col in ("strategy", "best_of_n budget", "target", "tokens ratio", "usd ratio"):
            m.add_column(col)
        for e in match:
            m.add_row(e["strategy"], e["reference_budget"], f"{e['target_accuracy']:.3f}",
                      _ratio(e, "tokens"), _ratio(e, "usd"))
        console.print(m)


def _ratio(e: dict[str, Any], unit: str) -> str:
    r = e.get(f"{unit}_ratio")
    return "n/a" if r is None else f"{'' if e.get(f'{unit}_exact') else '<='}{r:.2f}x"
