"""Benchmarks of testtime.agents on the simulator; prints markdown tables.

1. Allocation: true accuracy of the best allocation found (chosen by its
   noisy training-set accuracy, 50 examples) as a percentage of the exhaustive
   optimum, after T trials, per method, averaged over the 4 simulated tasks x
   SEEDS seeds. The ``agent`` row uses a proposer that never writes usable
   JSON (its regularity-guided fallback only) unless ``--proposer SPEC`` is given.
2. Composition: true success / cost / component tests per method on simulated
   120-component inventories (seeds 100+), honest and misleading descriptions.
3. Plan-and-Budget: accuracy, mean tokens and E3 per schedule on a simulated
   solver (sub-answers are right when their share covers the tokens they need).

Run: ``python bench/agents.py [--seeds 5] [--proposer local]``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics
import time

from testtime.agents.allocation import make_allocator, search_allocation
from testtime.agents.knapsack import OnlineKnapsackComposer, dp_optimum, greedy_baseline, retrieval_baseline
from testtime.agents.plan_and_budget import PlanAndBudget, e3
from testtime.api import arun
from testtime.models.base import GenerationRequest
from testtime.models.scripted import FunctionModel, ScriptedModel
from testtime.sim.inventory import make_inventory
from testtime.sim.multistage import suite

TRIALS = (5, 10, 20, 40)
METHODS = ("random", "grid", "greedy", "bayes", "agent")


async def bench_allocation(seeds: int, proposer: str | None) -> None:
    rows = {}
    timing = {}
    for method in METHODS:
        fracs = {t: [] for t in TRIALS}
        t0 = time.perf_counter()
        for task in suite():
            _, opt = task.optimum()
            for seed in range(seeds):
                if method == "agent":
                    model = proposer if proposer else ScriptedModel(["(no proposal)"])
                    allocator = make_allocator("agent", model=model)
                else:
                    allocator = make_allocator(method)
                res = await search_allocation(task.space(), task.evaluator(n_train=50, seed=seed), allocator,
                                              trials=max(TRIALS), seed=seed)
                for t in TRIALS:
                    fracs[t].append(task.accuracy(res.best_after(t).allocation) / opt)
        rows[method] = fracs
        timing[method] = time.perf_counter() - t0
    label = f"agent ({proposer})" if proposer else "agent (fallback only)"
    print(f"\n### Allocation: % of the oracle optimum reached by the best-found allocation "
          f"(4 tasks x {seeds} seeds, 50 noisy training examples)\n")
    print("| method | " + " | ".join(f"T={t}" for t in TRIALS) + " | wall s |")
    print("|---" * (len(TRIALS) + 2) + "|")
    for method, fracs in rows.items():
        name = label if method == "agent" else method
        cells = " | ".join(f"{100 * statistics.mean(fracs[t]):.1f}" for t in TRIALS)
        print(f"| {name} | {cells} | {timing[method]:.1f} |")


async def bench_compose(seeds: int) -> None:
    print(f"\n### Composition: 120-component simulated inventories, budget usd=0.3 ({seeds * 2} seeds)\n")
    print("| descriptions | method | true success | cost | tests |")
    print("|---|---|---|---|---|")
    for misleading in (False, True):
        agg: dict[str, list[tuple[float, float, int]]] = {}
        for seed in range(100, 100 + seeds * 2):
            sim = make_inventory(seed=seed, misleading=misleading)
            ev = sim.evaluator(seed=seed)
            inv = sim.inventory
            runs = [await OnlineKnapsackComposer().compose(inv, sim.task, 0.3, ev, seed=seed),
                    await retrieval_baseline(inv, sim.task, 0.3, ev),
                    await greedy_baseline(inv, sim.task, 0.3, ev),
                    dp_optimum(inv, sim.true_values(), 0.3)]
            for r in runs:
                agg.setdefault(r.method, []).append((sim.true_success(r.chosen), r.cost, r.tests))
        for method, vals in agg.items():
            name = "dp (knows utilities)" if method == "dp" else method
            print(f"| {'misleading' if misleading else 'honest'} | {name} | "
                  f"{statistics.mean(v[0] for v in vals):.3f} | {statistics.mean(v[1] for v in vals):.3f} | "
                  f"{statistics.mean(v[2] for v in vals):.0f} |")


def _pb_model(needs: dict[str, list[int]], rng: random.Random) -> FunctionModel:
    """A solver whose sub-answers are right when max_tokens covers the part's need."""
    def reply(req: GenerationRequest) -> str:
        text = req.prompt or ""
        qid = re.search(r"problem (\d+)", text).group(1)
        parts = needs[qid]
        if "sub-questions" in text:
            # Complexity estimates are the true needs, noisy by one level.
            return "\n".join(f"{i + 1}. [{max(1, min(5, n // 40 + rng.choice((-1, 0, 0, 1))))}] work out part {i + 1}"
                             for i, n in enumerate(parts))
        if req.system and req.system.startswith("Combine"):
            ok = text.count("The answer is done.") == len(parts)
            return "The answer is 1." if ok else "The answer is 0."
        if req.system and req.system.startswith("Answer the sub-question"):
            i = int(re.findall(r"Q(\d+): work out part", text)[-1]) - 1
            need = parts[i]
            if req.max_tokens >= need:
                return " ".join(["w"] * (need - 4)) + " The answer is done."
            return " ".join(["w"] * req.max_tokens)
        # Direct answer (single): it needs the sum of the parts plus overthinking.
        need = int(sum(parts) * 1.5)
        if req.max_tokens >= need:
            return " ".join(["w"] * (need - 4)) + " The answer is 1."
        return " ".join(["w"] * req.max_tokens)
    return FunctionModel(reply)


async def bench_plan_and_budget(problems: int = 60) -> None:
    rng = random.Random(0)
    needs = {str(q): [rng.choice((40, 80, 120, 160, 200)) for _ in range(rng.choice((2, 3, 4)))]
             for q in range(problems)}
    print(f"\n### Plan-and-Budget on a simulated solver ({problems} problems, budget tokens=900 each)\n")
    print("| strategy | accuracy | mean tokens | E3 = acc^2 / tokens (x1000) |")
    print("|---|---|---|---|")
    for label, strategy in [("single (direct answer)", "single"),
                            ("plan_and_budget uniform", PlanAndBudget("uniform")),
                            ("plan_and_budget proportional", PlanAndBudget("proportional")),
                            ("plan_and_budget decaying (0.7)", PlanAndBudget("decaying"))]:
        hits, tokens = 0, []
        for q in range(problems):
            model = _pb_model(needs, random.Random(q))
            res = await arun(f"Solve problem {q}.", model=model, strategy=strategy, budget="tokens=900",
                             seed=q, max_tokens=600)
            hits += res.answer == "1"
            tokens.append(res.usage["tokens"])
        acc = hits / problems
        mean_tokens = statistics.mean(tokens)
        print(f"| {label} | {acc:.3f} | {mean_tokens:.0f} | {1000 * e3(acc, mean_tokens):.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--proposer", default=None, help="model spec for the agent method (default: fallback only)")
    args = ap.parse_args()
    asyncio.run(bench_allocation(args.seeds, args.proposer))
    asyncio.run(bench_compose(args.seeds))
    asyncio.run(bench_plan_and_budget())


if __name__ == "__main__":
    main()
