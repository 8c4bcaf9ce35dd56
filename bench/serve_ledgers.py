"""Throughput of the shared ledger stores behind ``testtime serve``; prints a markdown table.

One operation = one ``grant`` (a key and the global scope, total and day
limits) followed by its ``settle``: what every gateway request costs the
store. Rows: memory (one process; "4 workers" = 4 threads sharing it),
SQLite (a WAL file on local disk shared by 4 spawned processes) and Redis (a
private ``redis-server`` on 127.0.0.1, skipped when the binary is missing).
A second set of rows runs with a limit small enough that most grants are
refused, and checks that spent never passed it.

Run: ``python bench/serve_ledgers.py [--seconds 2]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

from testtime.budget import Budget, Usage
from testtime.serve.ledgers import LimitRefused, ScopeLimits, open_store

WORKERS = (1, 4)


def scopes(limit: int) -> list[ScopeLimits]:
    return [ScopeLimits("key:bench0000000", total=Budget(tokens=limit), per_day=Budget(tokens=limit, calls=10**9)),
            ScopeLimits("global", total=Budget(tokens=limit, usd=1e9))]


def loop(url: str, seconds: float, limit: int, store=None) -> tuple[int, int]:
    """Grant + settle for ``seconds``; returns (operations, refusals)."""
    own = store is None
    store = store or open_store(url)
    sc = scopes(limit)
    want = Budget(tokens=500, calls=2, usd=0.01)
    actual = Usage(input_tokens=200, output_tokens=100, calls=1, usd=0.001)
    ops = refused = 0
    end = time.perf_counter() + seconds
    try:
        while time.perf_counter() < end:
            try:
                g = store.grant(sc, want)
            except LimitRefused:
                refused += 1
                ops += 1
                continue
            store.settle(g.id, actual)
            ops += 1
    finally:
        if own:
            store.close()
    return ops, refused


def _proc(url: str, seconds: float, limit: int, start, out) -> None:
    start.wait()
    out.put(loop(url, seconds, limit))


def run(kind: str, url: str, workers: int, seconds: float, limit: int) -> tuple[float, int, float]:
    """(operations/s, refusals, tokens spent on the key) for ``workers`` concurrent workers."""
    if kind == "memory":
        store = open_store(url)
        results: list[tuple[int, int]] = []
        threads = [threading.Thread(target=lambda: results.append(loop(url, seconds, limit, store)))
                   for _ in range(workers)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        spent = store.spent("key:bench0000000")["tokens"]
    else:
        ctx = multiprocessing.get_context("spawn")
        start, out = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_proc, args=(url, seconds, limit, start, out)) for _ in range(workers)]
        for p in procs:
            p.start()
        time.sleep(1.0)  # let the spawned interpreters import testtime before the clock starts
        t0 = time.perf_counter()
        start.set()
        results = [out.get() for _ in procs]
        wall = time.perf_counter() - t0
        for p in procs:
            p.join()
        store = open_store(url)
        spent = store.spent("key:bench0000000")["tokens"]
        store.close()
    ops = sum(r[0] for r in results)
    return ops / wall, sum(r[1] for r in results), spent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="duration of each row")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tt-ledger-bench-"))
    redis_proc = None
    kinds = [("memory", lambda: "memory://"), ("sqlite", lambda: f"sqlite:///{tmp / uuid.uuid4().hex}.db")]
    if shutil.which("redis-server"):
        port = free_port()
        redis_proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no", "--dir", str(tmp)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        time.sleep(0.5)
        kinds.append(("redis", lambda: f"redis://127.0.0.1:{port}/0?prefix=b{uuid.uuid4().hex[:8]}:"))
    else:
        print("redis rows skipped: redis-server not on PATH\n")
    try:
        print(f"grant+settle per second, {args.seconds:g} s per row (cores: {multiprocessing.cpu_count()})\n")
        print("| store | workers | ops/s | vs memory x1 | limit | refused | spent <= limit |")
        print("|---|---|---|---|---|---|---|")
        base = None
        for limit, label in ((10**15, "none hit"), (50_000, "50k tokens")):
            for kind, url in kinds:
                for w in WORKERS:
                    rate, refused, spent = run(kind, url(), w, args.seconds, limit)
                    if base is None:
                        base = rate
                    ok = "yes" if spent <= limit else f"NO ({spent:g})"
                    wl = f"{w} {'threads' if kind == 'memory' and w > 1 else 'process' + ('es' if w > 1 else '')}"
                    print(f"| {kind} | {wl} | {rate:,.0f} | {rate / base:.2f} | {label} | {refused:,} | {ok} |",
                          flush=True)
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
