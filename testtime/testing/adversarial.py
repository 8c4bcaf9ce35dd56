"""In-process adversarial backends: honest fakes that misbehave the way real APIs do.

Each class is a :class:`~testtime.models.base.Model` that streams its reply
one word (= one token) per :class:`~testtime.models.base.StreamDelta` and
ends with a :class:`~testtime.models.base.StreamEnd`, like an API backend
with ``stream_options.include_usage``. Prompt tokens are counted exactly (one
per word) and ``input_upper_bound`` is that exact count, so for an honest
backend the ledger can be compared with what the backend served, token for
token.

* :class:`HonestModel` -- reports exactly what it generated.
* :class:`OverReporting` -- reports ``factor`` x the completion tokens.
* :class:`NoUsage` -- reports no usage at all (``StreamEnd.usage is None``).
* :class:`FewerChoices` -- native ``n`` but returns at most ``cap`` choices.
* :class:`CutStream` -- yields ``after_k`` deltas, then the "connection" drops
  (a retryable :class:`~testtime.errors.ModelAPIError` without status).
* :class:`ErrorStorm` -- seeded 408 / 429 (Retry-After) / 500 / timeout faults.
* :class:`Slow` -- answers after ``latency`` seconds (and ``delta_latency`` per delta).

What each served is in :attr:`AdversarialModel.log` (a :class:`ServedLog`):
``billed`` is what an honest provider would bill (the prompt of every
request it processed plus every token it generated, including those of
cut or cancelled streams), ``reported`` what the backend told the client
(usage in ``StreamEnd``, or nothing), and ``attempts`` every request it got.

All of them set :attr:`retry_policy` with zero waits, so the spend path
retries them without sleeping.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from testtime.budget import Usage
from testtime.errors import BudgetOverdrawn, ModelAPIError
from testtime.models.base import (
    Capabilities,
    Generation,
    GenerationRequest,
    StreamDelta,
    StreamEnd,
    StreamItem,
)
from testtime.models.prices import Price
from testtime.models.retry import RetryPolicy
from testtime.models.scripted import _FakeBase

#: A retry policy that never sleeps (tests must not wait on backoff).
NO_WAIT = RetryPolicy(max_retries=2, initial_wait=0.0, max_wait=0.0)
#: Prices of the fakes, USD per million tokens (so ``usd`` limits bind).
FAKE_PRICE = Price(input=1.0, output=3.0)


@dataclass(slots=True)
class ServedLog:
    """What an adversarial backend did, counted on its side.

    Attributes:
        attempts: requests it received (retries included).
        ok: streams it finished.
        failed: attempts it failed on purpose (faults, cuts), by kind.
        cancelled: streams the client closed before the end.
        billed: what an honest provider would bill for everything it processed.
        reported: usage it reported to the client (``StreamEnd.usage``).
        unreported: billed usage of finished streams it did not report (NoUsage).
        over_reports: finished calls whose reported usage exceeded what was billed.
    """

    attempts: int = 0
    ok: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    cancelled: int = 0
    billed: Usage = field(default_factory=Usage)
    reported: Usage = field(default_factory=Usage)
    unreported: Usage = field(default_factory=Usage)
    over_reports: int = 0


class AdversarialModel(_FakeBase):
    """The honest base: streams ``reply`` word by word and reports exactly what it did.

    Args:
        reply: the reply text (every choice gets the same text).
        name: model name (``adversarial:NAME``).
        latency: seconds before the first delta.
        delta_latency: seconds before every delta.
        native_n: one request serves all ``n`` choices (else the spend path fans out).
        price: USD per million tokens.
        retry_policy: how the spend path retries failed attempts (default: 3 attempts, no waits).
    """

    backend = "adversarial"
    #: What the backend does wrong, for tables and test ids.
    kind = "honest"
    #: True when it reports exactly what it billed (the ledger must then match ``log.billed``).
    reports_honestly = True

    def __init__(
        self,
        reply: str = "The answer is 42.",
        *,
        name: str | None = None,
        latency: float = 0.0,
        delta_latency: float = 0.0,
        native_n: bool = True,
        price: Price | None = None,
        retry_policy: RetryPolicy | None = NO_WAIT,
    ) -> None:
        super().__init__(name or self.kind, latency=latency, price=price or FAKE_PRICE, logprobs=False)
        self.reply = reply
        self.delta_latency = delta_latency
        self._native_n = native_n
        self.retry_policy = retry_policy
        self.log = ServedLog()

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(native_n=self._native_n, logprobs=False, prefix=True, exact_token_count=True)

    # ----------------------------------------------------------- behaviour hooks
    def choices(self, n: int) -> int:
        """How many choices a request for ``n`` gets."""
        return n

    async def before(self, request: GenerationRequest, attempt: int) -> object:
        """Runs when a request arrives (it counted as an attempt); may raise a fault.

        Returns per-attempt state handed to :meth:`after_delta`.
        """
        return None

    def after_delta(self, state: object, delivered: int) -> None:
        """Runs after each delta the client received; may cut the stream."""

    def report(self, billed: Usage) -> Usage | None:
        """The usage told to the client for a finished call that cost ``billed``."""
        return billed

    # ----------------------------------------------------------------- serving
    def _fail(self, kind: str) -> None:
        self.log.failed[kind] = self.log.failed.get(kind, 0) + 1

    def _bill(self, prompt: int, out: int) -> Usage:
        return Usage(input_tokens=prompt, output_tokens=out, calls=1, usd=self.price.cost(prompt, out, 0))

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        log = self.log
        log.attempts += 1
        attempt = log.attempts
        self.requests.append(request)
        prompt = self.input_upper_bound(request)
        delivered = 0
        processing = False  # True once the request is being generated (billable)
        finished = False
        try:
            state = await self.before(request, attempt)
            processing = True
            if self.latency:
                await asyncio.sleep(self.latency)
            text = self.reply
            gens = [self._finish(request, text) for _ in range(self.choices(request.n))]
            words = [g.text.split() for g in gens]
            longest = max((len(w) for w in words), default=0)
            for pos in range(longest):
                for i, ws in enumerate(words):
                    if pos >= len(ws):
                        continue
                    if self.delta_latency:
                        await asyncio.sleep(self.delta_latency)
                    yield StreamDelta(index=i, text=ws[pos] + (" " if pos < len(ws) - 1 else ""))
                    delivered += 1
                    self.after_delta(state, delivered)
            out = sum(len(ws) for ws in words)
            billed = self._bill(prompt, out)
            reported = self.report(billed)
            finished = True
            log.ok += 1
            log.billed = log.billed + billed
            if reported is None:
                log.unreported = log.unreported + billed
                gens = [replace(g, usage=Usage()) for g in gens]
            else:
                log.reported = log.reported + reported
                if reported.tokens > billed.tokens or reported.usd > billed.usd + 1e-15:
                    log.over_reports += 1
                gens = _share(gens, reported)
            yield StreamEnd(generations=gens, usage=reported)
        except (GeneratorExit, asyncio.CancelledError):
            if not finished:
                log.cancelled += 1
            raise
        finally:
            if processing and not finished:
                # Cut, cancelled or timed out while generating: a provider
                # bills the prompt and the tokens it sent.
                log.billed = log.billed + self._bill(prompt, delivered)

    async def generate(self, request: GenerationRequest) -> list[Generation]:
        """One attempt, consumed (for direct, non-ctx users); no retries."""
        end: StreamEnd | None = None
        async for item in self.stream(request):
            if isinstance(item, StreamEnd):
                end = item
        assert end is not None
        return end.generations


def _share(gens: list[Generation], usage: Usage) -> list[Generation]:
    """Per-generation usage: the first carries the prompt and the call, output split evenly."""
    if not gens:
        return gens
    k = len(gens)
    base, extra = divmod(usage.output_tokens, k)
    out = []
    for i, g in enumerate(gens):
        share = base + (1 if i < extra else 0)
        out.append(replace(g, usage=Usage(
            input_tokens=usage.input_tokens if i == 0 else 0, output_tokens=share,
            calls=usage.calls if i == 0 else 0, usd=usage.usd if i == 0 else 0.0)))
    return out


class HonestModel(AdversarialModel):
    """Reports exactly what it generated."""

    kind = "honest"


class OverReporting(AdversarialModel):
    """Reports ``factor`` x the completion tokens it generated (priced accordingly)."""

    kind = "over-reporting"
    reports_honestly = False

    def __init__(self, reply: str = "The answer is 42.", *, factor: float = 50.0, **kw: object) -> None:
        super().__init__(reply, **kw)  # type: ignore[arg-type]
        self.factor = factor

    def report(self, billed: Usage) -> Usage | None:
        out = int(round(billed.output_tokens * self.factor))
        return replace(billed, output_tokens=out, usd=self.price.cost(billed.input_tokens, out, 0))


class NoUsage(AdversarialModel):
    """Never reports usage: the spend path must settle the worst case."""

    kind = "no-usage"
    reports_honestly = False

    def report(self, billed: Usage) -> Usage | None:
        return None


class FewerChoices(AdversarialModel):
    """Native ``n`` that returns at most ``cap`` choices (the spend path must top up)."""

    kind = "fewer-choices"

    def __init__(self, reply: str = "The answer is 42.", *, cap: int = 1, **kw: object) -> None:
        kw.setdefault("native_n", True)
        super().__init__(reply, **kw)  # type: ignore[arg-type]
        self.cap = max(cap, 1)

    def choices(self, n: int) -> int:
        return min(n, self.cap)


class CutStream(AdversarialModel):
    """Drops the connection after ``after_k`` deltas (with probability ``p`` per attempt, seeded)."""

    kind = "cut-stream"

    def __init__(self, reply: str = "The answer is 42.", *, after_k: int = 2, p: float = 1.0,
                 seed: int = 0, **kw: object) -> None:
        super().__init__(reply, **kw)  # type: ignore[arg-type]
        self.after_k = after_k
        self.p = p
        self.seed = seed

    async def before(self, request: GenerationRequest, attempt: int) -> object:
        cut = random.Random(f"{self.seed}:{attempt}").random() < self.p
        if cut and self.after_k <= 0:
            self._fail("cut")
            self.log.billed = self.log.billed + self._bill(self.input_upper_bound(request), 0)
            raise ModelAPIError(f"{self.spec}: connection dropped before any delta", retryable=True,
                                backend=self.backend)
        return cut

    def after_delta(self, state: object, delivered: int) -> None:
        if state and delivered >= self.after_k:
            self._fail("cut")
            raise ModelAPIError(f"{self.spec}: connection dropped after {delivered} deltas",
                                retryable=True, backend=self.backend)


class ErrorStorm(AdversarialModel):
    """Seeded faults per attempt: 408, 429 (with ``retry_after``), 500, and timeouts.

    A status fault is an error reply (nothing generated, no tokens billed,
    but a request sent: it counts as one call); a timeout happens after the
    request was sent (the prompt may be billed).
    """

    kind = "error-storm"

    def __init__(self, reply: str = "The answer is 42.", *, p408: float = 0.1, p429: float = 0.2,
                 p500: float = 0.2, ptimeout: float = 0.1, seed: int = 0, retry_after: float = 0.0,
                 **kw: object) -> None:
        super().__init__(reply, **kw)  # type: ignore[arg-type]
        self.p = (p408, p429, p500, ptimeout)
        self.seed = seed
        self.retry_after = retry_after

    def fault(self, attempt: int) -> str | None:
        x = random.Random(f"{self.seed}:{attempt}").random()
        for kind, p in zip(("408", "429", "500", "timeout"), self.p, strict=True):
            if x < p:
                return kind
            x -= p
        return None

    async def before(self, request: GenerationRequest, attempt: int) -> object:
        kind = self.fault(attempt)
        if kind is None:
            return None
        self._fail(kind)
        if kind == "timeout":
            # The request went out and the reply never came: billable prompt.
            self.log.billed = self.log.billed + self._bill(self.input_upper_bound(request), 0)
            await asyncio.sleep(0)
            raise ModelAPIError(f"{self.spec}: request timed out (injected)", retryable=True,
                                backend=self.backend)
        status = int(kind)
        self.log.billed = self.log.billed + Usage(calls=1)  # a request, no tokens
        raise ModelAPIError(f"{self.spec}: HTTP {status} (injected)", retryable=True, status=status,
                            retry_after=self.retry_after if status == 429 else None, backend=self.backend)


class Slow(AdversarialModel):
    """Honest, but answers after ``latency`` seconds."""

    kind = "slow"

    def __init__(self, reply: str = "The answer is 42.", *, latency: float = 0.01, **kw: object) -> None:
        super().__init__(reply, latency=latency, **kw)  # type: ignore[arg-type]


#: Every adversarial backend class, by kind.
KINDS: dict[str, type[AdversarialModel]] = {
    cls.kind: cls for cls in (HonestModel, OverReporting, NoUsage, FewerChoices, CutStream, ErrorStorm, Slow)
}


def watch_overdraw(ledger: Any) -> dict[str, int]:
    """Wrap ``ledger.reserve`` to count what happens once the chain is overdrawn.

    Returns a live dict: ``admitted_after_overdraw`` (reservations admitted
    while the chain was already overdrawn: must stay 0) and
    ``refused_overdrawn`` (reservations refused for it).
    """
    seen = {"admitted_after_overdraw": 0, "refused_overdrawn": 0}
    original = ledger.reserve

    def reserve(amount: Any, **kw: Any) -> Any:
        was_overdrawn = ledger.is_overdrawn()
        try:
            res = original(amount, **kw)
        except BudgetOverdrawn:
            seen["refused_overdrawn"] += 1
            raise
        if was_overdrawn:
            seen["admitted_after_overdraw"] += 1
        return res

    ledger.reserve = reserve
    return seen
