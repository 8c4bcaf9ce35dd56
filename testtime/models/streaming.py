"""Helpers shared by the streaming backends: consume a stream, fan one out.

A backend whose API samples one reply per request (Anthropic, OpenAI-
compatible servers without native ``n``) answers ``stream(request)`` with
``n > 1`` by running ``n`` single-sample streams at once and merging them
(:func:`fan_out`). Deltas keep the slot of the sub-request they came from
(``StreamDelta.index`` = 0..n-1).

What a fan-out ends with when some sub-requests failed:

* none succeeded: the most conservative error is raised -- one that may
  have been billed without saying so (a cut or timed-out stream) before one
  that reports what it billed, before an HTTP status error, before a
  request that never left -- so the spend path settles rather than
  releases when anything may have cost money;
* some succeeded: a :class:`StreamEnd` with the successful generations only
  (fewer than ``n``; the spend path tops up through the ledger). Its usage
  is the sum of what the successful sub-requests reported, plus what a
  failed one billed: nothing for a status error or a request never sent,
  ``error.billed`` when the provider said, and otherwise (cut or timed out
  after sending) that sub-request's prompt upper bound plus the output
  tokens its deltas carried -- the rule the spend path applies to a failed
  attempt. It is None when a successful sub-request reported no usage.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from testtime.budget import Usage
from testtime.errors import ModelAPIError, UserError
from testtime.models.base import StreamEnd, StreamItem
from testtime.trace.events import emit_current

if TYPE_CHECKING:
    from testtime.models.base import GenerationRequest, Model

#: Seconds to open a connection / send a request body; reading is bounded by the idle timeout.
CONNECT_TIMEOUT = 10.0
WRITE_TIMEOUT = 30.0
#: Default idle timeout: seconds without a byte from the server before a request fails.
DEFAULT_IDLE_TIMEOUT = 60.0


def failed_attempt_usage(exc: ModelAPIError, *, input_tokens: int, received: int, calls: int,
                         price: Any) -> Usage | None:
    """What a failed attempt may have cost the caller; None when it never reached the server.

    Billed by the error itself: that. An error reply (a status): one request,
    nothing generated. Cut or timed out after sending: the prompt's bound and
    the tokens received, priced at the upper bound (part of the prompt may
    have been written to a cache at a higher rate), so it never under-counts.
    """
    if exc.billed is not None:
        return replace(exc.billed, calls=max(exc.billed.calls, calls))
    if not exc.sent:
        return None
    if exc.status is not None:
        return Usage(calls=calls)
    return cut_usage(input_tokens=input_tokens, received=received, calls=calls, price=price)


def cut_usage(*, input_tokens: int, received: int, calls: int, price: Any) -> Usage:
    """A call cut, timed out or cancelled after sending: the prompt's bound plus what arrived."""
    return Usage(input_tokens=input_tokens, output_tokens=received, calls=calls,
                 usd=price.max_cost(input_tokens, received))


def idle_timeout_option(options: dict[str, Any], default: float = DEFAULT_IDLE_TIMEOUT) -> float:
    """``idle_timeout`` (or its alias ``timeout``) from backend options, validated.

    Raises:
        UserError: not a positive finite number of seconds, or both given and different.
    """
    given = {k: options[k] for k in ("idle_timeout", "timeout") if options.get(k) is not None}
    if not given:
        return default
    values = set()
    for key, raw in given.items():
        try:
            v = float(raw)
        except (TypeError, ValueError):
            raise UserError(f"{key} must be a number of seconds, got {raw!r}") from None
        if not (v > 0 and math.isfinite(v)):
            raise UserError(f"{key} must be a positive number of seconds, got {raw!r}")
        values.add(v)
    if len(values) > 1:
        raise UserError("give idle_timeout or its alias timeout, not both with different values")
    return values.pop()


async def collect(stream: AsyncIterator[StreamItem], *, backend: str = "") -> StreamEnd:
    """Consume ``stream`` (closing it) and return its :class:`StreamEnd`."""
    end: StreamEnd | None = None
    async with aclosing(stream):  # type: ignore[type-var]
        async for item in stream:
            if isinstance(item, StreamEnd):
                end = item
    if end is None:
        raise ModelAPIError(f"{backend or 'model'}: the stream ended without a result", retryable=True,
                            backend=backend)
    return end


def semaphore(model: Model) -> asyncio.Semaphore:
    """The model's per-event-loop concurrency limiter (the one ``Model._limited`` uses)."""
    loop = asyncio.get_running_loop()
    if model._sem is None or model._sem_loop is not loop:
        model._sem = asyncio.Semaphore(model.max_concurrency)
        model._sem_loop = loop
    return model._sem


def _priority(err: ModelAPIError) -> int:
    """Lower is more conservative for the spend path (see the module docstring)."""
    if err.billed is None and err.sent and err.status is None:
        return 0  # may have been billed, amount unknown
    if err.billed is not None:
        return 1
    if err.sent:
        return 2  # an HTTP status error: nothing billed
    return 3  # never left


async def fan_out(
    model: Model,
    requests: list[GenerationRequest],
    one: Callable[[GenerationRequest], AsyncIterator[StreamItem]],
) -> AsyncIterator[StreamItem]:
    """Run ``one(request)`` for every request concurrently, merged into one stream.

    ``one`` is a backend's single-request stream (one attempt; errors are
    :class:`ModelAPIError`). Closing the merged stream cancels every
    sub-stream.
    """
    queue: asyncio.Queue[tuple[str, int, Any]] = asyncio.Queue()
    received = [0] * len(requests)

    async def run(i: int, request: GenerationRequest) -> None:
        try:
            async with aclosing(one(request)) as sub:  # type: ignore[type-var]
                async for item in sub:
                    if isinstance(item, StreamEnd):
                        await queue.put(("end", i, item))
                        return
                    await queue.put(("delta", i, item))
            raise ModelAPIError(f"{model.spec}: the stream ended without a result", retryable=True,
                                backend=model.backend)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one sub-request's failure; the merge decides
            await queue.put(("error", i, exc))

    tasks = [asyncio.ensure_future(run(i, r)) for i, r in enumerate(requests)]
    ends: dict[int, StreamEnd] = {}
    errors: dict[int, BaseException] = {}
    try:
        while len(ends) + len(errors) < len(tasks):
            kind, i, payload = await queue.get()
            if kind == "delta":
                received[i] += payload.tokens
                yield replace(payload, index=i)
            elif kind == "end":
                ends[i] = payload
            else:
                errors[i] = payload
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    plain = [e for e in errors.values() if not isinstance(e, ModelAPIError)]
    if plain and not ends:
        raise plain[0]  # a bug, not an API error: surface it untouched
    api_errors = {i: e for i, e in errors.items() if isinstance(e, ModelAPIError)}
    if not ends:
        first = min(api_errors.values(), key=_priority)
        billed = [e.billed for e in api_errors.values() if e.billed is not None]
        if _priority(first) == 1 and len(billed) > 1:
            total = billed[0]
            for b in billed[1:]:
                total = total + b
            first.billed = total
        raise first
    for i, e in sorted(errors.items()):
        emit_current("note", message=f"{model.spec}: sample {i} of {len(requests)} failed; "
                     f"returning the {len(ends)} that succeeded", error=str(e))
    gens = [g for i in sorted(ends) for g in ends[i].generations]
    usage: Usage | None = Usage()
    for i in sorted(ends):
        u = ends[i].usage
        usage = None if (usage is None or u is None) else usage + u
    if usage is not None:
        for i, e in api_errors.items():
            failed = failed_attempt_usage(e, input_tokens=model.input_upper_bound(requests[i]),
                                          received=received[i], calls=1, price=model.price)
            if failed is not None:
                usage = usage + failed
        if plain:
            usage = None  # a failure of unknown kind: let the spend path settle the worst case
    yield StreamEnd(generations=gens, usage=usage)
