"""RunContext: what every strategy, verifier and workflow node spends through.

It bundles the ledger, the tracer, a seeded RNG and the default models, and
owns the one code path that calls a model: reserve the worst case, call,
settle to actual usage (or release on failure/cancellation), trace.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from testtime.budget import BudgetLedger, Usage
from testtime.errors import BudgetExhausted
from testtime.models.base import Generation, GenerationRequest, Model
from testtime.trace.events import NullTracer, Tracer, current_tracer

if TYPE_CHECKING:
    from testtime.verifiers.base import ProcessRewardModel, Verifier


@dataclass(kw_only=True)
class RunContext:
    """Models, budget, tracing and randomness for one run (or one stage).

    Attributes:
        model: the default (policy) model.
        ledger: the budget ledger every call reserves from.
        tracer: where events go.
        rng: seeded randomness for strategies.
        verifier: outcome verifier, if any.
        prm: process reward model, if any.
        models: extra named models (e.g. a verifier model), by role.
        step_delimiter: splits reasoning into steps for step-level search.
        max_tokens: default max tokens of one full solution.
        step_max_tokens: default max tokens of one reasoning step.
        temperature: default sampling temperature.
        seed: the run's seed (None: nondeterministic).
    """

    model: Model
    ledger: BudgetLedger = field(default_factory=BudgetLedger)
    tracer: Tracer = field(default_factory=NullTracer)
    rng: random.Random = field(default_factory=random.Random)
    verifier: Verifier | None = None
    prm: ProcessRewardModel | None = None
    models: dict[str, Model] = field(default_factory=dict)
    step_delimiter: str = "\n\n"
    max_tokens: int = 512
    step_max_tokens: int = 128
    temperature: float = 0.8
    seed: int | None = None
    system_prompt: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    in_flight: int = 0

    def derive(self, **changes: Any) -> RunContext:
        """A copy with some fields changed (e.g. a stage's child ledger)."""
        return replace(self, **changes)

    def next_seed(self) -> int | None:
        """A fresh per-call seed drawn from the run's RNG (None if unseeded)."""
        if self.seed is None:
            return None
        return self.rng.randrange(2**31)

    async def generate(
        self, request: GenerationRequest, *, role: str = "solve", model: Model | None = None
    ) -> list[Generation]:
        """Call a model under the budget.

        Reserves ``model.worst_case(request)`` first; a refusal raises
        :class:`BudgetExhausted` before anything is sent. The call is bounded
        by the time left in the budget. On success the reservation settles to
        the reported usage (one call per request, whatever the fan-out).
        """
        model = model or self.model
        worst = model.worst_case(request)
        try:
            res = self.ledger.reserve(worst, role=role)
        except BudgetExhausted as exc:
            self.tracer.emit("budget_refused", role=role, model=model.spec,
                             dimension=exc.dimension, requested=exc.requested,
                             remaining=exc.remaining)
            raise
        self.in_flight += 1
        t0 = time.monotonic()
        token = current_tracer.set(self.tracer)
        try:
            timeout = self.ledger.remaining("seconds")
            if timeout == float("inf"):
                gens = await model.generate(request)
            else:
                try:
                    gens = await asyncio.wait_for(model.generate(request), timeout)
                except TimeoutError:
                    raise BudgetExhausted("seconds", 0.0, 0.0, self.ledger.name) from None
        except BaseException as exc:
            res.release()
            if not isinstance(exc, (asyncio.CancelledError, BudgetExhausted)):
                self.tracer.emit("error", where=f"model_call {model.spec}", role=role,
                                 error=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self.in_flight -= 1
            current_tracer.reset(token)
        actual = _call_usage(gens)
        if actual.tokens > worst.tokens or actual.usd > worst.usd + 1e-12:
            self.tracer.emit("note", message=f"{model.spec} reported more usage than its worst case",
                             reserved=worst.to_dict(), actual=actual.to_dict())
        res.settle(actual)
        if request.logprobs and role == "solve":
            recorder = getattr(self.prm, "record", None)
            if recorder is not None:
                for g in gens:
                    if g.logprobs:
                        recorder(g.text, g.logprobs)
        if self.tracer.sinks:  # skip building the event when nobody listens
            self.tracer.emit(
                "model_call", model=model.spec, role=role, n=request.n,
                usage=actual.to_dict(), latency_s=round(time.monotonic() - t0, 6),
                finish_reasons=[g.finish_reason for g in gens],
            )
        return gens

    def usage(self) -> Usage:
        return self.ledger.usage


def _call_usage(gens: list[Generation]) -> Usage:
    """Sum of the generations' usage, counted as one call (one reservation)."""
    inp = out = cached = 0
    usd = 0.0
    for g in gens:
        u = g.usage
        inp += u.input_tokens
        out += u.output_tokens
        cached += u.cached_tokens
        usd += u.usd
    return Usage(input_tokens=inp, output_tokens=out, cached_tokens=cached, calls=1, usd=usd)
