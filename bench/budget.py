"""Budget bench: overspend against adversarial backends, and what the ledger costs per call.

1. For each adversarial backend (``testtime.testing.adversarial`` in process,
   and the loopback OpenAI server's matching mode over real HTTP): runs x
   concurrency ``ctx.generate`` calls with random cancellations under a
   budget that binds, and what was observed -- overspend past the limit
   (must be 0 for every backend that does not over-report), runs that ended
   overdrawn, reservations refused / admitted after the overdraw (must be 0),
   leaked reservations (must be 0), and the ledger minus what the backend
   billed (never negative; 0 for backends that report honestly).
2. The ledger's cost per call in microseconds: reserve + settle, and a full
   ``RunContext.generate`` against a zero-latency fake, today vs before the
   spend-path rewrite (the ledger and context of commit ``9bbf07b``, loaded
   from ``git show`` into temporary modules).

Run: ``python bench/budget.py`` (``--quick`` for fewer runs; ``--no-http``
to skip the loopback rows). Prints markdown tables.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from testtime.budget import DIMENSIONS, Budget, BudgetLedger, Usage
from testtime.context import RunContext
from testtime.errors import SearchStop
from testtime.models import retry
from testtime.models.base import GenerationRequest, Model
from testtime.models.prices import Price
from testtime.models.scripted import ScriptedModel
from testtime.testing.adversarial import (
    AdversarialModel,
    CutStream,
    ErrorStorm,
    FewerChoices,
    HonestModel,
    NoUsage,
    OverReporting,
    watch_overdraw,
)
from testtime.testing.loopback import MISBEHAVIOURS, LoopbackOpenAIServer, misbehaving_server

ROOT = Path(__file__).resolve().parent.parent
#: The last commit before the spend-path rewrite ("today's" ledger in the issue).
BEFORE = "9bbf07b"
BACKENDS = MISBEHAVIOURS
BUDGET = Budget(tokens=6000, calls=150, usd=0.01)
#: Calls per run = CALLS_PER_SLOT x concurrency.
CALLS_PER_SLOT = 3
REPLY = "Six times seven is forty-two, so the answer is 42."


@dataclass
class Observed:
    runs: int = 0
    concurrency: int = 0
    overspend: dict[str, float] | None = None  # dimension -> max over runs of spent - limit (> 0 only)
    overdrawn_runs: int = 0
    refused_after: int = 0
    admitted_after: int = 0
    leaked: int = 0
    under: int = 0  # max tokens billed but not in the ledger (must be 0)
    extra: int = 0  # max tokens in the ledger beyond what was billed
    sent: int = 0  # requests the backend received, all runs
    max_sent: int = 0  # the most requests one run sent (compare with the calls limit)


def _fake(kind: str, seed: int) -> AdversarialModel:
    kw: dict[str, Any] = {"delta_latency": 0.0001}
    if kind == "honest":
        return HonestModel(REPLY, **kw)
    if kind == "over-reporting":
        return OverReporting(REPLY, factor=50, **kw)
    if kind == "no-usage":
        return NoUsage(REPLY, **kw)
    if kind == "fewer-choices":
        return FewerChoices(REPLY, cap=1, **kw)
    if kind == "cut-stream":
        return CutStream(REPLY, after_k=3, p=0.5, seed=seed, **kw)
    if kind == "error-storm":
        return ErrorStorm(REPLY, p408=0.1, p429=0.2, p500=0.2, ptimeout=0.1, seed=seed, **kw)
    raise ValueError(kind)


def _server(kind: str, seed: int) -> LoopbackOpenAIServer:
    return misbehaving_server(kind, reply=REPLY, seed=seed)


async def _drive(ctx: RunContext, model: Model, concurrency: int, rng: random.Random, cancel_rate: float) -> None:
    """CALLS_PER_SLOT x concurrency calls, at most ``concurrency`` in flight (so later calls
    start after earlier ones settled, and an overdraw has later calls to refuse)."""
    slots = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        req = GenerationRequest(prompt=f"Question {i}: what is six times seven?",
                                n=rng.randint(1, 3), max_tokens=rng.randint(4, 24))
        async with slots:
            try:
                await ctx.generate(req, model=model)
            except SearchStop:
                pass

    tasks = [asyncio.create_task(one(i)) for i in range(concurrency * CALLS_PER_SLOT)]
    await asyncio.sleep(0)
    for t in tasks:
        if rng.random() < cancel_rate:
            asyncio.get_running_loop().call_later(rng.random() * 0.005, t.cancel)
    await asyncio.gather(*tasks, return_exceptions=True)


def _account(obs: Observed, ledger: BudgetLedger, seen: dict[str, int], billed_tokens: int) -> None:
    obs.runs += 1
    if obs.overspend is None:
        obs.overspend = {}
    for dim in DIMENSIONS:
        lim = ledger.limit(dim)
        if lim is None or dim == "seconds":
            continue
        over = ledger.spent(dim) - lim
        if over > (1e-12 if dim == "usd" else 0) and over > obs.overspend.get(dim, 0.0):
            obs.overspend[dim] = over
    obs.overdrawn_runs += bool(ledger.overdrawn)
    obs.refused_after += seen["refused_overdrawn"]
    obs.admitted_after += seen["admitted_after_overdraw"]
    obs.leaked += ledger.open_reservations()
    tokens = ledger.usage.tokens
    obs.under = max(obs.under, billed_tokens - tokens)
    obs.extra = max(obs.extra, tokens - billed_tokens)


def fake_rows(runs: int, concurrency: int) -> dict[str, Observed]:
    out: dict[str, Observed] = {}
    for kind in BACKENDS:
        obs = out[kind] = Observed(concurrency=concurrency)
        for seed in range(runs):
            model = _fake(kind, seed)
            ledger = BudgetLedger(BUDGET)
            seen = watch_overdraw(ledger)
            ctx = RunContext(model=model, ledger=ledger)
            asyncio.run(_drive(ctx, model, concurrency, random.Random(seed), 0.1))
            _account(obs, ledger, seen, model.log.billed.tokens)
            obs.sent += model.log.attempts
            obs.max_sent = max(obs.max_sent, model.log.attempts)
    return out


async def _no_sleep(seconds: float) -> None:
    await asyncio.sleep(0)


def http_rows(runs: int, concurrency: int) -> dict[str, Observed]:
    from testtime.models.registry import load_model

    out: dict[str, Observed] = {}
    with mock.patch.object(retry, "_sleep", _no_sleep):
        for kind in BACKENDS:
            obs = out[kind] = Observed(concurrency=concurrency)
            for seed in range(runs):
                with _server(kind, seed) as srv:
                    model = load_model("openai:loopback", base_url=srv.base_url, api_key="bench-key-not-real",
                                       price=Price(input=1.0, output=3.0))
                    ledger = BudgetLedger(BUDGET)
                    seen = watch_overdraw(ledger)
                    ctx = RunContext(model=model, ledger=ledger)

                    async def main(ctx: RunContext = ctx, model: Model = model, seed: int = seed) -> None:
                        try:
                            # No cancellations over HTTP: a cancelled client cannot know what
                            # the server went on to bill, so "billed" would not be comparable.
                            await _drive(ctx, model, concurrency, random.Random(seed), 0.0)
                        finally:
                            await model.aclose()

                    asyncio.run(main())
                    served = srv.served
                _account(obs, ledger, seen, served.honest_tokens)
                obs.sent += served.requests
                obs.max_sent = max(obs.max_sent, served.requests)
    return out


# ---------------------------------------------------------------- cost per call
def _load_before() -> tuple[Any, Any]:
    """The ledger and RunContext of commit BEFORE, as modules ``_before_budget`` / ``_before_context``."""
    tmp = Path(tempfile.mkdtemp(prefix="testtime-before-"))
    mods = []
    for name, path in (("_before_budget", "testtime/budget.py"), ("_before_context", "testtime/context.py")):
        src = subprocess.run(["git", "show", f"{BEFORE}:{path}"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout
        src = src.replace("from testtime.budget import", "from _before_budget import")
        file = tmp / f"{name}.py"
        file.write_text(src)
        spec = importlib.util.spec_from_file_location(name, file)
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        mods.append(mod)
    return mods[0], mods[1]


def _reserve_settle_us(ledger_cls: Any, usage_cls: Any, n: int, child: bool) -> float:
    root = ledger_cls(Budget(tokens=10**15, usd=10.0**9, calls=10**12))
    ledger = root.child(Budget(tokens=10**14), name="stage") if child else root
    worst = usage_cls(input_tokens=120, output_tokens=256, calls=1, usd=0.001)
    actual = usage_cls(input_tokens=100, output_tokens=80, calls=1, usd=0.0004)
    t0 = time.perf_counter()
    for _ in range(n):
        ledger.reserve(worst).settle(actual)
    return (time.perf_counter() - t0) / n * 1e6


def _generate_us(ctx_cls: Any, ledger_cls: Any, n: int, concurrency: int) -> float:
    model = ScriptedModel(["The answer is 4."])
    ctx = ctx_cls(model=model, ledger=ledger_cls(Budget(tokens=10**15)))
    req = GenerationRequest(prompt="What is 2+2?", max_tokens=16)

    async def main() -> float:
        t0 = time.perf_counter()
        if concurrency == 1:
            for _ in range(n):
                await ctx.generate(req)
        else:
            for _ in range(n // concurrency):
                await asyncio.gather(*(ctx.generate(req) for _ in range(concurrency)))
        return (time.perf_counter() - t0) / n * 1e6

    return asyncio.run(main())


def cost_rows(n: int, reps: int) -> list[tuple[str, float, float]]:
    old_budget, old_context = _load_before()

    def med(fn: Any) -> float:
        return statistics.median(fn() for _ in range(reps))

    rows = [
        ("reserve + settle (one ledger)",
         med(lambda: _reserve_settle_us(old_budget.BudgetLedger, old_budget.Usage, n, False)),
         med(lambda: _reserve_settle_us(BudgetLedger, Usage, n, False))),
        ("reserve + settle (stage child of run)",
         med(lambda: _reserve_settle_us(old_budget.BudgetLedger, old_budget.Usage, n, True)),
         med(lambda: _reserve_settle_us(BudgetLedger, Usage, n, True))),
    ]
    calls = max(n // 5, 100)
    for conc in (1, 100):
        rows.append((f"ctx.generate, zero-latency fake, {conc} concurrent",
                     med(lambda c=conc: _generate_us(old_context.RunContext, old_budget.BudgetLedger, calls, c)),
                     med(lambda c=conc: _generate_us(RunContext, BudgetLedger, calls, c))))
    return rows


# ---------------------------------------------------------------------- output
def _table(title: str, rows: dict[str, Observed]) -> str:
    lines = [f"**{title}** (budget {BUDGET})", "",
             f"| backend | runs x calls (concurrency) | requests sent | most in one run (calls limit {BUDGET.calls}) | overspend past limit | overdrawn runs "
             "| refused after overdraw | admitted after overdraw | leaked reservations "
             "| ledger - billed (tokens, max) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for kind, o in rows.items():
        over = ", ".join(f"{d} +{v:.4g}" if d == "usd" else f"{d} +{v:,.0f}"
                         for d, v in (o.overspend or {}).items()) or "0"
        delta = f"-{o.under}" if o.under > 0 else f"+{o.extra}"
        lines.append(f"| {kind} | {o.runs} x {o.concurrency * CALLS_PER_SLOT} ({o.concurrency}) | {o.sent:,} | {o.max_sent} | {over} | {o.overdrawn_runs} "
                     f"| {o.refused_after:,} | {o.admitted_after} | {o.leaked} | {delta} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs and repetitions")
    parser.add_argument("--no-http", action="store_true", help="skip the loopback HTTP rows")
    args = parser.parse_args()
    runs, http_runs, reps, n = (5, 2, 3, 20_000) if args.quick else (20, 5, 5, 100_000)

    print(_table("In-process adversarial fakes, 10% of calls cancelled", fake_rows(runs, 100)))
    print()
    if not args.no_http:
        print(_table("Loopback OpenAI server over HTTP (openai backend, streaming)", http_rows(http_runs, 100)))
        print()
    print(f"**Ledger cost per call** (µs, median of {reps}; before = commit {BEFORE})")
    print()
    print("| operation | before (µs) | today (µs) | today / before |")
    print("|---|---:|---:|---:|")
    for label, before, today in cost_rows(n, reps):
        print(f"| {label} | {before:.2f} | {today:.2f} | {today / before:.2f}x |")


if __name__ == "__main__":
    main()
