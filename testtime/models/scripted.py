"""Fake backends for tests -- yours and ours.

* :class:`ScriptedModel` replies from a list (cycled or exhausted) or a mapping
  from prompt substrings to replies.
* :class:`FunctionModel` calls your (sync or async) function with the request.

Both count tokens as whitespace-separated words so budgets behave like they do
with real models, and can inject latency and failures.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from testtime.models.base import Capabilities, Generation, GenerationRequest, Model, TokenLogprob
from testtime.models.prices import Price


def word_tokens(text: str) -> int:
    """The fakes' tokenizer: one token per whitespace-separated word (min 1)."""
    return max(1, len(text.split())) if text else 0


class _FakeBase(Model):
    def __init__(
        self,
        name: str,
        *,
        latency: float = 0.0,
        price: Price | None = None,
        logprobs: bool = True,
        max_concurrency: int = 1024,
    ) -> None:
        super().__init__(name, price=price, max_concurrency=max_concurrency)
        self.latency = latency
        self._logprobs = logprobs
        self._caps: Capabilities | None = None
        self._input_bounds: dict[tuple[str | None, str | None, str], int] = {}
        self.requests: list[GenerationRequest] = []

    @property
    def capabilities(self) -> Capabilities:
        # Asked several times per call on the spend path: build it once per setting.
        caps = self._caps
        if caps is None or caps.logprobs != self._logprobs:
            caps = self._caps = Capabilities(native_n=False, logprobs=self._logprobs, prefix=True,
                                             exact_token_count=True)
        return caps

    def count_tokens(self, text: str) -> int:
        return word_tokens(text)

    def input_upper_bound(self, request: GenerationRequest) -> int:
        # Samples of one question share their prompt: count its words once.
        key = (request.system, request.prompt, request.prefix) if request.messages is None else None
        if key is not None:
            hit = self._input_bounds.get(key)
            if hit is not None:
                return hit
        text = " ".join(m["content"] for m in request.chat_messages()) + " " + request.prefix
        bound = word_tokens(text)
        if key is not None:
            if len(self._input_bounds) >= 256:
                self._input_bounds.clear()
            self._input_bounds[key] = bound
        return bound

    def _finish(self, request: GenerationRequest, text: str, finish: str | None = None) -> Generation:
        # Honour stop sequences and max_tokens the way a real backend would;
        # "eos" marks a reply that ended on its own (no stop sequence hit).
        reason = finish or "eos"
        for s in request.stop:
            idx = text.find(s)
            if idx >= 0:
                text = text[:idx]
                reason = "stop"
        if word_tokens(text) > request.max_tokens:
            # Split on any whitespace (as word_tokens counts): newlines inside a
            # "word" once let the reply exceed max_tokens and the reservation.
            text = " ".join(text.split()[: request.max_tokens])
            reason = "length"
        out = word_tokens(text)
        lps = None
        if request.logprobs and self._logprobs:
            lps = tuple(TokenLogprob(w, -0.1) for w in text.split()) or None
        return Generation(
            text=text,
            finish_reason=reason,
            logprobs=lps,
            usage=self.usage(self.input_upper_bound(request), out),
            model=self.name,
        )


class ScriptedModel(_FakeBase):
    """Replies from a script.

    Args:
        replies: a list of replies used in order (cycled when ``cycle``), or
            a mapping ``{substring: reply or [replies]}`` matched against the
            prompt + prefix (first match wins; key ``"*"`` is the default).
        cycle: restart the list when exhausted (else raise).
        fail_times: the first ``fail_times`` calls raise ``fail_with``.
    """

    backend = "scripted"

    def __init__(
        self,
        replies: Iterable[str] | Mapping[str, str | list[str]] = ("ok",),
        *,
        name: str = "scripted",
        cycle: bool = True,
        latency: float = 0.0,
        fail_times: int = 0,
        fail_with: BaseException | None = None,
        price: Price | None = None,
        logprobs: bool = True,
    ) -> None:
        super().__init__(name, latency=latency, price=price, logprobs=logprobs)
        self.calls = 0
        self._fail_times = fail_times
        self._fail_with = fail_with
        if isinstance(replies, Mapping):
            self._map: dict[str, Any] | None = {k: _iter_of(v) for k, v in replies.items()}
            self._seq: Any = None
        else:
            items = list(replies)
            if not items:
                raise ValueError("ScriptedModel needs at least one reply")
            self._map = None
            self._seq = itertools.cycle(items) if cycle else iter(items)

    async def _generate_one(self, request: GenerationRequest) -> Generation:
        self.calls += 1
        self.requests.append(request)
        if self.latency:
            await asyncio.sleep(self.latency)
        if self.calls <= self._fail_times:
            from testtime.errors import ModelAPIError

            raise self._fail_with or ModelAPIError("scripted failure", retryable=True, backend="scripted")
        return self._finish(request, self._next(request))

    def _next(self, request: GenerationRequest) -> str:
        if self._map is None:
            try:
                return next(self._seq)
            except StopIteration:
                raise RuntimeError("ScriptedModel ran out of replies") from None
        haystack = "\n".join(m["content"] for m in request.chat_messages()) + "\n" + request.prefix
        for key, it in self._map.items():
            if key != "*" and key in haystack:
                return next(it)
        if "*" in self._map:
            return next(self._map["*"])
        raise RuntimeError(f"ScriptedModel has no reply for prompt {haystack[:80]!r}")


def _iter_of(v: str | list[str]) -> Any:
    return itertools.cycle([v] if isinstance(v, str) else list(v))


ReplyFn = Callable[[GenerationRequest], "str | Generation | Awaitable[str | Generation]"]


class FunctionModel(_FakeBase):
    """Calls ``fn(request)`` for each sample; it returns text or a Generation."""

    backend = "function"

    def __init__(self, fn: ReplyFn, *, name: str = "function", latency: float = 0.0,
                 price: Price | None = None, logprobs: bool = True) -> None:
        super().__init__(name, latency=latency, price=price, logprobs=logprobs)
        self.fn = fn
        self.calls = 0

    async def _generate_one(self, request: GenerationRequest) -> Generation:
        self.calls += 1
        self.requests.append(request)
        if self.latency:
            await asyncio.sleep(self.latency)
        out = self.fn(request)
        if inspect.isawaitable(out):
            out = await out
        if isinstance(out, Generation):
            return out
        return self._finish(request, str(out))
