"""What reading a trace costs: index, browser, picture and OpenTelemetry span plan.

For each trace: its events and search nodes, the seconds to index it
(:class:`~testtime.trace.index.TraceIndex`), to open the Textual browser
headless and expand every row (``e``), to draw the PNG (``trace render``),
and the span count and seconds of the OTel span plan (``trace export``
without the network). Prints a markdown table.

Without FILE arguments it first makes the traces on the seeded simulator,
the way the docs do: ``testtime run "What is 17+25?" --model sim --strategy S
--prm sim:calibrated --budget tokens=400k --seed 1 --trace ...`` (MCTS with
``max_iterations=2000``), in a temporary folder.

Run: ``python bench/trace.py [--budget tokens=400k] [--strategies mcts,beam,...] [FILE.jsonl ...]``.
Needs the ``tui`` extra (textual) and matplotlib (``bench`` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import testtime
from testtime.trace.browse import TraceBrowser
from testtime.trace.index import TraceIndex
from testtime.trace.jsonl import read_events
from testtime.trace.otel import plan_spans
from testtime.trace.picture import render_file

STRATEGIES = ("mcts", "beam", "best_of_n", "particle_filter")
#: Strategy options, so that MCTS keeps going until the budget ends (its default stops at 64 iterations).
OPTIONS = {"mcts": {"max_iterations": 2000}}


def make_traces(folder: Path, strategies: list[str], budget: str) -> list[tuple[str, Path, float]]:
    """Run each strategy on the sim, tracing; returns (label, path, run seconds)."""
    out = []
    for s in strategies:
        path = folder / f"{s}.jsonl"
        t = time.perf_counter()
        testtime.run("What is 17+25?", model="sim", strategy=s, prm="sim:calibrated", budget=budget, seed=1,
                     trace=str(path), strategy_options=OPTIONS.get(s))
        label = s + (" (" + ", ".join(f"{k}={v}" for k, v in OPTIONS[s].items()) + ")" if s in OPTIONS else "")
        out.append((label, path, time.perf_counter() - t))
    return out


async def _browse(path: Path, index: TraceIndex) -> float:
    """Seconds from creating the app to every row expanded and drawn."""
    app = TraceBrowser(path, index=index)
    t = time.perf_counter()
    async with app.run_test(size=(160, 50)) as pilot:
        await pilot.press("e")
        await pilot.pause()
        return time.perf_counter() - t


def measure(path: Path, png: Path) -> dict[str, float]:
    t = time.perf_counter()
    idx = TraceIndex.from_file(path)
    index_s = time.perf_counter() - t
    browse_s = asyncio.run(_browse(path, idx))
    t = time.perf_counter()
    render_file(path, png)
    png_s = time.perf_counter() - t
    events = read_events(path)
    t = time.perf_counter()
    spans = plan_spans(events)
    plan_s = time.perf_counter() - t
    return {"events": len(idx.events), "nodes": len(idx.nodes), "index_s": index_s, "browse_s": browse_s,
            "png_s": png_s, "spans": len(spans), "plan_s": plan_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", metavar="FILE.jsonl", help="traces to measure (default: make them)")
    ap.add_argument("--budget", default="tokens=400k", help="budget of the sim runs (default tokens=400k)")
    ap.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated strategies to run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tt-bench-trace-") as tmp:
        folder = Path(tmp)
        if args.files:
            traces = [(Path(f).name, Path(f), None) for f in args.files]
        else:
            print(f"making traces on the sim, budget {args.budget} ...", flush=True)
            traces = make_traces(folder, [s for s in args.strategies.split(",") if s], args.budget)
        print()
        print("| trace | events | nodes | index s | browser open + expand s | PNG s | spans | span plan s | run s |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for label, path, run_s in traces:
            m = measure(path, folder / (path.stem + ".png"))
            run = "-" if run_s is None else f"{run_s:.2f}"
            print(f"| {label} | {m['events']:,} | {m['nodes']:,} | {m['index_s']:.3f} | {m['browse_s']:.2f} "
                  f"| {m['png_s']:.2f} | {m['spans']:,} | {m['plan_s']:.3f} | {run} |", flush=True)


if __name__ == "__main__":
    main()
