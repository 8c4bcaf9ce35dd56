"""Batched decoding on llama.cpp: many sequences, one context, one worker thread.

:class:`BatchEngine` owns one GGUF model and one llama.cpp context with a
*unified* KV cache sized for several sequences (``n_seq``). Every sample of
every request submitted to it becomes a sequence; the worker thread decodes
all live sequences together, one token each per ``llama_decode`` call, so the
weights are read once per step for all of them (decoding a small model on a
CPU is memory-bound, so a step of 8 tokens costs little more than one).

Prompt sharing: a request's prompt is decoded once, on its first sequence;
the other samples get the prompt's KV cells by ``llama_memory_seq_cp`` (in a
unified cache a copy only tags the cells with one more sequence id). Sequence
0 is kept as a prefix cache holding the last prompt, so the next request
decodes only the tokens past the common prefix (self-consistency repeats one
prompt; tree search extends one).

Each sequence samples with its own seeded generator (``seed + i``), stops on
its own (end-of-generation token, stop strings, ``max_new``) and keeps its
own log-probabilities (log-softmax of the raw logits, as HTTP APIs report
them). The sequences of a step that use plain temperature sampling (or
greedy) are sampled in one numpy pass over their logits rows: llama.cpp's
``temp`` + ``dist`` chain cost ~0.35 ms per sequence per token here (it
builds and normalizes a 49k-entry candidate array each call), about a tenth
of a batched step; with ``top_p < 1`` a sequence keeps a llama.cpp sampler
chain (top-p, temperature, a seeded ``dist``).

Why one dedicated thread: llama.cpp is built with OpenMP, whose thread team
belongs to the thread that calls it. Decoding from ``asyncio.to_thread``
lands on varying pool threads, each with its own spinning team, which on a
small machine competes with itself (see bench/local.py). One long-lived
worker keeps one team, and the event loop only wakes for coalesced deltas.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testtime.errors import UserError
from testtime.models.base import TokenLogprob

#: Seconds between delta deliveries to the event loop (a step's deltas are coalesced).
DELTA_INTERVAL = 0.02
#: Vocabulary entries per block in the two-level inverse-CDF draw of :meth:`BatchEngine._sample`.
_BLOCK = 256


@dataclass(slots=True)
class SampleResult:
    """One finished sequence."""

    text: str
    finish_reason: str
    output_tokens: int
    logprobs: tuple[TokenLogprob, ...] | None


@dataclass(eq=False, slots=True)
class Job:
    """One request: ``n`` samples of one prompt.

    ``on_deltas([(index, text, tokens), ...])`` and ``on_done(results | exc)``
    are called from the worker thread; the caller makes them thread-safe.
    """

    prompt: list[int]
    n: int
    max_new: int
    temperature: float
    top_p: float
    seeds: list[int]
    stops: tuple[str, ...]
    logprobs: bool
    top_logprobs: int
    on_deltas: Callable[[list[tuple[int, str, int]]], None]
    on_done: Callable[[Any], None]
    cancelled: bool = False
    #: Prompt tokens found in the prefix cache (set at the first admission).
    cached_tokens: int = 0
    started: int = 0
    results: dict[int, SampleResult] = field(default_factory=dict)
    pending: dict[int, list[Any]] = field(default_factory=dict)  # index -> [texts, tokens]
    last_flush: float = 0.0

    def cancel(self) -> None:
        self.cancelled = True


@dataclass(eq=False, slots=True)
class _Seq:
    job: Job
    index: int
    seq_id: int
    pos: int
    sampler: Any  # a llama.cpp chain (top_p < 1), else None: sampled by _sample's numpy pass
    decoder: Any
    rng: random.Random | None = None  # the numpy pass's uniform draws, seeded seed + i
    token: int = -1  # sampled, not yet decoded
    text: str = ""
    out: int = 0
    lps: list[TokenLogprob] = field(default_factory=list)


def _require() -> Any:
    import llama_cpp

    # llama-cpp-python's log callback prints everything unless its logger says otherwise.
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    return llama_cpp


class BatchEngine:
    """A loaded GGUF, its context and the worker that decodes every sequence."""

    def __init__(self, path: Path, *, n_ctx: int, n_threads: int, n_batch: int, n_seq: int) -> None:
        lc = self._lc = _require()
        self.path = path
        self.n_threads = n_threads
        self.n_seq = max(2, n_seq)  # sequence 0 is the prefix cache
        lc.llama_backend_init()
        mparams = lc.llama_model_default_params()
        self._model = lc.llama_model_load_from_file(str(path).encode(), mparams)
        if not self._model:
            raise UserError(f"llama.cpp could not load {path}; is it a complete GGUF model file?")
        self._vocab = lc.llama_model_get_vocab(self._model)
        self.n_vocab = lc.llama_vocab_n_tokens(self._vocab)
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        cparams.n_seq_max = self.n_seq
        cparams.n_threads = n_threads
        cparams.n_threads_batch = n_threads
        cparams.kv_unified = True  # one cell pool: seq_cp shares prompt cells instead of copying them
        cparams.no_perf = True
        # Flash attention: never slower in our runs, a few percent faster at n=8 through this loop
        # (3% in an interleaved A/B; raw steps, python bench/local.py --steps, vary from -5% to
        # +50% run to run on a shared machine). llama-cpp-python leaves it off.
        cparams.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED
        self._ctx = lc.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            lc.llama_model_free(self._model)
            raise UserError(f"llama.cpp could not create a context for {path.name} with n_ctx={n_ctx}; "
                            "lower option n_ctx")
        self._mem = lc.llama_get_memory(self._ctx)
        self.n_ctx = lc.llama_n_ctx(self._ctx)
        self.n_batch = n_batch
        self._batch = lc.llama_batch_init(max(n_batch, self.n_seq), 0, 1)
        self._pieces: dict[int, bytes] = {}
        self._piece_buf = ctypes.create_string_buffer(256)
        self.add_bos = bool(lc.llama_vocab_get_add_bos(self._vocab))
        self.bos_text = self._token_text(lc.llama_vocab_bos(self._vocab))
        self.eos_text = self._token_text(lc.llama_vocab_eos(self._vocab))
        raw = lc.llama_model_chat_template(self._model, None)
        self.chat_template: str | None = raw.decode("utf-8", "replace") if raw else None
        self._cache: list[int] = []  # the tokens sequence 0 holds
        self._free = list(range(self.n_seq - 1, 0, -1))
        self._active: list[_Seq] = []
        self._jobs: list[Job] = []  # admitted, unfinished
        self._queue: list[Job] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ vocab
    def _token_text(self, tok: int) -> str:
        if tok < 0:
            return ""
        return self._lc.llama_vocab_get_text(self._vocab, tok).decode("utf-8", "replace")

    def tokenize(self, text: str, *, special: bool) -> list[int]:
        """Token ids (``special``: add BOS as the model wants and parse special tokens).

        Reads only the vocabulary, so any thread may call it.
        """
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (self._lc.llama_token * cap)()
        n = self._lc.llama_tokenize(self._vocab, data, len(data), buf, cap, special, special)
        if n < 0:  # cannot happen with cap >= bytes + BOS, but be exact
            buf = (self._lc.llama_token * -n)()
            n = self._lc.llama_tokenize(self._vocab, data, len(data), buf, -n, special, special)
        return list(buf[:n])

    def piece(self, tok: int) -> bytes:
        """The bytes a token renders to (special tokens render empty)."""
        got = self._pieces.get(tok)
        if got is None:
            n = self._lc.llama_token_to_piece(self._vocab, tok, self._piece_buf, 256, 0, False)
            got = self._pieces[tok] = self._piece_buf.raw[: max(n, 0)]
        return got

    def is_eog(self, tok: int) -> bool:
        return bool(self._lc.llama_vocab_is_eog(self._vocab, tok))

    # ----------------------------------------------------------- submit
    def submit(self, job: Job) -> None:
        """Queue a job; the worker admits it as soon as sequences and cells allow."""
        if len(job.prompt) + 1 > self.n_ctx:
            raise UserError(f"the prompt has {len(job.prompt)} tokens but the context of {self.path.name} "
                            f"holds {self.n_ctx}; shorten it or raise option n_ctx")
        job.max_new = max(1, min(job.max_new, self.n_ctx - len(job.prompt)))
        with self._cond:
            if self._closed:
                raise UserError("the llama.cpp engine is closed")
            self._queue.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=f"llamacpp-{self.path.stem}",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker (unfinished jobs are cancelled) and free llama.cpp memory."""
        with self._cond:
            self._closed = True
            for job in self._queue + self._jobs:
                job.cancelled = True
            self._cond.notify()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                return  # still inside llama_decode: freeing now would crash it
        lc = self._lc
        if self._ctx:
            lc.llama_batch_free(self._batch)
            lc.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            lc.llama_model_free(self._model)
            self._model = None

    # ----------------------------------------------------------- worker
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._active and not self._closed:
                    self._cond.wait()
                if self._closed and not self._active:
                    queued, self._queue = self._queue, []
                    for job in queued:
                        self._fail(job, UserError("the llama.cpp engine was closed"))
                    return
                queued = list(self._queue)
            for job in queued:
                if job.cancelled:
                    self._drop(job)
                    continue
                try:
                    admitted = self._admit(job)
                except Exception as exc:  # noqa: BLE001 -- a llama.cpp failure belongs to the caller
                    self._abort(job, exc)
                    continue
                if not admitted:
                    break  # first come, first served: later jobs wait behind it
            if self._active:
                try:
                    self._step()
                except Exception as exc:  # noqa: BLE001
                    for job in list(self._jobs):
                        self._abort(job, exc)

    def _drop(self, job: Job) -> None:
        """Forget a cancelled job once none of its sequences is live."""
        with self._cond:
            if job in self._queue:
                self._queue.remove(job)
        if job in self._jobs and not any(s.job is job for s in self._active):
            self._jobs.remove(job)

    def _room(self) -> int:
        """KV cells not promised to anyone (an upper bound on use: shared cells counted twice)."""
        used = len(self._cache) + sum(len(j.prompt) for j in self._jobs)
        used += sum(s.job.max_new for s in self._active)
        return self.n_ctx - used

    def _admit(self, job: Job) -> bool:
        """Start as many of the job's remaining samples as fit; True when it started any."""
        want = job.n - job.started
        prompt = job.prompt
        new_prompt = 0 if job in self._jobs else len(prompt)
        k = min(want, len(self._free), (self._room() - new_prompt) // job.max_new)
        if k < 1 and not self._active:
            self._evict_cache()  # nothing else runs: the cache is all that is in the way
            k = min(want, len(self._free), (self._room() - new_prompt) // job.max_new)
            if k < 1:
                k = 1  # max_new was capped to fit n_ctx, so one always fits an empty cache
        if k < 1:
            return False
        lc = self._lc
        common = _common_prefix(self._cache, prompt)
        common = min(common, len(prompt) - 1)  # the last prompt token is decoded for its logits
        if job.started == 0:
            job.cached_tokens = common
        first = self._free.pop()
        if common:
            lc.llama_memory_seq_cp(self._mem, 0, first, 0, common)
        idx = self._prefill(first, prompt, common)
        seq_ids = [first]
        for _ in range(k - 1):
            sid = self._free.pop()
            lc.llama_memory_seq_cp(self._mem, first, sid, -1, -1)
            seq_ids.append(sid)
        # Sequence 0 now caches this prompt (cells shared with the samples).
        lc.llama_memory_seq_rm(self._mem, 0, common, -1)
        lc.llama_memory_seq_cp(self._mem, first, 0, common, len(prompt))
        self._cache = list(prompt)
        if job not in self._jobs:
            self._jobs.append(job)
        with self._cond:
            if job.started + k >= job.n and job in self._queue:
                self._queue.remove(job)
        seqs = []
        for sid in seq_ids:
            i = job.started
            job.started += 1
            seq = _Seq(job=job, index=i, seq_id=sid, pos=len(prompt), sampler=self._sampler(job, i),
                       decoder=codecs.getincrementaldecoder("utf-8")(errors="ignore"),
                       rng=random.Random(job.seeds[i]) if job.temperature > 0 else None)
            self._active.append(seq)
            seqs.append(seq)
        # Every new sample draws its first token from the prompt's last logits row.
        for seq, tok in zip(seqs, self._sample(seqs, [idx] * len(seqs)), strict=True):
            self._take(seq, idx, tok)
        self._flush(job, force=False)
        return True

    def _evict_cache(self) -> None:
        self._lc.llama_memory_seq_rm(self._mem, 0, -1, -1)
        self._cache = []

    def _prefill(self, seq_id: int, prompt: list[int], start: int) -> int:
        """Decode ``prompt[start:]`` on ``seq_id``; the batch index of the last token's logits."""
        lc, batch = self._lc, self._batch
        pos = start
        while pos < len(prompt):
            chunk = prompt[pos: pos + self.n_batch]
            last = pos + len(chunk) >= len(prompt)
            batch.n_tokens = len(chunk)
            for i, tok in enumerate(chunk):
                batch.token[i] = tok
                batch.pos[i] = pos + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq_id
                batch.logits[i] = 1 if (last and i == len(chunk) - 1) else 0
            rc = lc.llama_decode(self._ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode failed ({rc}) on a prompt of {len(prompt)} tokens")
            pos += len(chunk)
        return batch.n_tokens - 1

    def _sampler(self, job: Job, i: int) -> Any:
        """A llama.cpp chain for top-p sampling; None when :meth:`_sample`'s numpy pass does it."""
        if job.temperature <= 0 or job.top_p >= 1.0:
            return None
        lc = self._lc
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        # No top-k / min-p: temperature and top_p mean what they mean on the HTTP APIs.
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(job.top_p, 1))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(job.temperature))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(job.seeds[i] & 0xFFFFFFFF))
        return chain

    def _row(self, idx: int) -> Any:
        import numpy as np

        return np.ctypeslib.as_array(self._lc.llama_get_logits_ith(self._ctx, idx), shape=(self.n_vocab,))

    def _sample(self, seqs: list[_Seq], rows: list[int]) -> list[int]:
        """The next token of each sequence from its logits row (batch index ``rows[k]``).

        Greedy is the first maximal logit (as llama.cpp's greedy sampler);
        temperature sampling is :func:`sample_softmax` over the rows of every
        such sequence at once, with each sequence's own uniform draw.
        """
        import numpy as np

        toks = [0] * len(seqs)
        hot: list[int] = []
        for k, s in enumerate(seqs):
            if s.sampler is not None:
                toks[k] = self._lc.llama_sampler_sample(s.sampler, self._ctx, rows[k])
            elif s.rng is None:
                toks[k] = int(self._row(rows[k]).argmax())
            else:
                hot.append(k)
        if hot:
            x = np.stack([self._row(rows[k]) for k in hot])  # a copy: the logits stay raw for logprobs
            temps = [seqs[k].job.temperature for k in hot]
            draws = [seqs[k].rng.random() for k in hot]  # type: ignore[union-attr]  # hot: rng is set
            for k, tok in zip(hot, sample_softmax(x, temps, draws), strict=True):
                toks[k] = tok
        return toks

    def _step(self) -> None:
        """One token for every live sequence, in one llama_decode."""
        lc, batch = self._lc, self._batch
        live = self._active
        batch.n_tokens = len(live)
        for i, s in enumerate(live):
            batch.token[i] = s.token
            batch.pos[i] = s.pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = s.seq_id
            batch.logits[i] = 1
        rc = lc.llama_decode(self._ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc}) with {len(live)} sequences")
        jobs = []
        now = list(live)
        for i, (s, tok) in enumerate(zip(now, self._sample(now, list(range(len(now)))), strict=True)):
            s.pos += 1
            self._take(s, i, tok)
            if s.job not in jobs:
                jobs.append(s.job)
        for job in jobs:
            self._flush(job, force=False)

    def _take(self, s: _Seq, idx: int, tok: int) -> None:
        """Append ``tok`` (sampled from logits row ``idx``) to ``s``; finish it when it ends."""
        job = s.job
        if job.cancelled:
            self._end(s, "cancelled")
            return
        lp = self._logprob(idx, tok, job.top_logprobs) if job.logprobs else None
        if self.is_eog(tok):
            self._end(s, "eos")  # the end token is not part of the text
            return
        piece = s.decoder.decode(self.piece(tok))
        s.out += 1
        s.token = tok
        if lp is not None:
            s.lps.append(lp)
        before = len(s.text)
        s.text += piece
        slot = job.pending.setdefault(s.index, [[], 0])
        slot[0].append(piece)
        slot[1] += 1
        if job.stops:
            # Only the tail can hold a stop that this piece completed.
            longest = max(len(x) for x in job.stops)
            cut = _first_stop(s.text, job.stops, max(0, before - longest + 1))
            if cut is not None:
                s.text = s.text[:cut]
                self._end(s, "stop")
                return
        if s.out >= job.max_new:
            self._end(s, "length")

    def _logprob(self, idx: int, tok: int, top: int) -> TokenLogprob:
        import numpy as np

        lc = self._lc
        logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(self._ctx, idx), shape=(self.n_vocab,))
        peak = float(logits.max())
        logz = peak + math.log(float(np.exp(logits - peak).sum()))

        def text(t: int) -> str:
            return self.piece(t).decode("utf-8", errors="replace")

        alts: tuple[tuple[str, float], ...] = ()
        if top > 0:
            best = np.argpartition(-logits, top)[:top]
            best = best[np.argsort(-logits[best])]
            alts = tuple((text(int(i)), float(logits[i]) - logz) for i in best)
        return TokenLogprob(text(tok), float(logits[tok]) - logz, alts)

    def _end(self, s: _Seq, reason: str) -> None:
        lc, job = self._lc, s.job
        self._active.remove(s)
        lc.llama_memory_seq_rm(self._mem, s.seq_id, -1, -1)
        if s.sampler is not None:
            lc.llama_sampler_free(s.sampler)
        self._free.append(s.seq_id)
        job.results[s.index] = SampleResult(text=s.text, finish_reason=reason, output_tokens=s.out,
                                            logprobs=tuple(s.lps) if job.logprobs else None)
        if job.cancelled:
            self._drop(job)
        elif len(job.results) >= job.n:
            self._finish_job(job)

    def _flush(self, job: Job, *, force: bool) -> None:
        if not job.pending or job.cancelled:
            return
        now = time.monotonic()
        if not force and now - job.last_flush < DELTA_INTERVAL:
            return
        job.last_flush = now
        deltas = [(i, "".join(texts), toks) for i, (texts, toks) in sorted(job.pending.items())]
        job.pending = {}
        job.on_deltas(deltas)

    def _finish_job(self, job: Job) -> None:
        if job in self._jobs:
            self._jobs.remove(job)
        if job.cancelled:
            return  # nobody is waiting
        self._flush(job, force=True)
        job.on_done([job.results[i] for i in range(job.n)])

    def _abort(self, job: Job, exc: BaseException) -> None:
        for s in [s for s in self._active if s.job is job]:
            self._active.remove(s)
            self._lc.llama_memory_seq_rm(self._mem, s.seq_id, -1, -1)
            if s.sampler is not None:
                self._lc.llama_sampler_free(s.sampler)
            self._free.append(s.seq_id)
        with self._cond:
            if job in self._queue:
                self._queue.remove(job)
        if job in self._jobs:
            self._jobs.remove(job)
        self._evict_cache()  # the cache may hold half a prompt
        self._fail(job, exc)

    def _fail(self, job: Job, exc: BaseException) -> None:
        if not job.cancelled:
            job.on_done(exc)


def sample_softmax(logits: Any, temperatures: list[float], draws: list[float]) -> list[int]:
    """Row ``j``'s token drawn from softmax(logits[j] / temperatures[j]) by inverse CDF at ``draws[j]``.

    ``logits`` is a float32 ``(rows, vocab)`` array, overwritten (pass a
    copy); ``draws`` are uniform in [0, 1). One pass over the vocabulary and
    no sort: the exponentials are summed in blocks of 256, the block that
    holds the draw is found from the blocks' running sums, then the token
    within that block. The token returned always has nonzero probability.
    """
    import numpy as np

    x = logits
    x *= np.array([1.0 / t for t in temperatures], dtype=np.float32)[:, None]
    x -= x.max(axis=1, keepdims=True)
    np.exp(x, out=x)
    starts = np.arange(0, x.shape[1], _BLOCK)
    cum = np.cumsum(np.add.reduceat(x, starts, axis=1), axis=1)
    out = []
    for j, u in enumerate(draws):
        target = u * float(cum[j, -1])
        b = int(np.searchsorted(cum[j], target, side="right"))
        if b >= len(starts):  # u * total rounded up to the total: the last block with any mass
            b = int(np.flatnonzero(np.diff(cum[j], prepend=0.0) > 0)[-1])
        seg = x[j, starts[b]: starts[b] + _BLOCK]
        inner = np.cumsum(seg) + (float(cum[j, b - 1]) if b else 0.0)
        t = int(np.searchsorted(inner, target, side="right"))
        if t >= len(seg) or seg[t] <= 0:  # rounding at a block edge: the block's last possible token
            t = int(np.flatnonzero(seg)[-1])
        out.append(int(starts[b]) + t)
    return out


def new_seeds(seed: int | None, n: int) -> list[int]:
    """Per-sample seeds: ``seed + i`` (reproducible) or fresh random ones."""
    base = seed if seed is not None else random.getrandbits(31)
    return [base + i for i in range(n)]


def _first_stop(text: str, stops: tuple[str, ...], start: int = 0) -> int | None:
    hits = [i for i in (text.find(s, start) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
