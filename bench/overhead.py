"""Orchestration overhead and parallel efficiency (numbers go in README).

1. Zero-latency fake model: samples/s through the full stack (ledger
   reservations, self-consistency strategy, tracing to an in-memory sink)
   vs a bare ``asyncio.gather`` over the same fake model. Target: >= 50%.
2. N concurrent samples against a loopback OpenAI-compatible HTTP server with
   a fixed 100 ms latency, through the real ``openai`` backend and the full
   stack (one request per sample): wall time vs one call. Target (issue
   13): <= 1.5x for N = 100. A raw-socket row shows what the server itself
   allows, and a last row the default ``max_concurrency`` (64: two waves).
3. Between them, where a sample's time goes at 1 sample/request: the bare
   model work, then the strategy and its tree, the spend path, the events.

Run: ``python bench/overhead.py`` (add ``--quick`` for fewer repetitions;
``--profile`` prints only where one 1-sample/request run spends its time).
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


async def full_stack(model: Model, n: int, batch: int, *, traced: bool = True) -> float:
    """Wall time of n samples through ledger, self-consistency and tracing (to memory).

    ``traced=False``: no trace sink (events are not built), to show their share.
    """
    events: list[object] = []
    ctx = RunContext(model=model, ledger=BudgetLedger(Budget(tokens=10**9)),
                     tracer=Tracer(sinks=[events.append] if traced else []), max_tokens=16)
    t0 = time.perf_counter()
    result = await testtime.arun("What is 2+2?", strategy=SelfConsistency(n=n, batch=batch), context=ctx)
    elapsed = time.perf_counter() - t0
    if len(result.candidates) != n:
        raise RuntimeError(f"expected {n} candidates, got {len(result.candidates)}")
    return elapsed


class UnaccountedContext(RunContext):
    """A run context whose calls go straight to the model: no reservation,
    settlement, retry loop or ``model_call`` event. Only for the breakdown
    below (what the strategy and its search tree cost on their own)."""

    async def generate(self, request: GenerationRequest, *, role: str = "solve",
                       model: Model | None = None) -> list:
        return await (model or self.model).generate(request)


async def strategy_only(model: Model, n: int) -> float:
    """Wall time of n samples through self-consistency (candidates, vote, search tree) alone."""
    ctx = UnaccountedContext(model=model, tracer=Tracer(sinks=[]), max_tokens=16)
    t0 = time.perf_counter()
    result = await testtime.arun("What is 2+2?", strategy=SelfConsistency(n=n, batch=1), context=ctx)
    elapsed = time.perf_counter() - t0
    if len(result.candidates) != n:
        raise RuntimeError(f"expected {n} candidates, got {len(result.candidates)}")
    return elapsed


class GCClock:
    """Seconds the cyclic garbage collector ran while installed (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._start


def breakdown_rows(reps: int) -> list[tuple[str, float, float]]:
    """(layers, µs per sample, of which garbage collection) at 1 sample/request, layer by
    layer (interleaved, medians of ``reps``)."""
    import gc

    n = 2000
    runs = {
        "bare gather (the model's own work)": lambda m: bare_gather(m, n, 1),
        "+ self-consistency and its search tree (no ledger, no events)": lambda m: strategy_only(m, n),
        "+ the spend path (reserve, settle, retry loop), no trace sink": lambda m: full_stack(m, n, 1, traced=False),
        "+ trace events to an in-memory sink (the full stack)": lambda m: full_stack(m, n, 1),
    }
    times: dict[str, list[float]] = {label: [] for label in runs}
    collecting: dict[str, list[float]] = {label: [] for label in runs}
    for run in runs.values():  # one untimed run each
        asyncio.run(run(ScriptedModel(["The answer is 4."])))
    clock = GCClock()
    gc.callbacks.append(clock)
    try:
        for _ in range(reps):
            for label, run in runs.items():
                before = clock.seconds
                times[label].append(asyncio.run(run(ScriptedModel(["The answer is 4."]))))
                collecting[label].append(clock.seconds - before)
    finally:
        gc.callbacks.remove(clock)
    return [(label, statistics.median(times[label]) / n * 1e6, statistics.median(collecting[label]) / n * 1e6)
            for label in runs]


def profile_one_per_request(top: int = 15) -> None:
    """Print the functions that own the most time in one 2,000-sample, 1/request full-stack run."""
    import cProfile
    import pstats

    model = ScriptedModel(["The answer is 4."])
    asyncio.run(full_stack(model, 2000, 1))  # warm
    profiler = cProfile.Profile()
    profiler.enable()
    asyncio.run(full_stack(model, 2000, 1))
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]  # type: ignore[attr-defined]
    t = Table(title=f"Own time per function, 2000 samples at 1/request under cProfile ({total * 1e3:.0f} ms in all)")
    for col in ("function", "calls", "own ms", "share of run"):
        t.add_column(col, justify="right")
    for (path, line, name), (_, calls, own, _, _) in rows:
        t.add_row(f"{path.rsplit('/', 1)[-1]}:{line} {name}", str(calls), f"{own * 1e3:.1f}", f"{own / total:.1%}")
    Console().print(t)


def overhead_rows(reps: int) -> list[tuple[str, float, float, float]]:
    """(workload, bare samples/s, stack samples/s, stack / bare) per batch size, medians of ``reps``.

    One untimed run of each first: a process's first run is up to twice as
    slow (cold caches, first allocations) and with ``--quick`` would be half
    the median. A last row runs 1/request with no trace sink.
    """
    rows = []
    n = 2000
    for batch, traced in ((1, True), (8, True), (1, False)):
        warm = ScriptedModel(["The answer is 4."])
        asyncio.run(bare_gather(warm, n, batch))
        asyncio.run(full_stack(warm, n, batch, traced=traced))
        bare, stack = [], []
        for _ in range(reps):
            model = ScriptedModel(["The answer is 4."])
            bare.append(asyncio.run(bare_gather(model, n, batch)))
            stack.append(asyncio.run(full_stack(model, n, batch, traced=traced)))
        b, s = statistics.median(bare), statistics.median(stack)
        label = f"{n} samples, {batch}/request" + ("" if traced else ", no trace sink")
        rows.append((label, n / b, n / s, b / s))
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


async def _timed(model: Model, n: int, batch: int, reps: int) -> tuple[float, float]:
    """Median wall seconds of ``full_stack(model, n, batch)`` and median client CPU ms per request."""
    walls, cpus = [], []
    requests = n // batch
    for _ in range(reps):
        c0 = time.process_time()
        walls.append(await full_stack(model, n, batch))
        cpus.append((time.process_time() - c0) * 1000 / requests)
    return statistics.median(walls), statistics.median(cpus)


async def _parallel(base_url: str, reps: int) -> list[tuple[str, float, float, float | None]]:
    # max_concurrency=100 so that 100 requests are in flight at once (the
    # default, 64, sends 100 in two waves: the last row shows it).
    key = "test-key-not-real"
    model = load_model("openai:loopback", base_url=base_url, api_key=key, max_concurrency=100)
    via_httpx = load_model("openai:loopback", base_url=base_url, api_key=key, max_concurrency=100)
    native = load_model("openai:loopback", base_url=base_url, api_key=key, native_n=True)
    default = load_model("openai:loopback", base_url=base_url, api_key=key)
    # Warm the connection pools to the largest N, as a long-running service would be.
    await full_stack(model, 100, 1)
    await full_stack(default, 100, 1)
    # The httpx path is the one taken behind a proxy; make this client take it
    # (the client is built on the first call) without routing through one.
    # Imported here, not at the top: importing httpx early grows the heap that
    # the first table's full garbage collections walk (8/request: 51% -> 40%).
    from testtime.models import http11

    real_proxy_for = http11.proxy_for
    http11.proxy_for = lambda url: "bench: take the httpx path"
    try:
        await full_stack(via_httpx, 100, 1)
    finally:
        http11.proxy_for = real_proxy_for
    if not via_httpx._clients[0].via_proxy:
        raise RuntimeError("the httpx comparison row did not take the httpx path")
    one, _ = await _timed(model, 1, 1, reps)
    rows: list[tuple[str, float, float, float | None]] = []
    raw = statistics.median([await _raw_streams(base_url, 100) for _ in range(reps)])
    rows.append(("100 requests, raw sockets (no client)", raw, raw / one, None))
    for n in (1, 10, 100):
        wall, cpu = await _timed(model, n, 1, reps)
        rows.append((f"{n} requests", wall, wall / one, cpu))
    wall, cpu = await _timed(via_httpx, 100, 1, reps)
    rows.append(("100 requests over httpx (the proxy path)", wall, wall / one, cpu))
    for n in (10, 100):
        wall, cpu = await _timed(native, n, n, reps)
        rows.append((f"1 request, n={n} (native n)", wall, wall / one, cpu))
    wall, cpu = await _timed(default, 100, 1, reps)
    rows.append(("100 requests, default max_concurrency=64", wall, wall / one, cpu))
    for m in (model, via_httpx, native, default):
        await m.aclose()
    return rows


def parallel_rows(reps: int) -> list[tuple[str, float, float, float | None]]:
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
    parser.add_argument("--profile", action="store_true",
                        help="only profile one 1-sample/request full-stack run (cProfile, top functions by own time)")
    args = parser.parse_args()
    if args.profile:
        profile_one_per_request()
        return
    reps = 2 if args.quick else 5
    console = Console()

    t = Table(title="Orchestration overhead, zero-latency fake model (median of runs)")
    for col in ("workload", "bare gather samples/s", "full stack samples/s", "stack / bare", "bare µs/sample", "stack µs/sample"):
        t.add_column(col, justify="right")
    for name, bare, stack, ratio in overhead_rows(reps):
        t.add_row(name, f"{bare:,.0f}", f"{stack:,.0f}", f"{ratio:.0%}", f"{1e6 / bare:.1f}", f"{1e6 / stack:.1f}")
    console.print(t)

    b = Table(title="Where a sample's time goes, 1 sample/request (median of runs)")
    for col in ("layers", "µs / sample", "added by the layer", "of which garbage collection µs"):
        b.add_column(col, justify="right")
    last = 0.0
    for label, us, gc_us in breakdown_rows(reps):
        b.add_row(label, f"{us:.1f}", "-" if not last else f"{us - last:+.1f}", f"{gc_us:.1f}")
        last = us
    console.print(b)

    p = Table(title="Parallel efficiency, loopback server with 100 ms latency (openai backend)")
    for col in ("N samples as", "wall (s)", "wall / one call", "client CPU ms / request"):
        p.add_column(col, justify="right")
    for label, wall, ratio, cpu in parallel_rows(reps):
        p.add_row(label, f"{wall:.3f}", f"{ratio:.2f}x", "-" if cpu is None else f"{cpu:.2f}")
    console.print(p)


if __name__ == "__main__":
    main()
