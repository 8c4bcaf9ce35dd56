"""LangGraph overhead of the orchestrator (numbers go in docs/orchestrator.md).

1. Per-step overhead: a linear StateGraph of trivial async nodes, run without a
   checkpointer, with LangGraph's in-memory saver, and with the SQLite saver
   (durability="sync", what ``testtime`` uses): microseconds per step.
2. A 3-stage workflow (plan -> solve -> check, one call per stage) on a model
   with 50 ms latency -- a FunctionModel that sleeps 50 ms per call
   (asyncio.sleep(0.05)), not an HTTP server -- with and without
   checkpoints: orchestration overhead = (wall - 3 x 50 ms) / wall.

Run: ``python bench/graph_overhead.py`` (``--quick`` for fewer repetitions).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import TypedDict

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from rich.console import Console
from rich.table import Table

from testtime.models.scripted import FunctionModel
from testtime.orchestrator import Workflow
from testtime.orchestrator.checkpoint import open_checkpointer

LATENCY = 0.05


class _S(TypedDict):
    x: int


def _chain(steps: int) -> StateGraph:
    g = StateGraph(_S)

    async def step(state: _S) -> dict:
        return {"x": state["x"] + 1}

    for i in range(steps):
        g.add_node(f"n{i}", step)
        g.add_edge(START if i == 0 else f"n{i - 1}", f"n{i}")
    g.add_edge(f"n{steps - 1}", END)
    return g


async def per_step_us(kind: str, steps: int, reps: int) -> float:
    g = _chain(steps)
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "sqlite":
            async with open_checkpointer(Path(tmp) / "b.sqlite") as saver:
                app = g.compile(checkpointer=saver)
                for r in range(reps):
                    t0 = time.perf_counter()
                    await app.ainvoke({"x": 0}, {"configurable": {"thread_id": f"t{r}"}}, durability="sync")
                    times.append(time.perf_counter() - t0)
        else:
            app = g.compile(checkpointer=InMemorySaver() if kind == "memory" else None)
            for r in range(reps):
                t0 = time.perf_counter()
                cfg = {"configurable": {"thread_id": f"t{r}"}} if kind == "memory" else None
                await app.ainvoke({"x": 0}, cfg)
                times.append(time.perf_counter() - t0)
    return statistics.median(times) / steps * 1e6


def _workflow() -> Workflow:
    model = FunctionModel(lambda r: "The answer is 4.", name="sleepy", latency=LATENCY)
    wf = Workflow("bench", model=model, budget="tokens=100000", seed=0)
    wf.stage("plan", "Plan {inputs.q}")
    wf.stage("solve", "{inputs.q} {stages.plan.text}")
    wf.stage("check", "Check {stages.solve.answer}")
    return wf


async def workflow_overhead(checkpoint: bool, reps: int) -> tuple[float, float]:
    walls = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(reps):
            wf = _workflow()
            t0 = time.perf_counter()
            await wf.arun({"q": "2+2?"}, checkpoint=Path(tmp) / "w.sqlite" if checkpoint else None,
                          run_id=f"r{r}")
            walls.append(time.perf_counter() - t0)
    wall = statistics.median(walls)
    return wall, (wall - 3 * LATENCY) / wall


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    reps = 5 if args.quick else 20
    steps = 50
    console = Console()
    t1 = Table(title=f"LangGraph per-step overhead ({steps}-node chain, median of {reps})")
    t1.add_column("checkpointer")
    t1.add_column("µs / step", justify="right")
    for kind in ("none", "memory", "sqlite"):
        t1.add_row(kind if kind != "sqlite" else "sqlite (durability=sync)", f"{await per_step_us(kind, steps, reps):,.0f}")
    console.print(t1)
    t2 = Table(title=f"3-stage workflow, model latency {LATENCY * 1000:.0f} ms/call (median of {reps})")
    for col in ("checkpoints", "wall ms", "model ms", "overhead ms", "overhead share"):
        t2.add_column(col, justify="right")
    for ck in (False, True):
        wall, share = await workflow_overhead(ck, reps)
        t2.add_row("sqlite" if ck else "off", f"{wall * 1000:.1f}", f"{3 * LATENCY * 1000:.0f}",
                   f"{(wall - 3 * LATENCY) * 1000:.1f}", f"{share:.1%}")
    console.print(t2)


if __name__ == "__main__":
    asyncio.run(main())
