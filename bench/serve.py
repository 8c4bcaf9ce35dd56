"""What the gateway costs: ``testtime serve`` vs calling the upstream directly (numbers go in README).

A loopback OpenAI-compatible upstream answers instantly (``--latency`` to
add a fixed delay); the gateway runs as a real ``testtime serve`` subprocess
in front of it. Measured with the official ``openai`` SDK as the client:

1. latency: N sequential requests straight to the upstream vs through the
   gateway with strategy ``single`` (one upstream call per request): p50 and
   p99, and the difference (the gateway's overhead per request);
2. throughput: requests/s with 100 concurrent clients, direct and through
   the gateway;
3. limits: a storm of concurrent requests against a key limited to
   ``--limit`` tokens: requests admitted / refused (429), and the
   over-budget count -- responses that spent more than they were granted,
   plus 1 if the upstream's own token count passed the key's limit. It must
   be 0.

Run: ``python bench/serve.py`` (``--quick`` for fewer requests; ``--workers 4
--store sqlite:///tmp/l.db`` to measure several worker processes).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai
from rich.console import Console
from rich.table import Table

from testtime.serve.keys import hash_key
from testtime.testing.loopback import LoopbackOpenAIServer

ROOT = Path(__file__).resolve().parents[1]
MESSAGES = [{"role": "user", "content": "What is 2+2?"}]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_gateway(upstream: str, config: Path, workers: int, store: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, "-m", "testtime.cli", "serve", "--model", "openai:loopback", "--base-url", upstream,
           "--port", str(port), "--config", str(config), "--workers", str(workers), "--store", store,
           "--log-level", "warning"]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"testtime serve did not start (exit {proc.poll()})")
        time.sleep(0.1)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def latencies(base_url: str, key: str, n: int, extra: dict | None) -> list[float]:
    c = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
    out = []
    for i in range(n + 5):
        t0 = time.perf_counter()
        c.chat.completions.create(model="loopback", messages=MESSAGES, max_tokens=16, extra_body=extra)
        if i >= 5:  # the first few warm connection pools
            out.append(time.perf_counter() - t0)
    c.close()
    return out


async def throughput(base_url: str, key: str, total: int, clients: int, extra: dict | None) -> tuple[float, int]:
    """(requests/s, requests that failed) for ``total`` requests from ``clients`` concurrent clients."""
    c = openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0,
                           http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=clients), timeout=300))
    sem = asyncio.Semaphore(clients)

    async def one() -> None:
        async with sem:
            await c.chat.completions.create(model="loopback", messages=MESSAGES, max_tokens=16, extra_body=extra)

    await asyncio.gather(*(one() for _ in range(min(clients, total))), return_exceptions=True)  # warm-up
    t0 = time.perf_counter()
    results = await asyncio.gather(*(one() for _ in range(total)), return_exceptions=True)
    dt = time.perf_counter() - t0
    await c.close()
    return total / dt, sum(isinstance(r, BaseException) for r in results)


async def storm(url: str, key: str, count: int) -> list[httpx.Response]:
    body = {"model": "loopback", "max_tokens": 50, "messages": MESSAGES,
            "testtime": {"strategy": "self_consistency", "budget": "tokens=600", "options": {"n": 2}}}
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=count)) as c:
        return await asyncio.gather(*(c.post(url + "/v1/chat/completions", json=body,
                                             headers={"Authorization": f"Bearer {key}"}) for _ in range(count)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests")
    ap.add_argument("--latency", type=float, default=0.0, help="upstream latency per request, seconds")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--store", default=None, help="ledger store URL (default memory://, sqlite with workers)")
    ap.add_argument("--limit", type=int, default=20000, help="the storm key's token limit")
    args = ap.parse_args()
    n, total, storm_n = (60, 300, 100) if args.quick else (300, 2000, 300)
    tmp = Path(tempfile.mkdtemp(prefix="tt-bench-serve-"))
    store = args.store or (f"sqlite:///{tmp / 'ledger.db'}" if args.workers > 1 else "memory://")
    key, storm_key = "tt-bench-" + secrets.token_hex(12), "tt-bench-" + secrets.token_hex(12)
    cfg = tmp / "serve.yaml"
    cfg.write_text(
        "defaults: {strategy: single, budget: tokens=2000}\n"
        f"keys:\n  - {{name: bench, hash: '{hash_key(key)}', limits: {{total: tokens=1G}}}}\n"
        f"  - {{name: storm, hash: '{hash_key(storm_key)}', limits: {{total: tokens={args.limit}}}}}\n")
    single = {"testtime": {"strategy": "single"}}
    console = Console()
    with LoopbackOpenAIServer(reply="The answer is 4.", latency=args.latency) as up:
        proc, url = start_gateway(up.base_url, cfg, args.workers, store)
        try:
            direct = latencies(up.base_url, "unused", n, None)
            via = latencies(url + "/v1", key, n, single)
            rps_direct = asyncio.run(throughput(up.base_url, "unused", total, 100, None))
            rps_via = asyncio.run(throughput(url + "/v1", key, total, 100, single))
            up.reset_counts()
            responses = asyncio.run(storm(url, storm_key, storm_n))
            served = up.served
        finally:
            proc.terminate()
            proc.wait(30)
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    over = sum(r.json()["usage"]["total_tokens"] > r.json()["testtime"]["budget"].get("tokens", float("inf"))
               for r in ok) + int(served.tokens > args.limit)

    t = Table(title=f"testtime serve vs direct (workers={args.workers}, store={store.split('://')[0]}, "
                    f"upstream latency {args.latency * 1000:.0f} ms)")
    t.add_column("measure")
    t.add_column("direct", justify="right")
    t.add_column("via gateway", justify="right")
    t.add_column("gateway - direct", justify="right")
    for label, q in (("p50 latency (ms), strategy single", 0.5), ("p99 latency (ms), strategy single", 0.99)):
        d, v = pct(direct, q) * 1000, pct(via, q) * 1000
        t.add_row(label, f"{d:.2f}", f"{v:.2f}", f"{v - d:+.2f}")
    t.add_row("mean latency (ms)", f"{statistics.mean(direct) * 1000:.2f}", f"{statistics.mean(via) * 1000:.2f}",
              f"{(statistics.mean(via) - statistics.mean(direct)) * 1000:+.2f}")
    t.add_row("requests/s, 100 concurrent clients", f"{rps_direct[0]:.0f}", f"{rps_via[0]:.0f}",
              f"x{rps_via[0] / rps_direct[0]:.2f}")
    t.add_row("failed requests in that run", str(rps_direct[1]), str(rps_via[1]), "")
    console.print(t)
    s = Table(title=f"{storm_n} concurrent requests, key limited to tokens={args.limit} "
                    "(self_consistency n=2, budget tokens=600 each)")
    for col in ("admitted (200)", "refused (429)", "other", "upstream tokens", "limit", "over-budget (must be 0)"):
        s.add_column(col, justify="right")
    s.add_row(str(len(ok)), str(len(refused)), str(len(responses) - len(ok) - len(refused)), str(served.tokens),
              str(args.limit), str(over))
    console.print(s)
    if over:
        raise SystemExit("over-budget responses: the limit did not hold")


if __name__ == "__main__":
    main()
