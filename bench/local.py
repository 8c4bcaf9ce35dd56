"""testtime's local backend against bare llama-cpp-python (numbers go in README).

Rows (tok/s = output tokens / wall seconds, warm model, 64-token samples):

* ``bare``: llama-cpp-python ``Llama.create_completion``, the n samples one
  after another (what a plain script does; its prompt cache is reused);
* ``testtime``: the full stack in one process (``testtime.arun`` with
  self-consistency, n samples, ledger, tracing to memory) on ``local``;
* ``model``: the backend alone (``LlamaCppModel.generate``), to split the
  orchestration cost from the decoding.

Every configuration runs in its own subprocess (llama.cpp's OpenMP thread
team belongs to the thread that calls it; two in one process compete), the
subprocesses are interleaved round by round, and the table shows medians
and ratios to ``bare`` at n=1 and at the same n. The goals: testtime n=1 >=
95% of bare n=1; testtime n=8 >= 2x bare n=8 (bare is sequential).

``--prompts`` measures system prompts on the local model instead: prompt
tokens, the fraction of 20 arithmetic questions whose greedy answer states
a final answer (``The answer is`` / boxed / ####), and accuracy.

``--steps`` times raw ``llama_decode`` steps of B sequences (B = 1..32),
to show where batching stops paying (compute, not memory, bounds it here).

``--placement`` instead measures where bare decoding runs fastest: on the
main thread, through ``asyncio.to_thread``, or on one dedicated worker
thread, under each ``OMP_WAIT_POLICY``. The last section estimates the
memory-bandwidth ceiling: GGUF bytes read per decode step against a
measured copy bandwidth.

Run: ``python bench/local.py [--rounds 5] [--reps 3] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

QUESTION = "Write a long story about a dragon who learns to count."
TOKENS = 64


def _messages() -> list[dict[str, str]]:
    from testtime.search.base import DEFAULT_SYSTEM

    return [{"role": "system", "content": DEFAULT_SYSTEM}, {"role": "user", "content": QUESTION}]


# ----------------------------------------------------------------- children
def child_bare(n: int, reps: int, threads: int, placement: str = "main") -> list[float]:
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from testtime.models.llamacpp import embedded_gguf_path

    llm = llama_cpp.Llama(str(embedded_gguf_path()), n_ctx=2048, n_threads=threads, n_threads_batch=threads,
                          verbose=False)
    model = llm._model
    fmt = Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"],
                              eos_token=model.token_get_text(llm.token_eos()),
                              bos_token=model.token_get_text(llm.token_bos()), add_generation_prompt=True)
    prompt = fmt(messages=_messages()).prompt

    def one(seed: int) -> int:
        out = llm.create_completion(prompt, max_tokens=TOKENS, temperature=0.8, top_p=1.0, top_k=0, min_p=0.0,
                                    repeat_penalty=1.0, seed=seed)
        return int(out["usage"]["completion_tokens"])

    from concurrent.futures import ThreadPoolExecutor

    worker = ThreadPoolExecutor(1)

    def batch(seed: int) -> int:
        if placement == "main":
            return sum(one(seed + i) for i in range(n))
        if placement == "worker":
            return sum(worker.submit(one, seed + i).result() for i in range(n))

        async def via_to_thread() -> int:
            total = 0
            for i in range(n):
                total += await asyncio.to_thread(one, seed + i)
            return total

        return asyncio.run(via_to_thread())

    batch(10_000)  # warm: weights paged in, prompt cached
    rates = []
    for r in range(reps):
        t0 = time.perf_counter()
        toks = batch(r * 100)
        rates.append(toks / (time.perf_counter() - t0))
    return rates


def child_testtime(n: int, reps: int, threads: int, model_only: bool) -> dict[str, Any]:
    import testtime
    from testtime.budget import Budget, BudgetLedger
    from testtime.context import RunContext
    from testtime.models.base import GenerationRequest
    from testtime.models.registry import load_model
    from testtime.search.self_consistency import SelfConsistency
    from testtime.trace.events import Tracer

    model = load_model("local", n_threads=threads)

    async def once(seed: int) -> int:
        if model_only:
            req = GenerationRequest(messages=tuple(_messages()), n=n, max_tokens=TOKENS, temperature=0.8, seed=seed)
            return sum(g.usage.output_tokens for g in await model.generate(req))
        ctx = RunContext(model=model, ledger=BudgetLedger(Budget(tokens=10**9)), tracer=Tracer(sinks=[lambda e: None]),
                         max_tokens=TOKENS, temperature=0.8, seed=seed)
        result = await testtime.arun(QUESTION, strategy=SelfConsistency(n=n), context=ctx)
        return int(result.usage["output_tokens"])

    async def lagged(seed: int) -> tuple[int, float]:
        # The event loop must stay free while the worker decodes: the worst
        # lateness of a 5 ms ticker running beside the call.
        worst = [0.0]
        stop = asyncio.Event()

        async def tick() -> None:
            while not stop.is_set():
                t = time.perf_counter()
                await asyncio.sleep(0.005)
                worst[0] = max(worst[0], time.perf_counter() - t - 0.005)

        ticker = asyncio.ensure_future(tick())
        toks = await once(seed)
        stop.set()
        await ticker
        return toks, worst[0]

    async def main() -> dict[str, Any]:
        await once(10_000)
        rates, lags = [], []
        for r in range(reps):
            t0 = time.perf_counter()
            toks, lag = await lagged(r * 100)
            rates.append(toks / (time.perf_counter() - t0))
            lags.append(lag)
        return {"rates": rates, "lag_ms": 1000 * max(lags)}

    return asyncio.run(main())


def child_bandwidth() -> dict[str, float]:
    import numpy as np

    from testtime.models.llamacpp import embedded_gguf_path

    a = np.ones(64 * 2**20, dtype=np.float32)  # 256 MiB, far beyond the caches
    b = np.empty_like(a)
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        np.copyto(b, a)
        dt = time.perf_counter() - t0
        best = max(best, 2 * a.nbytes / dt)  # read + write
    return {"bandwidth_gbs": best / 1e9, "model_mb": os.path.getsize(embedded_gguf_path()) / 1e6}


# ------------------------------------------------------------------ parent
def _spawn(args: list[str], env: dict[str, str] | None = None) -> Any:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"child {args} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _load() -> str:
    try:
        one, five, fifteen = os.getloadavg()
        return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"
    except OSError:
        return "load average unknown"


def main_compare(rounds: int, reps: int, threads: int) -> None:
    configs = [("bare", 1), ("model", 1), ("testtime", 1), ("bare", 8), ("model", 8), ("testtime", 8)]
    rates: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
    lags: dict[tuple[str, int], float] = {}
    print(f"# bench/local.py: {rounds} rounds x {reps} reps, {TOKENS} tokens, threads={threads}; start {_load()}")
    for r in range(rounds):
        order = configs if r % 2 == 0 else list(reversed(configs))  # interleave, alternate order
        for kind, n in order:
            got = _spawn([kind, str(n), str(reps), str(threads)])
            if kind == "bare":
                rates[(kind, n)].extend(got)
            else:
                rates[(kind, n)].extend(got["rates"])
                lags[(kind, n)] = max(lags.get((kind, n), 0.0), got["lag_ms"])
        print(f"round {r + 1}/{rounds} done; {_load()}", file=sys.stderr)
    med = {c: statistics.median(v) for c, v in rates.items()}
    print(f"end {_load()}\n")
    print("| backend | n | tok/s (median) | vs bare n=1 | vs bare same n | worst loop lag |")
    print("|---|---|---|---|---|---|")
    for kind, n in configs:
        m = med[(kind, n)]
        lag = f"{lags[(kind, n)]:.1f} ms" if (kind, n) in lags else "-"
        print(f"| {kind} | {n} | {m:.1f} | {m / med[('bare', 1)]:.2f}x | {m / med[('bare', n)]:.2f}x | {lag} |")
    bw = _spawn(["bandwidth"])
    ceiling = bw["bandwidth_gbs"] * 1e3 / bw["model_mb"]
    print(f"\nmemory-bandwidth ceiling: {bw['model_mb']:.0f} MB of weights read per decode step at "
          f"{bw['bandwidth_gbs']:.1f} GB/s (numpy copy) -> at most {ceiling:.0f} steps/s, i.e. {ceiling:.0f} tok/s "
          f"at n=1 and {8 * ceiling:.0f} tok/s at n=8 if the batch stayed bandwidth-bound "
          "(past a few sequences it becomes compute-bound)")


def main_placement(rounds: int, reps: int, threads: int) -> None:
    configs = [(p, w) for w in ("", "passive", "active") for p in ("main", "to_thread", "worker")]
    rates: dict[tuple[str, str], list[float]] = {c: [] for c in configs}
    print(f"# bench/local.py --placement: bare n=1, {rounds} rounds x {reps} reps; start {_load()}")
    for r in range(rounds):
        order = configs if r % 2 == 0 else list(reversed(configs))
        for placement, wait in order:
            env = {"OMP_WAIT_POLICY": wait} if wait else {}
            rates[(placement, wait)].extend(_spawn(["bare", "1", str(reps), str(threads), placement], env))
    print(f"end {_load()}\n")
    print("| decoding on | OMP_WAIT_POLICY | tok/s (median) |")
    print("|---|---|---|")
    for placement, wait in configs:
        print(f"| {placement} | {wait or '(default)'} | {statistics.median(rates[(placement, wait)]):.1f} |")


#: Candidate system prompts, longest (the old default) first.
PROMPTS = {
    "old default": ("You are a careful problem solver. Think step by step. Separate the steps of "
                    "your reasoning with a blank line. Finish with a line of the form "
                    "'The answer is X.' where X is the final answer."),
    "new default": ("Think step by step, with a blank line between steps. Finish with a line "
                    "'The answer is X.' where X is the final answer."),
    "shorter": "Think step by step. Finish with 'The answer is X.' where X is the final answer.",
    "shortest": "End with 'The answer is X.'",
}


def arithmetic_questions(count: int = 20, seed: int = 13) -> list[tuple[str, str]]:
    """(question, answer) pairs a 135M model can mostly do: small sums, differences and products."""
    import random

    rng = random.Random(seed)
    out = []
    for i in range(count):
        a, b = rng.randint(2, 60), rng.randint(2, 40)
        op = "+-*"[i % 3]
        value = a + b if op == "+" else a - b if op == "-" else a * b
        word = {"+": "plus", "-": "minus", "*": "times"}[op]
        out.append((f"What is {a} {word} {b}?", str(value)))
    return out


def main_prompts(threads: int) -> None:
    from testtime.models.base import GenerationRequest
    from testtime.models.registry import load_model
    from testtime.verifiers.answer import extract_answer, has_final_answer, normalize_answer

    model = load_model("local", n_threads=threads)
    questions = arithmetic_questions()
    print(f"# bench/local.py --prompts: {len(questions)} questions, greedy, max 256 tokens; {_load()}\n")
    print("| system prompt | prompt tokens (q1) | states a final answer | correct | mean output tokens |")
    print("|---|---|---|---|---|")

    async def run(system: str) -> list[Any]:
        reqs = [GenerationRequest(prompt=q, system=system, max_tokens=256, temperature=0.0) for q, _ in questions]
        return await asyncio.gather(*(model.generate(r) for r in reqs))

    for name, system in PROMPTS.items():
        gens = [g[0] for g in asyncio.run(run(system))]
        stated = sum(has_final_answer(g.text) for g in gens)
        right = sum(normalize_answer(extract_answer(g.text)) == ans for g, (_, ans) in zip(gens, questions, strict=True))
        tokens = model.input_upper_bound(GenerationRequest(prompt=questions[0][0], system=system))
        out = statistics.mean(g.usage.output_tokens for g in gens)
        print(f"| {name}: {system!r} | {tokens} | {stated}/{len(gens)} | {right}/{len(gens)} | {out:.0f} |")


def main_steps(threads: int) -> None:
    from testtime.models.llamabatch import BatchEngine
    from testtime.models.llamacpp import embedded_gguf_path

    engine = BatchEngine(embedded_gguf_path(), n_ctx=4096, n_threads=threads, n_batch=512, n_seq=34)
    lc, batch = engine._lc, engine._batch
    prompt = engine.tokenize("<|im_start|>user\nTell me a story<|im_end|>\n<|im_start|>assistant\n", special=True)
    print(f"# bench/local.py --steps: threads={threads}; {_load()}\n")
    print("| sequences per step | ms per step | tok/s | vs 1 sequence |")
    print("|---|---|---|---|")
    base = None
    for width in (1, 2, 4, 8, 16, 32):
        lc.llama_memory_clear(engine._mem, True)
        for s in range(width):
            engine._prefill(s + 1, prompt, 0)
        steps, t0 = 16, time.perf_counter()
        for k in range(steps):
            batch.n_tokens = width
            for i in range(width):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = 100 + i, len(prompt) + k, 1
                batch.seq_id[i][0], batch.logits[i] = i + 1, 1
            if lc.llama_decode(engine._ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
        per = (time.perf_counter() - t0) / steps
        rate = width / per
        base = base or rate
        print(f"| {width} | {1000 * per:.1f} | {rate:.0f} | {rate / base:.2f}x |")
    engine.close()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, *rest = sys.argv[2:]
        if kind == "bandwidth":
            print(json.dumps(child_bandwidth()))
            return
        n, reps, threads = (int(x) for x in rest[:3])
        if kind == "bare":
            print(json.dumps(child_bare(n, reps, threads, rest[3] if len(rest) > 3 else "main")))
        else:
            print(json.dumps(child_testtime(n, reps, threads, model_only=kind == "model")))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--placement", action="store_true", help="measure main thread vs to_thread vs a worker")
    ap.add_argument("--prompts", action="store_true", help="measure system prompts: tokens and extraction rate")
    ap.add_argument("--steps", action="store_true", help="time raw decode steps of 1..32 sequences")
    args = ap.parse_args()
    if args.steps:
        main_steps(args.threads)
    elif args.prompts:
        main_prompts(args.threads)
    elif args.placement:
        main_placement(args.rounds, args.reps, args.threads)
    else:
        main_compare(args.rounds, args.reps, args.threads)


if __name__ == "__main__":
    main()
