"""Orchestration overhead and parallel efficiency (numbers go in README).

1. Zero-latency fake model: samples/s through the full stack (ledger
   reservations, self-consistency strategy, tracing to an in-memory sink)
   vs a bare ``asyncio.gather`` over the same fake model. Target: >= 50%.
2. N concurrent samples against a loopback OpenAI-compatible HTTP server with
   a fixed 100 ms latency, through the real ``openai`` backend and the full
   stack (one request per sample): wall time vs one call. Target (issue
   13): <= 1.5x for N = 100. A raw-socket row shows what the server itself
   allows, and a last row the default ``max_concurrency`` (64: two waves).

Run: ``python bench/overhead.py`` (add ``--quick`` for fewer repetitions).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from urllib.parse import urlsplit

from rich.console import Console
from rich.table import Table

import testtime
from testtime.budget import Budget, BudgetLedger
from testtime.context import RunContext
from testtime.models.base import GenerationRequest, Model
from testtime.models.registry import load_model
from testtime.models.scripted import ScriptedModel
from testtime.search.self_consistency import SelfConsistency
from testtime.trace.events import Tracer


async def bare_gather(model: ScriptedModel, n: int, batch: int) -> float:
    """The same model work with nothing around it: n samples, batch per request."""
    req = GenerationRequest(prompt="What is 2+2?", max_tokens=16, n=batch)
    t0 = time.perf_counter()
    await asyncio.gather(*(model.generate(req) for _ in range(n // batch)))
    return time.perf_counter() - t0


async def full_stack(model: Model, n: int, batch: int) -> float:
    """Wall time of n samples through ledger, self-consistency and tracing (to memory)."""
    events: list[object] = []
    ctx = RunContext(model=model, ledger=BudgetLedger(Budget(tokens=10**9)),
                     tracer=Tracer(sinks=[events.append]), max_tokens=16)
    t0 = time.perf_counter()
    result = await testtime.arun("What is 2+2?", strategy=SelfConsistency(n=n, batch=batch), context=ctx)
    elapsed = time.perf_counter() - t0
    if len(result.candidates) != n:
        raise RuntimeError(f"expected {n} candidates, got {len(result.candidates)}")
    return elapsed


def overhead_rows(reps: int) -> list[tuple[str, float, float, float]]:
    """(workload, bare samples/s, stack samples/s, stack / bare) per batch size, medians of ``reps``.

    One untimed run of each first: a process's first run is up to twice as
    slow (cold caches, first allocations) and with ``--quick`` would be half
    the median.
    """
    rows = []
    n = 2000
    for batch in (1, 8):
        warm = ScriptedModel(["The answer is 4."])
        asyncio.run(bare_gather(warm, n, batch))
        asyncio.run(full_stack(warm, n, batch))
        bare, stack = [], []
        for _ in range(reps):
            model = ScriptedModel(["The answer is 4."])
            bare.append(asyncio.run(bare_gather(model, n, batch)))
            stack.append(asyncio.run(full_stack(model, n, batch)))
        b, s = statistics.median(bare), statistics.median(stack)
        rows.append((f"{n} samples, {batch}/request", n / b, n / s, b / s))
    return rows


async def _raw_streams(base_url: str, n: int) -> float:
    """n streamed requests over n already-open raw sockets: what the server itself allows."""
    parts = urlsplit(base_url)
    body = json.dumps({"model": "loopback", "messages": [{"role": "user", "content": "What is 2+2?"}],
                       "max_tokens": 16, "stream": True}).encode()
    head = (f"POST {parts.path}/chat/completions HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    conns = [await asyncio.open_connection(parts.hostname, parts.port) for _ in range(n)]

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(head + body)
        await reader.readuntil(b"data: [DONE]")
        await reader.readuntil(b"0\r\n\r\n")  # the chunked stream's end

    await asyncio.gather(*(one(r, w) for r, w in conns))  # warm
    t0 = time.perf_counter()
    await asyncio.gather(*(one(r, w) for r, w in conns))
    wall = time.perf_counter() - t0
    for _, w in conns:
        w.close()
    return wall


async def _parallel(base_url: str, reps: int) -> list[tuple[str, float, float]]:
    # max_concurrency=100 so that 100 requests are in flight at once (the
    # default, 64, sends 100 in two waves: the last row shows it).
    model = load_model("openai:loopback", base_url=base_url, api_key="test-key-not-real", max_concurrency=100)
    native = load_model("openai:loopback", base_url=base_url, api_key="test-key-not-real", native_n=True)
    default = load_model("openai:loopback", base_url=base_url, api_key="test-key-not-real")
    # Warm the connection pool to the largest N, as a long-running service would be.
    await full_stack(model, 100, 1)
    await full_stack(default, 100, 1)
    one = statistics.median([await full_stack(model, 1, 1) for _ in range(reps)])
    rows = []
    raw = statistics.median([await _raw_streams(base_url, 100) for _ in range(reps)])
    rows.append(("100 requests, raw sockets (no client)", raw, raw / one))
    for n in (1, 10, 100):
        wall = statistics.median([await full_stack(model, n, 1) for _ in range(reps)])
        rows.append((f"{n} requests", wall, wall / one))
    for n in (10, 100):
        wall = statistics.median([await full_stack(native, n, batch=n) for _ in range(reps)])
        rows.append((f"1 request, n={n} (native n)", wall, wall / one))
    wall = statistics.median([await full_stack(default, 100, 1) for _ in range(reps)])
    rows.append(("100 requests, default max_concurrency=64", wall, wall / one))
    for m in (model, native, default):
        await m.aclose()
    return rows


def parallel_rows(reps: int) -> list[tuple[str, float, float]]:
    """The server runs in its own process so it does not share our GIL."""
    proc = subprocess.Popen([sys.executable, "-m", "testtime.testing.loopback", "--latency", "0.1",
                             "--reply", "The answer is 4."], stdout=subprocess.PIPE, text=True)
    try:
        if proc.stdout is None:
            raise RuntimeError("loopback server did not start")
        base_url = proc.stdout.readline().strip()
        return asyncio.run(_parallel(base_url, reps))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    reps = 2 if args.quick else 5
    console = Console()

    t = Table(title="Orchestration overhead, zero-latency fake model (median of runs)")
    for col in ("workload", "bare gather samples/s", "full stack samples/s", "stack / bare"):
        t.add_column(col, justify="right")
    for name, bare, stack, ratio in overhead_rows(reps):
        t.add_row(name, f"{bare:,.0f}", f"{stack:,.0f}", f"{ratio:.0%}")
    console.print(t)

    p = Table(title="Parallel efficiency, loopback server with 100 ms latency (openai backend)")
    for col in ("N samples as", "wall (s)", "wall / one call"):
        p.add_column(col, justify="right")
    for label, wall, ratio in parallel_rows(reps):
        p.add_row(label, f"{wall:.3f}", f"{ratio:.2f}x")
    console.print(p)


if __name__ == "__main__":
    main()
