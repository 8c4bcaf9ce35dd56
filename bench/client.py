"""Client CPU of ``testtime run`` over an OpenAI-compatible server vs a bare SDK script.

The loopback server (:mod:`testtime.testing.loopback`) runs in its own
process, so its work is not counted. Each client runs as a child process and
its CPU (user + system, from ``resource.getrusage(RUSAGE_CHILDREN)``) is what
the table shows -- imports, client set-up and the 8 requests, everything the
machine's model server would lose to the client on a small box.

Rows:

* ``bare openai SDK``: one ``AsyncOpenAI`` and 8 concurrent chat requests;
* ``python -c 'import testtime.cli'``: the import cost alone;
* ``testtime run --n 8``: the full CLI (self-consistency, ledger, JSON out);
* ``testtime run --n 8 (native n)``: the same against a server that says it
  is vLLM (one request with n=8).

Interleaved rounds, medians. Target: ``testtime run`` <= 0.4 s for 8 samples.
Run: ``python bench/client.py [--rounds 7]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

BARE = """
import asyncio, sys
from openai import AsyncOpenAI
async def main():
    client = AsyncOpenAI(base_url=sys.argv[1], api_key="not-needed", max_retries=0)
    async def one(i):
        r = await client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "What is 2+2?"}],
                                                 max_tokens=64, temperature=0.8, seed=i)
        return r.choices[0].message.content
    print(await asyncio.gather(*(one(i) for i in range(8))))
    await client.close()
asyncio.run(main())
"""


def _child_cpu(cmd: list[str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=False,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise RuntimeError(f"{cmd} failed: {out.stderr[-1500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


def _server(owned_by: str | None) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "testtime.testing.loopback", "--latency", "0.02"]
    if owned_by:
        cmd += ["--owned-by", owned_by]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    plain, url = _server(None)
    native, url_n = _server("vllm")
    py = sys.executable
    run = [py, "-m", "testtime.cli", "run", "What is 2+2?", "--model", "openai:fake", "--n", "8", "--json"]
    rows = {
        "bare openai SDK (8 requests)": [py, "-c", BARE, url],
        "import testtime.cli": [py, "-c", "import testtime.cli"],
        "import openai": [py, "-c", "import openai"],
        "testtime run --n 8 (8 requests)": [*run, "--base-url", url],
        "testtime run --n 8 (native n: 1 request)": [*run, "--base-url", url_n],
    }
    cpu: dict[str, list[float]] = {k: [] for k in rows}
    wall: dict[str, list[float]] = {k: [] for k in rows}
    try:
        load0 = os.getloadavg()
        for r in range(args.rounds):
            names = list(rows) if r % 2 == 0 else list(reversed(rows))
            for name in names:
                c, w = _child_cpu(rows[name])
                cpu[name].append(c)
                wall[name].append(w)
        load1 = os.getloadavg()
    finally:
        for proc in (plain, native):
            proc.terminate()
            proc.wait(5)
    print(f"# bench/client.py: {args.rounds} rounds, load average {load0[0]:.2f} -> {load1[0]:.2f}\n")
    base = statistics.median(cpu["bare openai SDK (8 requests)"])
    print("| client | CPU s (median) | vs bare SDK | wall s (median) |")
    print("|---|---|---|---|")
    for name in rows:
        m = statistics.median(cpu[name])
        print(f"| {name} | {m:.3f} | {m / base:.2f}x | {statistics.median(wall[name]):.3f} |")


if __name__ == "__main__":
    main()
