"""Prefix-aware tree search: cached-prompt ratio and tokens actually computed.

For beam, DVTS, MCTS, particle filtering and entropic PF on a backend that
reports prompt-cache hits, the table shows per strategy (summed over the
questions, same budget and seed for every row):

* ``requests`` -- calls sent (``usage.calls``);
* ``prompt`` -- prompt tokens billed; ``cached`` -- of them, served from the
  backend's prefix cache; ``ratio`` = cached / prompt;
* ``computed`` -- tokens the backend really had to compute: prompt not in
  the cache + output.

``particle_filter n=1`` is the ablation ``group_requests=False``: one n=1
request per particle (what PF did before), against the default that sends
the k particles of a node as one n=k request. The last lines give the ratios
between the two.

Backends: ``--model local`` (default: the embedded SmolLM2-135M on
llama.cpp, whose prompt KV cache is reused across calls and reported as
``cached_tokens``), or any OpenAI-compatible server that reports
``usage.prompt_tokens_details.cached_tokens`` (vLLM with
``--enable-prefix-caching``, ``python -m llama_cpp.server``):
``--model openai:NAME --base-url http://127.0.0.1:PORT/v1``. A backend that
reports no cached tokens prints ``-`` as its ratio (not 0: unknown is not a
miss). The PRM is ``prm:confidence`` (the policy's own logprobs, asked for in
the sampling call) unless ``--prm`` says otherwise.

``--probes`` instead counts the probe requests ``prm:confidence`` sends for
best-of-N on the simulator with and without logprobs in the sampling call.

Run: ``python bench/tree_prefix.py [--questions 3] [--budget tokens=3000] [--threads 2]``
or ``python bench/tree_prefix.py --probes``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

QUESTIONS = [
    "A farmer has 3 pens with 4 sheep each and buys 5 more sheep. How many sheep are there?",
    "Tom reads 12 pages a day for 3 days, then 7 pages. How many pages did he read?",
    "A box holds 6 eggs. How many eggs are in 4 boxes and 2 loose eggs?",
    "Anna has 20 dollars, spends 8 and earns 5. How much does she have?",
    "There are 9 birds on a wire, 4 fly away and 6 land. How many birds are there?",
]


def strategies() -> list[tuple[str, Any]]:
    from testtime.search.beam import BeamSearch
    from testtime.search.dvts import DVTS
    from testtime.search.entropic_pf import EntropicParticleFilter
    from testtime.search.mcts import MCTS
    from testtime.search.particle_filter import ParticleFilter

    return [
        ("beam", BeamSearch(2, expansions=3, max_steps=6)),
        ("dvts", DVTS(2, expansions=3, max_steps=6)),
        ("mcts", MCTS(expand_k=3, max_steps=6, max_iterations=12)),
        ("particle_filter", ParticleFilter(n_particles=4, max_steps=6, max_populations=1)),
        ("particle_filter n=1", ParticleFilter(n_particles=4, max_steps=6, max_populations=1,
                                               group_requests=False)),
        ("entropic_pf", EntropicParticleFilter(n_particles=4, max_steps=6, max_populations=1)),
    ]


async def run_row(args: argparse.Namespace, name: str, strategy: Any) -> dict[str, Any]:
    from testtime.api import build_context

    opts: dict[str, Any] = {}
    if args.model == "local" and args.threads:
        opts["n_threads"] = args.threads
    totals = {"requests": 0, "prompt": 0, "cached": 0, "output": 0, "answered": 0, "seconds": 0.0}
    reported = False
    for i, q in enumerate(QUESTIONS[: args.questions]):
        ctx = build_context(model=args.model, base_url=args.base_url, budget=args.budget, seed=i,
                            prm=args.prm, max_tokens=args.max_tokens, model_options=opts)
        ctx.step_max_tokens = args.step_tokens
        from testtime.search.base import Problem

        t0 = time.perf_counter()
        result = await strategy.search(Problem(question=q, id=f"q{i}"), ctx)
        totals["seconds"] += time.perf_counter() - t0
        used = ctx.ledger.usage
        totals["requests"] += used.calls
        totals["prompt"] += used.input_tokens
        totals["cached"] += used.cached_tokens
        totals["output"] += used.output_tokens
        totals["answered"] += result.answer is not None
        reported = reported or result.stats.get("prefix_cache", {}).get("cached_ratio") is not None
    totals["ratio"] = (totals["cached"] / totals["prompt"]) if reported and totals["prompt"] else None
    totals["computed"] = totals["prompt"] - totals["cached"] + totals["output"]
    totals["name"] = name
    return totals


async def probe_requests(questions: int) -> None:
    """Probe requests ``prm:confidence`` sends for best-of-N n=8 on the simulator,
    with logprobs asked for in the sampling call (now) and without (before)."""
    import testtime.search.best_of_n as bon
    from testtime.budget import Budget
    from testtime.search.best_of_n import BestOfN
    from testtime.sim.suites import get_suite
    from testtime.verifiers.prm import ConfidencePRM

    suite = get_suite("calibrated")
    original = bon.prm_wants_logprobs
    for label, ask in (("logprobs in the sampling call", True), ("without (before)", False)):
        bon.prm_wants_logprobs = original if ask else (lambda ctx: False)
        probes = solve = 0
        for i, p in enumerate(suite.problems(questions, seed=2)):
            ctx = suite.context(Budget.parse("tokens=8000"), seed=i)
            ctx.prm, ctx.verifier = ConfidencePRM(), None
            await BestOfN(n=8).search(p, ctx)
            roles = ctx.ledger.usage_by_role()
            probes += roles["verify"].calls if "verify" in roles else 0
            solve += roles["solve"].calls
        print(f"best_of_n n=8, prm:confidence, {questions} sim questions, {label}: "
              f"{solve} sampling requests, {probes} probe requests")
    bon.prm_wants_logprobs = original


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="local")
    ap.add_argument("--base-url", default=None)
    ap.add_argument("--prm", default="prm:confidence")
    ap.add_argument("--budget", default="tokens=3000")
    ap.add_argument("--questions", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--step-tokens", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--probes", action="store_true",
                    help="only count prm:confidence probe requests on the simulator (fast)")
    args = ap.parse_args()
    if args.probes:
        asyncio.run(probe_requests(5))
        return

    rows = []
    for name, strategy in strategies():
        rows.append(asyncio.run(run_row(args, name, strategy)))
    print(f"model={args.model} prm={args.prm} budget={args.budget} questions={args.questions} "
          f"max_tokens={args.max_tokens} step_tokens={args.step_tokens}")
    head = f"{'strategy':<22}{'requests':>9}{'prompt':>9}{'cached':>9}{'ratio':>7}{'output':>8}{'computed':>10}" \
           f"{'answered':>9}{'s':>7}"
    print(head)
    print("-" * len(head))
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        print(f"{r['name']:<22}{r['requests']:>9}{r['prompt']:>9}{r['cached']:>9}{ratio:>7}{r['output']:>8}"
              f"{r['computed']:>10}{r['answered']:>9}{r['seconds']:>7.1f}")
    by = {r["name"]: r for r in rows}
    grouped, single = by["particle_filter"], by["particle_filter n=1"]
    if single["requests"] and single["computed"]:
        print(f"\nparticle_filter n=k vs n=1: requests x{grouped['requests'] / single['requests']:.2f}, "
              f"prompt tokens x{grouped['prompt'] / max(single['prompt'], 1):.2f}, "
              f"computed tokens per output token {grouped['computed'] / max(grouped['output'], 1):.2f} "
              f"vs {single['computed'] / max(single['output'], 1):.2f}")


if __name__ == "__main__":
    main()
