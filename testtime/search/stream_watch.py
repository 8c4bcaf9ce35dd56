"""Generate one sample while watching its stream, and stop it early.

:func:`generate_watched` is the streaming counterpart of
:meth:`~testtime.context.RunContext.generate` for one sample: it reserves the
request's worst case on the ledger, consumes ``model.stream(request)`` and
calls ``watch(text_so_far)`` on every delta of text. When ``watch`` says
stop, the stream is closed (the backend stops generating: closing the
iterator cancels the request) and the call is settled at what it may have
cost -- the prompt's upper bound plus the tokens received -- instead of the
whole ``max_tokens``. Solve-Detect-Verify uses it to stop the solver at a
completion point without re-sending the prefix per chunk.

Backends that do not stream (they yield only the final result) and runs with
a call journal (checkpointed runs replay whole calls) go through
``ctx.generate`` unchanged; the caller then cuts the finished text itself.
There are no retries inside a watched call: a failed stream is settled,
traced and raised as :class:`~testtime.errors.CallFailed`, which anytime
strategies treat like a refusal.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from testtime.context import RunContext
from testtime.errors import CallFailed, ModelAPIError
from testtime.models.base import Generation, GenerationRequest, Model, StreamEnd, streams_deltas
from testtime.models.streaming import cut_usage


async def generate_watched(ctx: RunContext, request: GenerationRequest, watch: Callable[[str], bool], *,
                           role: str = "solve", model: Model | None = None) -> tuple[Generation, bool]:
    """One sample of ``request`` (``n`` must be 1), stopped once ``watch(text)`` is True.

    Returns the generation (``finish_reason="detected"`` when stopped early;
    its text is everything received) and whether it was stopped early. The
    reservation, the stream and the settlement are the run context's own
    (:meth:`RunContext.consume_stream`, :meth:`~RunContext.settle_sent`,
    :meth:`~RunContext.settle_failed`): a watched call is charged by the same
    rules as any other.

    Raises:
        BudgetExhausted / BudgetOverdrawn: the worst case did not fit.
        CallFailed: the stream failed (settled at what it may have cost).
    """
    model = model or ctx.model
    if request.n != 1:
        raise ValueError("generate_watched streams one sample; use ctx.generate for n > 1")
    if ctx.journal is not None or not streams_deltas(model) or getattr(request, "thinking", None) is not None:
        gens = await ctx.generate(request, role=role, model=model)
        return gens[0], False
    worst = model.worst_case(request)
    res = await ctx.reserve(worst, role=role, model=model)
    received = [0]
    parts: list[str] = []
    t0 = time.monotonic()
    try:
        end = await ctx.consume_stream(model, request, received, watch=watch, text=parts)
    except ModelAPIError as exc:
        ctx.settle_failed(res, exc, worst, received[0], model, role)
        ctx.stats["errors"] = ctx.stats.get("errors", 0) + 1
        ctx.stats["last_error"] = exc
        ctx.tracer.emit("error", where=f"model_call {model.spec}", role=role,
                        error=f"{type(exc).__name__}: {exc}", attempts=1)
        raise CallFailed(exc) from exc
    except BaseException as exc:
        if not res.done:
            ctx.settle_failed(res, exc, worst, received[0], model, role)
        raise
    early = end is None
    if end is None:
        # Closed after sending: the provider may bill the prompt and what it generated.
        usage = cut_usage(input_tokens=worst.input_tokens, received=min(received[0], worst.output_tokens),
                          calls=max(worst.calls, 1), price=model.price)
        end = StreamEnd(generations=[Generation(text="".join(parts), finish_reason="detected", usage=usage,
                                                model=model.name)], usage=usage)
    gens = ctx.settle_sent(request, role, model, worst, res, end, t0)
    return gens[0], early


__all__ = ["generate_watched", "streams_deltas"]
