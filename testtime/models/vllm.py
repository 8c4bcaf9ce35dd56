"""``vllm:MODEL`` -- vLLM in-process (GPU) with automatic prefix caching.

The engine (``AsyncLLMEngine``) is built on the first call, inside the event
loop that will drive it, with ``enable_prefix_caching=True`` so step-level
search re-uses the KV cache of shared partial solutions. We render the chat
template ourselves and send token ids, which makes the prompt token count
exact and lets ``request.prefix`` continue the assistant turn.

vLLM is imported lazily; without it, loading raises
:class:`~testtime.errors.MissingDependency` naming the ``vllm`` extra.

Options: ``max_model_len``, ``gpu_memory_utilization``, ``dtype``,
``tensor_parallel_size``, ``seed``, ``engine_args`` (dict passed through to
``AsyncEngineArgs``), ``price``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from testtime.errors import MissingDependency, ModelAPIError, UserError
from testtime.models.base import (
    Capabilities,
    Generation,
    GenerationRequest,
    Model,
    StreamDelta,
    StreamEnd,
    StreamItem,
    TokenLogprob,
    total_usage,
)
from testtime.models.prices import Price
from testtime.models.streaming import collect

_ENGINE_OPTIONS = {"max_model_len", "gpu_memory_utilization", "dtype", "tensor_parallel_size", "seed"}
_KNOWN_OPTIONS = _ENGINE_OPTIONS | {"engine_args", "price"}
#: Reservation slack for template text before the tokenizer is loaded.
TEMPLATE_OVERHEAD = 64
_ids = itertools.count()


def _require_vllm() -> Any:
    try:
        import vllm
    except ImportError:
        raise MissingDependency("vllm", "vllm", "in-process vLLM (needs a GPU)") from None
    return vllm


class VLLMModel(Model):
    """A Hugging Face model served in-process by vLLM."""

    backend = "vllm"

    def __init__(self, name: str, *, engine_args: dict[str, Any], price: Price | None = None) -> None:
        super().__init__(name, price=price, max_concurrency=1024)
        self.engine_args = {"model": name, "enable_prefix_caching": True, **engine_args}
        self._engine: Any = None
        self._tokenizer: Any = None
        self._lock: asyncio.Lock | None = None

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(native_n=True, logprobs=True, prefix=True, prefix_cache=True,
                            exact_token_count=self._tokenizer is not None)

    async def _ensure_engine(self) -> Any:
        if self._engine is not None:
            return self._engine
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._engine is None:
                vllm = _require_vllm()
                args = vllm.AsyncEngineArgs(**self.engine_args)
                try:
                    engine = vllm.AsyncLLMEngine.from_engine_args(args)
                except (ValueError, OSError) as exc:
                    raise UserError(f"vLLM could not start {self.name}: {exc}") from None
                self._tokenizer = await engine.get_tokenizer()
                self._engine = engine
        return self._engine

    # ----------------------------------------------------------- accounting
    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        text = self._tokenizer.apply_chat_template(request.chat_messages(), tokenize=False,
                                                   add_generation_prompt=True)
        # The template already holds any BOS; adding special tokens would double it.
        return list(self._tokenizer.encode(text + request.prefix, add_special_tokens=False))

    def count_tokens(self, text: str) -> int | None:
        if self._tokenizer is None:
            return None
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    def input_upper_bound(self, request: GenerationRequest) -> int:
        if self._tokenizer is not None:
            return len(self._prompt_ids(request))
        return super().input_upper_bound(request) + TEMPLATE_OVERHEAD

    # ----------------------------------------------------------- generation
    def sampling_params(self, request: GenerationRequest) -> Any:
        """The vLLM SamplingParams for a request."""
        vllm = _require_vllm()
        kw: dict[str, Any] = {"n": request.n, "max_tokens": request.max_tokens,
                              "temperature": request.temperature, "top_p": request.top_p,
                              "stop": list(request.stop), "seed": request.seed}
        if request.logprobs:
            kw["logprobs"] = max(request.top_logprobs, 0)
        return vllm.SamplingParams(**kw)

    async def generate(self, request: GenerationRequest) -> list[Generation]:
        return (await collect(self.stream(request), backend="vllm")).generations

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        """The engine's incremental outputs as deltas, then the exact usage.

        vLLM reports cumulative text and token ids per output; each step's
        new part becomes a :class:`StreamDelta` (``tokens`` = new token ids).
        Closing the stream closes the engine's generator, which aborts the
        request in the engine.
        """
        engine = await self._ensure_engine()
        prompt_ids = self._prompt_ids(request)
        final = None
        seen_text: dict[int, int] = {}
        seen_tokens: dict[int, int] = {}
        try:
            outputs = engine.generate({"prompt_token_ids": prompt_ids}, self.sampling_params(request),
                                      f"testtime-{next(_ids)}")
            async with aclosing(outputs) as steps:
                async for out in steps:
                    final = out
                    for pos, o in enumerate(out.outputs or ()):
                        idx = int(getattr(o, "index", pos) or 0)
                        text = o.text or ""
                        new_text = text[seen_text.get(idx, 0):]
                        count = len(o.token_ids or ())
                        new_tokens = count - seen_tokens.get(idx, 0)
                        seen_text[idx], seen_tokens[idx] = len(text), count
                        if new_text or new_tokens > 0:
                            yield StreamDelta(index=idx, text=new_text, tokens=max(new_tokens, 0))
        except (ValueError, RuntimeError) as exc:
            raise ModelAPIError(f"vllm:{self.name}: {exc}", backend="vllm") from None
        if final is None or not final.outputs:
            raise ModelAPIError(f"vllm:{self.name}: the engine returned no output", backend="vllm")
        cached = int(getattr(final, "num_cached_tokens", 0) or 0)
        gens = []
        for i, o in enumerate(final.outputs):
            gens.append(Generation(
                text=o.text,
                finish_reason=_finish(o.finish_reason, getattr(o, "stop_reason", None)),
                logprobs=_logprobs(o, self._tokenizer, request.top_logprobs) if request.logprobs else None,
                usage=self.usage(len(prompt_ids) if i == 0 else 0, len(o.token_ids),
                                 cached if i == 0 else 0, calls=1 if i == 0 else 0),
                model=self.name,
                raw=o,
            ))
        yield StreamEnd(generations=gens, usage=total_usage(gens, calls=1))

    async def aclose(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None and hasattr(engine, "shutdown"):
            engine.shutdown()


def _finish(reason: str | None, stop_reason: Any) -> str:
    if reason == "length":
        return "length"
    if reason == "stop":
        # stop_reason: the matched stop string, a stop token id, or None for EOS.
        return "stop" if isinstance(stop_reason, str) else "eos"
    return reason or "eos"


def _logprobs(output: Any, tokenizer: Any, k: int) -> tuple[TokenLogprob, ...] | None:
    steps = getattr(output, "logprobs", None)
    if not steps:
        return None

    def text_of(tid: int, lp: Any) -> str:
        tok = getattr(lp, "decoded_token", None)
        return tok if tok is not None else tokenizer.decode([tid])

    out = []
    for tid, step in zip(output.token_ids, steps, strict=False):
        chosen = step.get(tid)
        if chosen is None:
            continue
        ranked = sorted(step.items(), key=lambda kv: -kv[1].logprob)
        top = tuple((text_of(t, lp), float(lp.logprob)) for t, lp in ranked[:k])
        out.append(TokenLogprob(text_of(tid, chosen), float(chosen.logprob), top))
    return tuple(out)


def load(name: str, **options: Any) -> VLLMModel:
    """Build a ``vllm:MODEL`` backend (the engine starts on the first call).

    Raises:
        MissingDependency: vllm is not installed.
        UserError: unknown options.
    """
    if options.get("base_url"):
        raise UserError("--base-url does not apply to in-process vllm:; for a `vllm serve` server use "
                        "openai:MODEL --base-url http://HOST:PORT/v1")
    unknown = set(options) - _KNOWN_OPTIONS - {"base_url"}
    if unknown:
        raise UserError(f"vllm backend: unknown option(s) {sorted(unknown)}; known: {sorted(_KNOWN_OPTIONS)}")
    _require_vllm()
    engine_args = {k: options[k] for k in _ENGINE_OPTIONS if options.get(k) is not None}
    extra = options.get("engine_args") or {}
    if not isinstance(extra, dict):
        raise UserError("vllm option engine_args must be a mapping of AsyncEngineArgs fields")
    engine_args.update(extra)
    return VLLMModel(name, engine_args=engine_args, price=options.get("price"))
