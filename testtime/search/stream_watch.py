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
from dataclasses import replace

from testtime.budget import Usage
from testtime.context import RunContext
from testtime.errors import CallFailed, ModelAPIError
from testtime.models.base import Generation, GenerationRequest, Model, StreamDelta, StreamEnd
from testtime.models.streaming import cut_usage, failed_attempt_usage


def streams_deltas(model: Model) -> bool:
    """True when ``model`` streams text as it is generated (it overrides
    :meth:`Model.stream`); the base implementation yields only the end."""
    return type(model).stream is not Model.stream


async def generate_watched(ctx: RunContext, request: GenerationRequest, watch: Callable[[str], bool], *,
                           role: str = "solve", model: Model | None = None) -> tuple[Generation, bool]:
    """One sample of ``request`` (``n`` must be 1), stopped once ``watch(text)`` is True.

    Returns the generation (``finish_reason="detected"`` when stopped early;
    its text is everything received) and whether it was stopped early.

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
    parts: list[str] = []
    received = 0
    end: StreamEnd | None = None
    early = False
    t0 = time.monotonic()

    def cut_cost() -> Usage:
        # Cut after sending: the provider may bill the prompt and what it generated.
        return cut_usage(input_tokens=worst.input_tokens, received=min(received, worst.output_tokens),
                         calls=max(worst.calls, 1), price=model.price)

    stream = model.stream(request)
    try:
        try:
            async for item in stream:
                if isinstance(item, StreamDelta):
                    received += item.tokens
                    if item.index == 0 and item.text:
                        parts.append(item.text)
                        if watch("".join(parts)):
                            early = True
                            break
                elif isinstance(item, StreamEnd):
                    end = item
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        if end is None and not early:
            raise ModelAPIError(f"{model.spec}: the stream ended without a result", retryable=True,
                                backend=model.backend)
    except ModelAPIError as exc:
        if not res.done:
            failed = failed_attempt_usage(exc, input_tokens=worst.input_tokens,
                                          received=min(received, worst.output_tokens),
                                          calls=max(worst.calls, 1), price=model.price)
            if failed is None:
                res.release()
            else:
                res.settle(failed)
        ctx.stats["errors"] = ctx.stats.get("errors", 0) + 1
        ctx.stats["last_error"] = exc
        ctx.tracer.emit("error", where=f"model_call {model.spec}", role=role,
                        error=f"{type(exc).__name__}: {exc}", attempts=1)
        raise CallFailed(exc) from exc
    except BaseException:
        if not res.done:
            res.settle(cut_cost())
        raise
    if early:
        usage = cut_cost()
        gen = Generation(text="".join(parts), finish_reason="detected", usage=usage, model=model.name)
    else:
        assert end is not None
        usage = end.usage if end.usage is not None else worst
        if usage.calls < 1:
            usage = replace(usage, calls=1)
        gen = end.generations[0]
    over = res.settle(usage)
    if over:
        ctx.tracer.emit("error", where=f"budget {ctx.ledger.name}", role=role,
                        error=f"{model.spec} billed more than its reservation; the budget is overdrawn",
                        over=over)
    ctx.stats["calls_ok"] = ctx.stats.get("calls_ok", 0) + 1
    if ctx.tracer.sinks:
        ctx.tracer.emit("model_call", model=model.spec, role=role, n=1, usage=usage.to_dict(),
                        latency_s=round(time.monotonic() - t0, 6), finish_reasons=[gen.finish_reason],
                        stopped_early=early)
    return gen, early


__all__ = ["generate_watched", "streams_deltas"]
