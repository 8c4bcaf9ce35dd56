"""testtime's local backend against bare llama-cpp-python (numbers go in README).

Rows (tok/s = output tokens / wall seconds, warm model, 64-token samples):

* ``bare``: llama-cpp-python ``Llama.create_completion``, the n samples one
  after another (what a plain script does; its prompt cache is reused).
  ``bare``, weights ``file``, n=8 is the anchor every row is compared with;
  ``bare`` also runs with ``flash_attn=True`` and on each converted file
  (``weights=bf16`` / ``q8_0``: the same GGUF converted once by
  ``testtime.models.llamacpp.converted_gguf``), so the reader sees how much
  of a gain is the weights format and how much the batching;
* ``testtime``: the full stack in one process (``testtime.arun`` with
  self-consistency, n samples, ledger, tracing to memory) on ``local`` or
  ``local?weights=...``;
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

``--steps`` times raw ``llama_decode`` steps of B = 1, 8, 16 sequences for
each weights format, with flash attention off and on, each setting in its
own subprocess, interleaved: where batching pays and where it stops.

``--quality`` compares each weights format with the shipped file: mean
KL divergence of the next-token distributions over README text, top-1
agreement, perplexity, and on 20 arithmetic questions (greedy) how many
answers are word for word the shipped file's, state a final answer, and are
correct.

``--placement`` instead measures where bare decoding runs fastest: on the
main thread, through ``asyncio.to_thread``, or on one dedicated worker
thread, under each ``OMP_WAIT_POLICY``. The last section estimates the
memory-bandwidth ceiling: GGUF bytes read per decode step against a
measured copy bandwidth.

Run: ``python bench/local.py [--rounds 5] [--reps 3] [--threads 2] [--weights bf16,q8_0]``.
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

from testtime.search.base import DEFAULT_SYSTEM

QUESTION = "Write a long story about a dragon who learns to count."
TOKENS = 64


def _messages() -> list[dict[str, str]]:
    return [{"role": "system", "content": DEFAULT_SYSTEM}, {"role": "user", "content": QUESTION}]


# ----------------------------------------------------------------- children
def _weights_path(weights: str) -> str:
    from testtime.models.llamacpp import converted_gguf, embedded_gguf_path

    return str(converted_gguf(embedded_gguf_path(), weights))


def child_bare(n: int, reps: int, threads: int, placement: str = "main", weights: str = "file",
               flash_attn: bool = False) -> list[float]:
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm = llama_cpp.Llama(_weights_path(weights), n_ctx=2048, n_threads=threads, n_threads_batch=threads,
                          flash_attn=flash_attn, verbose=False)
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


def child_testtime(n: int, reps: int, threads: int, model_only: bool, weights: str = "file") -> dict[str, Any]:
    import testtime
    from testtime.budget import Budget, BudgetLedger
    from testtime.context import RunContext
    from testtime.models.base import GenerationRequest
    from testtime.models.registry import load_model
    from testtime.search.self_consistency import SelfConsistency
    from testtime.trace.events import Tracer

    model = load_model("local", n_threads=threads, weights=weights)

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


def child_bandwidth(formats: list[str]) -> dict[str, Any]:
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
    sizes = {w: os.path.getsize(_weights_path(w)) / 1e6 for w in ["file", *formats]}
    return {"bandwidth_gbs": best / 1e9, "model_mb": os.path.getsize(embedded_gguf_path()) / 1e6, "sizes": sizes}


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


def main_compare(rounds: int, reps: int, threads: int, formats: list[str]) -> None:
    # (kind, n, weights, flash attention for bare); bare/file/n=8 is the anchor.
    anchor = ("bare", 8, "file", False)
    configs = [("bare", 1, "file", False), anchor, ("bare", 8, "file", True)]
    configs += [("bare", 8, w, True) for w in formats]
    configs += [("model", 1, "file", True), ("testtime", 1, "file", True), ("model", 8, "file", True),
                ("testtime", 8, "file", True)]
    for w in formats:
        configs += [("testtime", 1, w, True), ("testtime", 8, w, True)]
    for w in formats:
        _weights_path(w)  # convert once before timing anything
    rates: dict[tuple[str, int, str, bool], list[float]] = {c: [] for c in configs}
    lags: dict[tuple[str, int, str, bool], float] = {}
    print(f"# bench/local.py: {rounds} rounds x {reps} reps, {TOKENS} tokens, threads={threads}; start {_load()}")
    for r in range(rounds):
        order = configs if r % 2 == 0 else list(reversed(configs))  # interleave, alternate order
        for cfg in order:
            kind, n, weights, fa = cfg
            got = _spawn([kind, str(n), str(reps), str(threads), "main", weights, str(int(fa))])
            if kind == "bare":
                rates[cfg].extend(got)
            else:
                rates[cfg].extend(got["rates"])
                lags[cfg] = max(lags.get(cfg, 0.0), got["lag_ms"])
        print(f"round {r + 1}/{rounds} done; {_load()}", file=sys.stderr)
    med = {c: statistics.median(v) for c, v in rates.items()}
    print(f"end {_load()}\n")
    print("testtime rows run with flash attention (its default); `bare` rows say whether they do. "
          "`local` defaults to weights q8_0 (converted once); weights file is the shipped Q4_1 GGUF.\n")
    print("| backend | weights | n | tok/s (median) | vs anchor (bare, file, n=8 sequential) "
          "| vs bare, same weights | worst loop lag |")
    print("|---|---|---|---|---|---|---|")
    for cfg in configs:
        kind, n, weights, fa = cfg
        m = med[cfg]
        label = kind + (" (sequential)" if kind == "bare" and n > 1 else "")
        label += ", flash_attn" if kind == "bare" and fa else ""
        # testtime and model rows against bare on the same weights (sequential: n=1 and n=8 run alike)
        same = ("bare", n, "file", False) if weights == "file" else ("bare", 8, weights, True)
        vs_same = f"{m / med[same]:.2f}x" if kind != "bare" else "-"
        lag = f"{lags[cfg]:.1f} ms" if cfg in lags else "-"
        print(f"| {label} | {weights} | {n} | {m:.1f} | {m / med[anchor]:.2f}x | {vs_same} | {lag} |")
    bw = _spawn(["bandwidth", ",".join(formats)])
    print(f"\nmemory-bandwidth ceiling at {bw['bandwidth_gbs']:.1f} GB/s (numpy copy), every weight read once "
          "per decode step (a step of n sequences yields n tokens):")
    for w, mb in bw["sizes"].items():
        ceiling = bw["bandwidth_gbs"] * 1e3 / mb
        print(f"- {w}: {mb:.0f} MB -> at most {ceiling:.0f} steps/s: {ceiling:.0f} tok/s at n=1, "
              f"{8 * ceiling:.0f} tok/s at n=8 if the batch stayed bandwidth-bound")


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


#: Candidate system prompts, longest (the default, DEFAULT_SYSTEM) first.
PROMPTS = {
    "default": DEFAULT_SYSTEM,
    "blank-line steps": ("Think step by step, with a blank line between steps. Finish with a line "
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


def child_steps(threads: int, weights: str, flash_attn: bool, reps: int) -> dict[str, float]:
    """Tokens/s of raw ``llama_decode`` steps of 1, 8, 16 sequences sharing a 90-token prompt (median of reps)."""
    import logging

    import llama_cpp as lc

    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # quiet llama.cpp's log
    lc.llama_backend_init()
    model = lc.llama_model_load_from_file(_weights_path(weights).encode(), lc.llama_model_default_params())
    cp = lc.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max, cp.kv_unified, cp.no_perf = 4096, 512, 512, 17, True, True
    cp.n_threads = cp.n_threads_batch = threads
    cp.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
    ctx = lc.llama_init_from_model(model, cp)
    mem, batch = lc.llama_get_memory(ctx), lc.llama_batch_init(512, 0, 1)
    prompt = [1 + (i * 37) % 4000 for i in range(90)]
    rates: dict[int, list[float]] = {}
    steps = 48
    for _ in range(reps):
        for width in (1, 8, 16):
            lc.llama_memory_clear(mem, True)
            batch.n_tokens = len(prompt)
            for i, tok in enumerate(prompt):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, i, 1
                batch.seq_id[i][0], batch.logits[i] = 1, int(i == len(prompt) - 1)
            if lc.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed on the prompt")
            for sid in range(2, width + 1):
                lc.llama_memory_seq_cp(mem, 1, sid, -1, -1)  # shared prompt cells, as the engine does
            t0 = 0.0
            for k in range(steps + 2):
                if k == 2:
                    t0 = time.perf_counter()  # two warm steps
                batch.n_tokens = width
                for i in range(width):
                    batch.token[i], batch.pos[i], batch.n_seq_id[i] = 100 + i + k, len(prompt) + k, 1
                    batch.seq_id[i][0], batch.logits[i] = i + 1, 1  # every sequence samples: logits for all
                if lc.llama_decode(ctx, batch) != 0:
                    raise RuntimeError("llama_decode failed")
            rates.setdefault(width, []).append(width * steps / (time.perf_counter() - t0))
    lc.llama_batch_free(batch)
    lc.llama_free(ctx)
    lc.llama_model_free(model)
    return {str(w): statistics.median(v) for w, v in rates.items()}


def main_steps(rounds: int, reps: int, threads: int, formats: list[str]) -> None:
    configs = [(w, fa) for w in ["file", *formats] for fa in (False, True)]
    for w in formats:
        _weights_path(w)
    got: dict[tuple[str, bool], list[dict[str, float]]] = {c: [] for c in configs}
    print(f"# bench/local.py --steps: raw llama_decode, threads={threads}, {rounds} rounds x {reps} reps; "
          f"start {_load()}")
    for r in range(rounds):
        for cfg in configs if r % 2 == 0 else list(reversed(configs)):
            got[cfg].append(_spawn(["steps", "0", str(reps), str(threads), cfg[0], str(int(cfg[1]))]))
        print(f"round {r + 1}/{rounds} done; {_load()}", file=sys.stderr)
    med = {c: {w: statistics.median(x[w] for x in v) for w in ("1", "8", "16")} for c, v in got.items()}
    anchor = med[("file", False)]["1"]
    print(f"end {_load()}\n")
    print("| weights | flash attn | B=1 tok/s | B=8 tok/s | B=16 tok/s | B=8 / own B=1 | B=8 / file B=1 (fa off) "
          "| B=16 / file B=1 |")
    print("|---|---|---|---|---|---|---|---|")
    for cfg in configs:
        m = med[cfg]
        print(f"| {cfg[0]} | {'on' if cfg[1] else 'off'} | {m['1']:.0f} | {m['8']:.0f} | {m['16']:.0f} "
              f"| {m['8'] / m['1']:.2f}x | {m['8'] / anchor:.2f}x | {m['16'] / anchor:.2f}x |")


def child_quality(weights: str, threads: int, flash_attn: bool = True) -> dict[str, Any]:
    """Next-token log-probabilities over README text, and greedy answers to the arithmetic questions.

    ``flash_attn=False`` only changes the log-probabilities' context (the
    noise floor: the same file, another order of arithmetic); it skips the
    questions.
    """
    import llama_cpp as lc
    import numpy as np

    from testtime.models.base import GenerationRequest
    from testtime.models.registry import load_model
    from testtime.verifiers.answer import extract_answer, has_final_answer, normalize_answer

    model = load_model("local", n_threads=threads, weights=weights)
    engine = model.engine.batch
    text = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "README.md")).read()[:6000]
    toks = engine.tokenize(text, special=False)[:1024]
    # A context of its own (the engine's serves the questions below).
    cp = lc.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch = 2048, 512, 512
    cp.n_threads = cp.n_threads_batch = threads
    cp.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
    ctx = lc.llama_init_from_model(engine._model, cp)
    batch = lc.llama_batch_init(512, 0, 1)
    rows = []
    for start in range(0, len(toks), 512):
        chunk = toks[start: start + 512]
        batch.n_tokens = len(chunk)
        for i, tok in enumerate(chunk):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, start + i, 1, 1
            batch.seq_id[i][0] = 0
        if lc.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        rows.append(np.ctypeslib.as_array(lc.llama_get_logits(ctx), shape=(len(chunk), engine.n_vocab)).copy())
    lc.llama_batch_free(batch)
    lc.llama_free(ctx)
    logits = np.concatenate(rows).astype(np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    path = f"/tmp/bench-local-logp-{os.getpid()}.npy"
    np.save(path, logp.astype(np.float32))

    async def answers() -> list[str]:
        reqs = [GenerationRequest(prompt=q, system=DEFAULT_SYSTEM, max_tokens=256, temperature=0.0)
                for q, _ in arithmetic_questions()]
        # One at a time: batches of other shapes change the arithmetic, hence a greedy text now and then.
        return [(await model.generate(r))[0].text for r in reqs]

    if not flash_attn:
        return {"logp": path, "tokens": toks, "texts": None, "stated": None, "right": None}
    texts = asyncio.run(answers())
    right = sum(normalize_answer(extract_answer(t)) == a for t, (_, a) in zip(texts, arithmetic_questions(),
                                                                                strict=True))
    return {"logp": path, "tokens": toks, "texts": texts, "stated": sum(has_final_answer(t) for t in texts),
            "right": right}


def main_quality(threads: int, formats: list[str]) -> None:
    import numpy as np

    got = {w: _spawn(["quality", "0", "0", str(threads), w]) for w in ["file", *formats]}
    got["file, flash attention off"] = _spawn(["quality", "0", "0", str(threads), "file", "0"])
    ref = got["file"]
    ref_logp = np.load(ref["logp"]).astype(np.float64)
    nxt = np.array(ref["tokens"][1:])
    n_q = len(ref["texts"])
    print(f"# bench/local.py --quality: {len(ref['tokens'])} tokens of README.md, {n_q} arithmetic questions "
          f"(greedy, default system prompt, 256 tokens); {_load()}\n")
    print("| weights | KL(file || weights), nats/token | top-1 agreement | perplexity | greedy answers identical "
          "to file's | state a final answer | correct |")
    print("|---|---|---|---|---|---|---|")
    for w, r in got.items():
        logp = np.load(r["logp"]).astype(np.float64)
        kl = float((np.exp(ref_logp) * (ref_logp - logp)).sum(1).mean())
        agree = float((ref_logp.argmax(1) == logp.argmax(1)).mean())
        ppl = float(np.exp(-logp[np.arange(len(nxt)), nxt].mean()))
        if r["texts"] is None:
            print(f"| {w} | {kl:.4f} | {100 * agree:.1f}% | {ppl:.2f} | - | - | - |")
            continue
        same = sum(a == b for a, b in zip(r["texts"], ref["texts"], strict=True))
        print(f"| {w} | {kl:.4f} | {100 * agree:.1f}% | {ppl:.2f} | {same}/{n_q} | {r['stated']}/{n_q} "
              f"| {r['right']}/{n_q} |")
    for r in got.values():
        os.unlink(r["logp"])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, *rest = sys.argv[2:]
        if kind == "bandwidth":
            print(json.dumps(child_bandwidth([w for w in rest[0].split(",") if w] if rest else [])))
            return
        n, reps, threads = (int(x) for x in rest[:3])
        extra = rest[3:]
        if kind == "bare":
            print(json.dumps(child_bare(n, reps, threads, extra[0] if extra else "main",
                                        extra[1] if len(extra) > 1 else "file", len(extra) > 2 and extra[2] == "1")))
        elif kind == "steps":
            print(json.dumps(child_steps(threads, extra[0], extra[1] == "1", reps)))
        elif kind == "quality":
            print(json.dumps(child_quality(extra[0], threads, len(extra) < 2 or extra[1] == "1")))
        else:
            print(json.dumps(child_testtime(n, reps, threads, model_only=kind == "model",
                                            weights=extra[1] if len(extra) > 1 else "file")))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--placement", action="store_true", help="measure main thread vs to_thread vs a worker")
    ap.add_argument("--prompts", action="store_true", help="measure system prompts: tokens and extraction rate")
    ap.add_argument("--steps", action="store_true", help="time raw decode steps of 1, 8, 16 sequences per format")
    ap.add_argument("--quality", action="store_true", help="compare converted weights with the shipped file")
    ap.add_argument("--weights", default="bf16,q8_0",
                    help="converted formats to add to the table (comma-separated; '' for none)")
    args = ap.parse_args()
    formats = [w.strip() for w in args.weights.split(",") if w.strip()]
    if args.steps:
        main_steps(args.rounds, args.reps, args.threads, formats)
    elif args.quality:
        main_quality(args.threads, formats)
    elif args.prompts:
        main_prompts(args.threads)
    elif args.placement:
        main_placement(args.rounds, args.reps, args.threads)
    else:
        main_compare(args.rounds, args.reps, args.threads, formats)


if __name__ == "__main__":
    main()
