"""``anthropic:MODEL`` -- the Anthropic Messages API.

* ``n > 1`` fans out as concurrent calls (the API samples one reply per call).
* ``request.prefix`` becomes an assistant prefill: the reply continues it.
* ``request.thinking_budget`` turns on extended thinking with that budget
  (``max_tokens`` = answer + thinking budget); thinking arrives on its own
  channel, is billed as output, and its tokens are ``usage.reasoning_tokens``
  (the API's count when it gives one, else output minus the answer's estimate).
* ``temperature`` / ``top_p`` are sent when the installed SDK still accepts
  them (recent SDKs removed them; the API's defaults apply then).
* No logprobs: :attr:`Capabilities.logprobs` is False and a request asking
  for them raises :class:`~testtime.errors.CapabilityError`.

Every attempt streams (Messages streaming): text and thinking arrive as
deltas on their own channels, usage comes from ``message_start`` (input,
cache reads and writes) and ``message_delta`` (output); a stream that ends
before ``message_delta`` said why it stopped is a retryable "stream cut".

Options: ``base_url`` (or ``ANTHROPIC_BASE_URL``), ``api_key`` (or
``ANTHROPIC_API_KEY``), ``idle_timeout`` (s without a byte from the server
before a request fails, default 60; ``timeout`` is an alias),
``max_retries`` (retries after the first attempt, as in the SDK: default 2),
``max_retry_after`` (longest Retry-After honoured, s, default 600),
``max_concurrency``, ``price``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import replace
from typing import Any

from testtime.budget import Usage
from testtime.errors import CapabilityError, MissingDependency, ModelAPIError, UserError
from testtime.models.base import (
    Capabilities,
    Generation,
    GenerationRequest,
    Model,
    StreamDelta,
    StreamEnd,
    StreamItem,
)
from testtime.models.prices import Price
from testtime.models.retry import RetryPolicy, translate_error, with_retries
from testtime.models.streaming import (
    CONNECT_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    WRITE_TIMEOUT,
    collect,
    fan_out,
    idle_timeout_option,
    semaphore,
)

_KNOWN_OPTIONS = {"base_url", "api_key", "timeout", "idle_timeout", "max_retries", "max_retry_after",
                  "max_concurrency", "price"}
_FINISH = {"end_turn": "eos", "stop_sequence": "stop", "max_tokens": "length"}
#: The API's smallest extended-thinking budget.
MIN_THINKING_BUDGET = 1024


@functools.cache
def _sdk_takes_sampling() -> bool:
    """Whether the installed SDK still has ``temperature`` on messages.create.

    Recent SDKs dropped the sampling parameters; with those we leave the
    API's defaults rather than smuggle fields the API may reject.
    """
    from anthropic.resources.messages import AsyncMessages

    return "temperature" in inspect.signature(AsyncMessages.create).parameters


class AnthropicModel(Model):
    """A Claude model over the Messages API.

    :meth:`stream` is one attempt (one request per sample: ``n > 1`` runs
    ``n`` streams at once, merged); :meth:`generate` retries whole attempts
    under :attr:`retry_policy` for direct callers.
    """

    backend = "anthropic"

    def __init__(self, name: str, *, api_key: str, base_url: str | None = None,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT, timeout: float | None = None,
                 policy: RetryPolicy | None = None, price: Price | None = None,
                 max_concurrency: int = 16) -> None:
        super().__init__(name, price=price, max_concurrency=max_concurrency)
        self._api_key = api_key
        self.base_url = base_url
        #: Seconds without a byte from the server before a request fails (``timeout`` is an alias).
        self.idle_timeout = float(timeout if timeout is not None else idle_timeout)
        self.retry_policy = policy or RetryPolicy()
        self._client_obj: Any = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:  # never show the key, nor a password in the URL
        from testtime.trace.events import redact_url

        shown = redact_url(self.base_url) if self.base_url else self.base_url
        return f"<AnthropicModel {self.spec} base_url={shown!r}>"

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(native_n=False, logprobs=False, prefix=True, prefix_cache=True, thinking=True)

    def _client(self) -> Any:
        # An httpx pool belongs to the event loop that opened it.
        loop = asyncio.get_running_loop()
        if self._client_obj is None or self._client_loop is not loop:
            from anthropic import AsyncAnthropic, Timeout

            timeout = Timeout(connect=CONNECT_TIMEOUT, read=self.idle_timeout, write=WRITE_TIMEOUT, pool=None)
            self._client_obj = AsyncAnthropic(api_key=self._api_key, base_url=self.base_url,
                                              timeout=timeout, max_retries=0)
            self._client_loop = loop
        return self._client_obj

    async def aclose(self) -> None:
        client, self._client_obj = self._client_obj, None
        if client is not None:
            try:
                await client.close()
            except RuntimeError:  # its loop is gone
                pass

    def _check(self, request: GenerationRequest) -> None:
        if request.logprobs:
            raise CapabilityError(
                f"{self.spec} cannot return token logprobs (the Messages API has none); "
                "use a strategy/PRM that does not need logprobs, or an openai:/local/vllm: model"
            )
        if request.prefix and request.thinking_budget:
            raise CapabilityError(f"{self.spec}: extended thinking cannot continue an assistant prefix; "
                                  "drop thinking_budget for step-level search")
        self._params(request)  # raises UserError for a bad thinking budget, before anything is sent

    async def generate(self, request: GenerationRequest) -> list[Generation]:
        """``request.n`` samples for direct (ledger-less) callers, each retried on its own."""
        self._check(request)
        one = request.with_(n=1)

        async def attempt() -> list[Generation]:
            return (await collect(self._stream_one(one), backend="anthropic")).generations

        parts = await asyncio.gather(*(
            with_retries(attempt, policy=self.retry_policy, model=self.spec, translate=self._translate)
            for _ in range(request.n)))
        return [g for part in parts for g in part]

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        """One attempt: ``n`` concurrent Messages streams (one for n=1), deltas then a :class:`StreamEnd`.

        For ``n > 1`` the deltas carry the sample's slot as ``index`` and the
        usage is the sum over the streams (``calls=n``); see
        :mod:`testtime.models.streaming` for what a partly failed fan-out ends with.
        """
        self._check(request)
        if request.n == 1:
            inner = self._stream_one(request)
        else:
            inner = fan_out(self, [request.with_(n=1)] * request.n, self._stream_one)
        async with aclosing(inner) as items:
            async for item in items:
                yield item

    def _params(self, request: GenerationRequest) -> tuple[dict[str, Any], str]:
        system_parts = [request.system] if request.system else []
        messages: list[dict[str, str]] = []
        for m in request.messages or ():
            if m.get("role") == "system":
                system_parts.append(m.get("content", ""))
            else:
                messages.append({"role": m["role"], "content": m.get("content", "")})
        if request.prompt is not None:
            messages.append({"role": "user", "content": request.prompt})
        # The API rejects a prefill ending in whitespace; send it trimmed and
        # drop the same whitespace from the front of the reply.
        trimmed = request.prefix.rstrip()
        dropped = request.prefix[len(trimmed):]
        if trimmed:
            messages.append({"role": "assistant", "content": trimmed})
        params: dict[str, Any] = {"model": self.name, "messages": messages, "max_tokens": request.max_tokens}
        if system_parts:
            params["system"] = "\n\n".join(system_parts)
        if request.stop:
            params["stop_sequences"] = list(request.stop)
        if request.thinking_budget:
            if request.thinking_budget < MIN_THINKING_BUDGET:
                raise UserError(f"{self.spec}: thinking_budget must be >= {MIN_THINKING_BUDGET} tokens, "
                                f"got {request.thinking_budget}")
            # Thinking tokens count toward max_tokens, and temperature must stay at its default.
            params["thinking"] = {"type": "enabled", "budget_tokens": request.thinking_budget}
            params["max_tokens"] = request.max_tokens + request.thinking_budget
        elif _sdk_takes_sampling():
            params["temperature"] = request.temperature
            if request.top_p < 1.0:
                params["top_p"] = request.top_p
        return params, dropped

    async def _stream_one(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        """Exactly one Messages request, streamed (errors translated)."""
        params, dropped = self._params(request)
        async with semaphore(self):
            client = self._client()
            try:
                resp = await client.messages.create(**params, stream=True)
                text: list[str] = []
                thinking: list[str] = []
                start_usage: Any = None
                delta_usage: Any = None
                stop_reason: str | None = None
                try:
                    async for ev in resp:
                        kind = getattr(ev, "type", "")
                        if kind == "message_start":
                            start_usage = getattr(getattr(ev, "message", None), "usage", None)
                        elif kind == "content_block_start":
                            block = getattr(ev, "content_block", None)
                            piece = getattr(block, "text", None) if getattr(block, "type", "") == "text" else None
                            if piece:
                                text.append(piece)
                                yield StreamDelta(text=piece)
                        elif kind == "content_block_delta":
                            d = getattr(ev, "delta", None)
                            dtype = getattr(d, "type", "")
                            if dtype == "text_delta" and d.text:
                                text.append(d.text)
                                yield StreamDelta(text=d.text)
                            elif dtype == "thinking_delta" and d.thinking:
                                thinking.append(d.thinking)
                                yield StreamDelta(thinking=d.thinking)
                        elif kind == "message_delta":
                            if getattr(ev, "usage", None) is not None:
                                delta_usage = ev.usage
                            reason = getattr(getattr(ev, "delta", None), "stop_reason", None)
                            if reason:
                                stop_reason = reason
                finally:
                    await resp.close()
            except ModelAPIError:
                raise
            except Exception as exc:
                mapped = self._translate(exc)
                if mapped is None:
                    raise
                raise mapped from None  # drop the SDK chain: it may echo request headers
        usage = self._usage_of(start_usage, delta_usage)
        if stop_reason is None:
            raise ModelAPIError(f"{self.spec}: stream cut: the stream ended before the reply finished",
                                retryable=True, backend="anthropic")
        out = "".join(text)
        if usage is not None and thinking and not usage.reasoning_tokens:
            # The API bills thinking as output but does not count it apart (and
            # may return a summary, not the thinking billed): output minus an
            # estimate of the answer's tokens (~4 bytes each) is the thinking part.
            answer_est = -(-len(out.encode()) // 4)
            usage = replace(usage, reasoning_tokens=max(usage.output_tokens - answer_est, 0))
        if dropped and out.startswith(dropped):
            out = out[len(dropped):]
        elif dropped and out[:1].isspace():
            out = out.lstrip()
        gen = Generation(
            text=out,
            finish_reason=_FINISH.get(stop_reason, stop_reason),
            usage=usage if usage is not None else Usage(calls=1),
            model=self.name,
            thinking="".join(thinking),
        )
        yield StreamEnd(generations=[gen], usage=usage)

    def _usage_of(self, start: Any, delta: Any) -> Usage | None:
        """The call's usage from ``message_start`` and ``message_delta`` (None if neither came).

        ``message_delta`` counts are cumulative and win where present.
        """
        counts = [getattr(src, k, None) for src in (start, delta) if src is not None
                  for k in ("input_tokens", "output_tokens")]
        if all(c is None for c in counts):
            return None

        def pick(key: str) -> int:
            for src in (delta, start):
                v = getattr(src, key, None) if src is not None else None
                if v is not None:
                    return int(v)
            return 0

        cached = pick("cache_read_input_tokens")
        created = pick("cache_creation_input_tokens")
        # input_tokens excludes cache reads and writes; the ledger wants all prompt tokens.
        inp = pick("input_tokens") + cached + created
        details = None
        for src in (delta, start):
            details = getattr(src, "output_tokens_details", None) if src is not None else None
            if details is not None:
                break
        thinking = int(getattr(details, "thinking_tokens", 0) or 0)
        return replace(self.usage(inp, pick("output_tokens"), cached, calls=1, cache_write_tokens=created),
                       reasoning_tokens=thinking)

    def _usage_from_body(self, u: dict[str, Any]) -> Usage | None:
        if not isinstance(u, dict) or ("input_tokens" not in u and "output_tokens" not in u):
            return None
        cached = int(u.get("cache_read_input_tokens") or 0)
        created = int(u.get("cache_creation_input_tokens") or 0)
        return self.usage(int(u.get("input_tokens") or 0) + cached + created, int(u.get("output_tokens") or 0),
                          cached, calls=1, cache_write_tokens=created)

    def _translate(self, exc: BaseException) -> ModelAPIError | None:
        return translate_error(exc, backend="anthropic", model=self.name, key_env="ANTHROPIC_API_KEY",
                               base_url=self.base_url, secrets=[self._api_key],
                               usage_parser=self._usage_from_body)


def load(name: str, **options: Any) -> AnthropicModel:
    """Build an ``anthropic:MODEL`` backend.

    Raises:
        UserError: unknown option or no API key (checked before any call).
        MissingDependency: the anthropic package is missing.
    """
    unknown = set(options) - _KNOWN_OPTIONS
    if unknown:
        raise UserError(f"anthropic backend: unknown option(s) {sorted(unknown)}; known: {sorted(_KNOWN_OPTIONS)}")
    try:
        import anthropic  # noqa: F401
    except ImportError:
        raise MissingDependency("anthropic", "anthropic") from None
    api_key = options.get("api_key") or os.environ.get("ANTHROPIC_API_KEY")
    if not api_key:
        raise UserError(f"anthropic:{name} needs an API key: set ANTHROPIC_API_KEY")
    base_url = options.get("base_url") or os.environ.get("ANTHROPIC_BASE_URL") or None
    return AnthropicModel(name, api_key=api_key, base_url=base_url, idle_timeout=idle_timeout_option(options),
                          policy=RetryPolicy.from_options(options), price=options.get("price"),
                          max_concurrency=int(options.get("max_concurrency", 16)))
