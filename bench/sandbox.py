"""Sandbox throughput: runs/s per isolation layer vs a bare subprocess (numbers go in README).

1. Runs/s, one run at a time, of a trivial HumanEval test (problem 0's
   tests against its canonical solution) on each available isolation layer
   (``namespaces``, ``rlimits``) through ``sandbox.run_python``, against a
   bare ``subprocess.run([sys.executable, "-c", program])`` of the same
   program. The variants are measured side by side in one run, interleaved
   round by round (so drift in machine load hits them alike). Target: the
   namespaces layer at >= 50% of bare.
2. Wall time of best-of-16 on 10 HumanEval problems' tests through a
   :class:`SandboxPool` per layer (16 candidates per problem: the canonical
   solution plus 15 wrong ones whose body is replaced by e.g. ``return None``),
   next to the same 160 programs run bare on as many threads as the pool has
   workers. Exactly the 10 canonical candidates must pass.

Run: ``python bench/sandbox.py`` (``--quick`` for fewer repetitions;
``--workers N`` to size the pool; default: free cores).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from testtime.errors import UserError
from testtime.verifiers import sandbox
from testtime.verifiers.code import build_program, humaneval_problems
from testtime.verifiers.isolation import Isolation, choose_isolation
from testtime.verifiers.pool import SandboxPool, verify_many

#: Bodies of the wrong candidates (indented under the prompt's signature).
WRONG_BODIES = ("return None", "return 0", "return 1", "return ''", "return []", "return True",
                "return False", "raise ValueError('wrong')", "return -1", "return {}", "return ()",
                "return 0.5", "return 'x'", "return [0]", "pass")


def layers() -> list[tuple[str, Isolation]]:
    """(name, isolation object) for every layer this machine can run."""
    out = []
    for mode in ("namespaces", "rlimits"):
        try:
            out.append((mode, choose_isolation(mode)))
        except UserError as exc:
            print(f"layer {mode}: not available ({exc})", file=sys.stderr)
    return out


def canonical(problem: Any) -> str:
    return problem.meta["prompt"] + problem.meta["canonical_solution"]


def wrong(problem: Any, body: str) -> str:
    return problem.meta["prompt"] + "    " + body + "\n"


def bare_once(program: str) -> bool:
    return subprocess.run([sys.executable, "-c", program], capture_output=True).returncode == 0


async def sandbox_once(program: str, iso: Isolation) -> bool:
    result = await sandbox.run_python(program, isolation=iso)
    return result.ok and result.completed


async def runs_per_second(rounds: int, per_round: int) -> list[tuple[str, int, float]]:
    problem = humaneval_problems(1)[0]
    program = build_program(problem, canonical(problem))
    found = layers()
    seconds: dict[str, list[float]] = {"bare": []} | {name: [] for name, _ in found}
    # Warm-up: the page cache, bwrap's first exec, the event loop's child watcher.
    bare_once(program)
    for _, iso in found:
        await sandbox_once(program, iso)
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(per_round):
            if not bare_once(program):
                raise RuntimeError("the canonical solution failed when run bare")
        seconds["bare"].append(time.perf_counter() - t0)
        for name, iso in found:
            t0 = time.perf_counter()
            for _ in range(per_round):
                if not await sandbox_once(program, iso):
                    raise RuntimeError(f"the canonical solution failed on layer {name}")
            seconds[name].append(time.perf_counter() - t0)
    return [(name, rounds * per_round, rounds * per_round / sum(s)) for name, s in seconds.items()]


def best_of_16_programs(n_problems: int) -> list[tuple[Any, list[str]]]:
    out = []
    for p in humaneval_problems(n_problems):
        out.append((p, [canonical(p)] + [wrong(p, b) for b in WRONG_BODIES]))
    return out


async def best_of_16(n_problems: int, workers: int | None, reps: int) -> list[tuple[str, int, float, int, int]]:
    """(variant, workers, median wall s, passed, wrong passed); variants interleaved per rep."""
    batches = best_of_16_programs(n_problems)
    pools = [(name, SandboxPool(workers=workers, isolation=iso)) for name, iso in layers()]
    width = workers or pools[0][1].workers
    programs = [build_program(p, c) for p, cands in batches for c in cands]
    walls: dict[str, list[float]] = {"bare": []} | {name: [] for name, _ in pools}
    passed: dict[str, tuple[int, int]] = {}
    # Bare: the same programs, as many at once as the pool has workers.
    with concurrent.futures.ThreadPoolExecutor(width) as ex:
        for _ in range(reps):
            t0 = time.perf_counter()
            ok = list(ex.map(bare_once, programs))
            walls["bare"].append(time.perf_counter() - t0)
            passed["bare"] = (sum(ok), sum(ok[i] for i in range(len(ok)) if i % 16))
            for name, pool in pools:
                t0 = time.perf_counter()
                verdicts = await asyncio.gather(*(verify_many(p, cands, pool) for p, cands in batches))
                walls[name].append(time.perf_counter() - t0)
                passed[name] = (sum(v.passed for vs in verdicts for v in vs),
                                sum(v.passed for vs in verdicts for v in vs[1:]))
    widths = {"bare": width} | {name: pool.workers for name, pool in pools}
    return [(name, widths[name], statistics.median(w), *passed[name]) for name, w in walls.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--workers", type=int, default=None, help="pool width (default: free cores)")
    args = parser.parse_args()
    rounds, per_round, reps = (3, 10, 1) if args.quick else (5, 20, 3)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"python {sys.version.split()[0]}, {cores} cores, load {os.getloadavg()[0]:.2f}\n")

    rows = asyncio.run(runs_per_second(rounds, per_round))
    bare = rows[0][2]
    print("Runs/s, one at a time, HumanEval/0 tests vs its canonical solution (interleaved rounds):\n")
    print("| layer | runs | runs/s | ratio to bare |")
    print("|---|---:|---:|---:|")
    for name, runs, rate in rows:
        print(f"| {name} | {runs} | {rate:.1f} | {rate / bare:.0%} |")

    print("\nBest-of-16 on 10 HumanEval problems' tests (160 programs; median of "
          f"{reps} interleaved rep{'s' if reps > 1 else ''}; bare passes on exit code 0):\n")
    print("| layer | workers | wall s | passed | wrong passed |")
    print("|---|---:|---:|---:|---:|")
    for name, width, wall, passed, wrong_passed in asyncio.run(best_of_16(10, args.workers, reps)):
        print(f"| {name} | {width} | {wall:.2f} | {passed}/160 | {wrong_passed} |")


if __name__ == "__main__":
    main()
