"""The one model interface every backend implements.

A backend turns a :class:`GenerationRequest` into ``n`` :class:`Generation`
objects. It also says how big a request can possibly be
(:meth:`Model.worst_case`) so the budget ledger can reserve before the call is
sent; that estimate must be an upper bound or the budget invariant breaks.
Backends never touch the ledger themselves: :class:`testtime.context.RunContext`
does reserve -> generate -> settle around them.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

from testtime.budget import Usage
from testtime.errors import UserError
from testtime.models.prices import Price, price_for, resolve_price

if TYPE_CHECKING:
    from testtime.models.retry import RetryPolicy


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationRequest:
    """What to generate.

    Give either ``prompt`` (a single user turn) or ``messages`` (OpenAI-style
    ``{"role", "content"}`` dicts, system included). ``prefix`` is text the
    assistant's reply must continue from (partial solutions in step-level
    search); generated text excludes it. ``thinking_budget`` asks reasoning
    backends (Anthropic extended thinking, OpenAI reasoning models) for that
    many thinking tokens on top of ``max_tokens`` (the answer);
    ``reasoning_effort`` is OpenAI's knob (None: from the budget).
    ``thinking`` (a :class:`testtime.thinking.ThinkingPolicy`) runs this one
    request under a thinking/answer split on any backend.
    """

    prompt: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    system: str | None = None
    prefix: str = ""
    n: int = 1
    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    thinking_budget: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    reasoning_effort: str | None = None
    thinking: Any = None  # a testtime.thinking.ThinkingPolicy (Any: that module imports this one)

    def __post_init__(self) -> None:
        if self.prompt is None and not self.messages:
            raise UserError("a generation request needs a prompt or messages")
        if self.n < 1:
            raise UserError(f"n must be >= 1, got {self.n}")
        if self.max_tokens < 1:
            raise UserError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        if self.messages is not None and not isinstance(self.messages, tuple):
            object.__setattr__(self, "messages", tuple(self.messages))

    def chat_messages(self) -> list[dict[str, str]]:
        """The request as chat messages (system first when given), prefix excluded."""
        msgs: list[dict[str, str]] = []
        if self.system:
            msgs.append({"role": "system", "content": self.system})
        if self.messages:
            msgs.extend(dict(m) for m in self.messages)
        if self.prompt is not None:
            msgs.append({"role": "user", "content": self.prompt})
        return msgs

    def text_length(self) -> int:
        """UTF-8 bytes of everything sent as input (used for token upper bounds)."""
        total = len(self.prefix.encode())
        for m in self.chat_messages():
            total += len(m.get("content", "").encode()) + len(m.get("role", "").encode())
        return total

    def with_(self, **changes: Any) -> GenerationRequest:
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token with its log-probability (and alternatives if asked)."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Generation:
    """One sampled completion.

    ``finish_reason`` is ``"eos"`` (the model ended on its own, when the
    backend can tell), ``"stop"`` (a stop sequence matched, or the backend
    cannot tell it from a natural end), ``"length"`` (hit max_tokens) or a
    backend-specific value. ``usage`` is
    this generation's share of the call: the first generation of a call
    carries the prompt tokens, each carries its own output tokens.
    """

    text: str
    finish_reason: str = "stop"
    logprobs: tuple[TokenLogprob, ...] | None = None
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    raw: Any = None
    thinking: str = ""

    def mean_logprob(self) -> float | None:
        if not self.logprobs:
            return None
        return sum(t.logprob for t in self.logprobs) / len(self.logprobs)


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamDelta:
    """A piece of one choice's output as it arrives.

    Attributes:
        index: which of the request's ``n`` choices it belongs to.
        text: answer text (may be empty).
        thinking: reasoning text, on its own channel (never part of ``text``).
        tokens: output tokens this delta carries (one per chunk unless the
            backend says more); what a cancelled stream is settled with.
    """

    index: int = 0
    text: str = ""
    thinking: str = ""
    tokens: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamEnd:
    """The last item of a stream: the finished generations and what the call cost.

    ``usage`` is what the backend reported for the whole call (prompt once
    per request it sent, all choices' output), or None when it reported
    nothing -- the spend path then settles the worst case.
    """

    generations: list[Generation]
    usage: Usage | None


StreamItem = StreamDelta | StreamEnd


@dataclass(frozen=True, slots=True, kw_only=True)
class Capabilities:
    """What a backend can do; strategies check these and fail clearly."""

    native_n: bool = False
    logprobs: bool = False
    prefix: bool = True
    prefix_cache: bool = False
    thinking: bool = False
    exact_token_count: bool = False


class Model(abc.ABC):
    """An async text generator with a price and a worst-case size estimate.

    Subclasses implement :meth:`_generate_one` (one sample) or override
    :meth:`generate` when the backend has native ``n > 1``.
    """

    #: The spec prefix that selects this backend (``"openai"``, ``"local"``...).
    backend: ClassVar[str] = "model"
    #: How the spend path retries this backend's failed attempts (None: never).
    #: API backends set it; each retry is reserved and counted as a call.
    retry_policy: RetryPolicy | None = None
    #: (request, price, native_n, worst case) of the last :meth:`worst_case`: the
    #: samples of one question are one frozen request, asked about on every call.
    _worst_memo: tuple[Any, ...] | None = None

    def __init__(self, name: str, *, price: Price | None = None, max_concurrency: int = 64) -> None:
        self.name = name
        #: Where the price came from: option, override, builtin, free-backend or none
        #: (an API model with no price: a usd limit refuses it, see prices.require_prices).
        found, self.price_source = (price, "option") if price is not None else resolve_price(self.backend, name)
        self.price = found if found is not None else price_for(self.backend, name)
        self.max_concurrency = max_concurrency
        self._sem: asyncio.Semaphore | None = None
        self._sem_loop: asyncio.AbstractEventLoop | None = None

    @property
    def spec(self) -> str:
        return f"{self.backend}:{self.name}"

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities()

    async def generate(self, request: GenerationRequest) -> list[Generation]:
        """Sample ``request.n`` completions (fanned out concurrently by default)."""
        if request.n == 1:
            return [await self._limited(request)]
        one = request.with_(n=1)
        seeds = [None if request.seed is None else request.seed + i for i in range(request.n)]
        results = await asyncio.gather(*(self._limited(one.with_(seed=s)) for s in seeds))
        return list(results)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        """One attempt at ``request``: deltas as they arrive, then one :class:`StreamEnd`.

        No retries here: :meth:`testtime.context.RunContext.generate` retries
        under :attr:`retry_policy`, reserving each attempt. Backends that cannot
        stream yield only the end. A backend error is raised as
        :class:`~testtime.errors.ModelAPIError`; cancellation (closing the
        iterator) must stop the request.
        """
        yield await self.stream_end(request)

    async def stream_end(self, request: GenerationRequest) -> StreamEnd:
        """What the default :meth:`stream` yields: the whole attempt as one :class:`StreamEnd`.

        For backends that do not override :meth:`stream`, the spend path does
        the same without this coroutine: it awaits :meth:`generate` and
        builds the end with :meth:`whole_end` (no async generator per call).
        """
        return self.whole_end(await self.generate(request))

    def whole_end(self, generations: list[Generation]) -> StreamEnd:
        """The :class:`StreamEnd` of an attempt whose :meth:`generate` returned ``generations``."""
        usage = total_usage(generations)
        # A native-n backend answered in one request; a fan-out sent one per sample.
        calls = 1 if self.capabilities.native_n else max(usage.calls, 1)
        return StreamEnd(generations=generations,
                         usage=usage if usage.calls == calls else replace(usage, calls=calls))

    async def _limited(self, request: GenerationRequest) -> Generation:
        loop = asyncio.get_running_loop()
        if self._sem is None or self._sem_loop is not loop:
            self._sem = asyncio.Semaphore(self.max_concurrency)
            self._sem_loop = loop
        async with self._sem:
            return await self._generate_one(request)

    async def _generate_one(self, request: GenerationRequest) -> Generation:
        raise NotImplementedError(f"{type(self).__name__} must implement _generate_one or generate")

    # ----------------------------------------------------------- accounting
    def count_tokens(self, text: str) -> int | None:
        """Exact token count when the backend has a tokenizer, else None."""
        return None

    def input_upper_bound(self, request: GenerationRequest) -> int:
        """An upper bound on the prompt tokens this request will be billed.

        Without a tokenizer we use UTF-8 bytes (a byte-level BPE token is at
        least one byte) plus chat-template overhead per message; it is loose
        but safe, and settlement returns the slack to the budget.
        """
        msgs = request.chat_messages()
        overhead = 16 + 8 * len(msgs)
        exact = None
        if self.capabilities.exact_token_count:
            joined = "".join(m.get("content", "") for m in msgs) + request.prefix
            exact = self.count_tokens(joined)
        if exact is not None:
            return exact + overhead
        return request.text_length() + overhead

    def fit_size(self, request: GenerationRequest) -> int:
        """The knob budget fitting turns down when a request does not fit: ``max_tokens`` here.

        Wrappers whose cost is set by something else (a thinking policy's
        thinking budget) override this and :meth:`resized`.
        """
        return request.max_tokens

    def resized(self, request: GenerationRequest, size: int) -> GenerationRequest:
        """``request`` with its :meth:`fit_size` knob set to ``size``."""
        return request.with_(max_tokens=size)

    def worst_case(self, request: GenerationRequest) -> Usage:
        """The most this request can cost: what the ledger reserves."""
        if request.thinking is not None:  # a per-request thinking policy: thinking + answer
            from testtime.thinking import worst_case as thinking_worst_case

            return thinking_worst_case(self, request, request.thinking)
        native = self.capabilities.native_n
        memo = self._worst_memo
        if memo is not None and memo[0] is request and memo[1] is self.price and memo[2] is native:
            return memo[3]
        inp = self.input_upper_bound(request)
        calls_in = inp * (1 if native else request.n)
        out = request.n * request.max_tokens
        if request.thinking_budget:
            out += request.n * request.thinking_budget
        worst = Usage(
            input_tokens=calls_in,
            output_tokens=out,
            # A fan-out sends one request per sample; `calls` counts requests.
            calls=1 if native else request.n,
            # max_cost: the dearest input rate, whatever part is cached or written to the cache.
            usd=self.price.max_cost(calls_in, out),
        )
        self._worst_memo = (request, self.price, native, worst)
        return worst

    def usage(self, input_tokens: int, output_tokens: int, cached_tokens: int = 0, calls: int = 1, *,
              cache_write_tokens: int = 0) -> Usage:
        """Priced usage for counts a backend reported (cached / cache-write tokens are part of input)."""
        return Usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_tokens=cached_tokens,
            calls=calls,
            usd=self.price.cost(input_tokens, output_tokens, cached_tokens,
                                cache_write_tokens=cache_write_tokens),
        )

    async def aclose(self) -> None:
        """Release connections or engines (idempotent)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec}>"


def streams_deltas(model: Model) -> bool:
    """True when ``model`` streams text as it is generated (its ``stream`` is
    overridden, on the class or the instance); :meth:`Model.stream` itself
    yields only the end."""
    # Asked on every call: the class attribute and the instance dict, without
    # building a bound method.
    return type(model).stream is not Model.stream or "stream" in getattr(model, "__dict__", ())


def total_usage(generations: Sequence[Generation], *, calls: int | None = None) -> Usage:
    """Sum of the generations' usage; ``calls`` overrides the summed call count."""
    if len(generations) == 1 and calls is None:
        return generations[0].usage  # Usage is immutable: the sum of one is itself
    total = Usage()
    for g in generations:
        total = total + g.usage
    if calls is not None:
        total = replace(total, calls=calls)
    return total
