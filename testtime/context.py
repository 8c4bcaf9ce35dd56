"""RunContext: what every strategy, verifier and workflow node spends through.

It bundles the ledger, the tracer, a seeded RNG and the default models, and
owns the one code path that calls a model (:meth:`RunContext.generate`):

1. reserve the worst case (waiting for calls in flight to settle before
   refusing, so slack they return can be used);
2. write the reservation ahead to the call journal, when checkpointing;
3. send one attempt and consume its stream, counting what arrives;
4. settle what the backend reported -- the worst case when it reported
   nothing; a settle above the reservation marks the ledger overdrawn;
5. journal the result.

A failed attempt is settled at what it may have cost (what the provider says
it billed; the prompt plus the tokens received when a stream was cut, timed
out or cancelled) or released (an HTTP error reply), and retried under the
backend's :attr:`~testtime.models.base.Model.retry_policy` with a new
reservation, so every request sent is reserved and counted as a call. When
the retries run out the error is traced and raised as
:class:`~testtime.errors.CallFailed`, which strategies treat like a refusal:
they return the best answer they have.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from testtime.budget import BudgetLedger, Usage
from testtime.errors import BudgetExhausted, BudgetOverdrawn, CallFailed, ModelAPIError, SearchStop
from testtime.models.base import Generation, GenerationRequest, Model, StreamDelta, StreamEnd, streams_deltas
from testtime.models.streaming import cut_usage, failed_attempt_usage
from testtime.thinking import THINKING_SEGMENT, ThinkingModel, split_inline_thinking
from testtime.thinking import generate as generate_thinking
from testtime.trace.events import NullTracer, Tracer, current_tracer, redact, redact_text

if TYPE_CHECKING:
    from testtime.verifiers.base import ProcessRewardModel, Verifier

_INF = float("inf")
#: What a whole (non-streamed) attempt received before it ended: nothing counted
#: per delta. Shared and never written (a streamed attempt gets its own counter).
_NOTHING_STREAMED = [0]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayedCall:
    """A call a journal saw complete in an earlier process: what it returned and cost."""

    generations: list[Generation]
    usage: Usage


class CallJournal(Protocol):
    """Where the spend path writes each call ahead and records how it ended.

    The orchestrator's SQLite journal implements it; ``lookup`` lets a
    resumed run replay completed calls instead of sending them again.
    """

    def lookup(self, key: str) -> ReplayedCall | None: ...

    def begin(self, key: str, worst: Usage, role: str) -> None: ...

    def complete(self, key: str, generations: list[Generation], usage: Usage, role: str) -> None: ...

    def abort(self, key: str, settled: Usage | None, role: str) -> None: ...


def new_stats() -> dict[str, Any]:
    """Run-wide call counters, shared by every context derived from one run."""
    return {"calls_ok": 0, "errors": 0, "refusals": 0, "retries": 0, "replayed": 0,
            "last_error": None, "key_counts": Counter()}


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
        journal: the call journal (checkpointed runs), or None.
        call_scope: where in the workflow calls come from (stage/node/round);
            part of every journal key.
        stats: run-wide counters (successful calls, errors, refusals,
            retries, replays); shared by derived contexts.
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
    journal: CallJournal | None = None
    call_scope: str = ""
    stats: dict[str, Any] = field(default_factory=new_stats)

    def derive(self, **changes: Any) -> RunContext:
        """A copy with some fields changed (e.g. a stage's child ledger)."""
        return replace(self, **changes)

    def next_seed(self) -> int | None:
        """A fresh per-call seed drawn from the run's RNG (None if unseeded)."""
        if self.seed is None:
            return None
        return self.rng.randrange(2**31)

    def usage(self) -> Usage:
        return self.ledger.usage

    # ------------------------------------------------------------ the path
    async def generate(
        self, request: GenerationRequest, *, role: str = "solve", model: Model | None = None
    ) -> list[Generation]:
        """Call a model under the budget; returns up to ``request.n`` generations.

        Raises:
            BudgetExhausted: the worst case did not fit (nothing was sent).
            BudgetOverdrawn: the ledger is overdrawn (nothing was sent).
            CallFailed: the call failed after its retries (traced as ``error``).
        """
        model = model or self.model
        if request.thinking is not None or isinstance(model, ThinkingModel):
            # A thinking/answer split (testtime.thinking): its segments are sent with call().
            policy = request.thinking if request.thinking is not None else model.policy  # type: ignore[attr-defined]
            return await generate_thinking(self, request, policy, role=role, model=model)
        if request.n > 1 and not model.capabilities.native_n:
            return split_inline_thinking(await self._fan_out(request, role, model))
        gens = await self._call(request, role, model)
        if len(gens) < request.n:
            gens = await self._top_up(request, gens, role, model)
        if request.logprobs and role == "solve":
            recorder = getattr(self.prm, "record", None)
            if recorder is not None:
                for g in gens:
                    if g.logprobs:
                        recorder(g.text, g.logprobs)
        # A think-tag model without a policy: its thinking is not its answer.
        return split_inline_thinking(gens)

    async def _fan_out(self, request: GenerationRequest, role: str, model: Model) -> list[Generation]:
        # One request per sample, each reserved, retried and counted on its
        # own: a failed or refused sample does not cost the others.
        base = request.seed
        if base is None:
            parts = [request.with_(n=1)] * request.n  # unseeded, the parts are one (frozen) request
        else:
            parts = [request.with_(n=1, seed=base + i) for i in range(request.n)]
        results = await asyncio.gather(*(self._call(p, role, model) for p in parts), return_exceptions=True)
        stops = [r for r in results if isinstance(r, SearchStop)]
        others = [r for r in results if isinstance(r, BaseException) and not isinstance(r, SearchStop)]
        if others:
            raise others[0]
        gens = [g for r in results if not isinstance(r, BaseException) for g in r]
        if not gens and stops:
            raise stops[0]
        return gens

    async def _top_up(self, request: GenerationRequest, gens: list[Generation], role: str,
                      model: Model) -> list[Generation]:
        # The server returned fewer choices than n: ask again for the rest,
        # through the ledger like any call (the backend now knows n is ignored).
        missing = request.n - len(gens)
        self.tracer.emit("note", message=f"{model.spec} returned {len(gens)} of {request.n} choices; "
                         f"requesting {missing} more", role=role)
        seed = None if request.seed is None else request.seed + len(gens)
        try:
            more = await self.generate(request.with_(n=missing, seed=seed), role=role, model=model)
        except SearchStop:
            return gens
        return gens + more

    async def call(self, request: GenerationRequest, *, role: str = "solve",
                   model: Model | None = None, held: int = 0) -> list[Generation]:
        """One logical call (journal replay or attempts under the retry policy): no
        fan-out, no top-up, no thinking policy. Thinking segments are sent with it.

        ``held``: reservations the caller itself keeps open while it waits here;
        they cannot settle meanwhile, so a refused attempt does not wait for them.
        """
        return await self._call(request, role, model or self.model, held)

    async def reserve(self, worst: Usage, *, role: str = "solve", model: Model | None = None) -> Any:
        """Reserve ``worst`` as a call would (waiting for calls in flight to settle
        before refusing); the caller settles or releases the reservation."""
        return await self._reserve(worst, role, model or self.model)

    async def _call(self, request: GenerationRequest, role: str, model: Model,
                    held: int = 0) -> list[Generation]:
        """One logical call: replay from the journal, or attempts under the retry policy.

        An attempt reserves the worst case, sends the request and settles what
        it cost (:meth:`settle_sent`, or :meth:`settle_failed` when it
        failed). It is written out in the retry loop rather than as a
        coroutine of its own: every sample takes this path, and a coroutine
        per attempt is a measurable part of its cost.
        """
        key = self._journal_key(request, role, model) if self.journal is not None else None
        if key is not None:
            replay = self.journal.lookup(key)  # type: ignore[union-attr]
            if replay is not None:
                self.ledger.charge(replay.usage, role=role)
                self.stats["replayed"] += 1
                self.stats["calls_ok"] += 1
                if self.tracer.sinks:
                    self.tracer.emit("model_call", model=model.spec, role=role, n=request.n,
                                     usage=replay.usage.to_dict(), latency_s=0.0, replayed=True,
                                     finish_reasons=[g.finish_reason for g in replay.generations])
                return list(replay.generations)
        policy = model.retry_policy
        ledger = self.ledger
        journal = self.journal if key is not None else None
        attempt = 0
        while True:
            attempt += 1
            try:
                worst = model.worst_case(request)
                seen = ledger.settle_count()
                try:
                    # What _reserve does first, without a coroutine: the usual reservation fits.
                    res = ledger.reserve(worst, role=role)
                except (BudgetOverdrawn, BudgetExhausted) as refused:
                    await self._wait_or_refuse(refused, seen, role, model, held)
                    res = await self._reserve(worst, role, model, held)
                if journal is not None:
                    try:
                        journal.begin(key, worst, role)  # type: ignore[arg-type]
                    except BaseException:
                        res.release()
                        raise
                # The default stream yields only its end: await that, without an async generator.
                whole = not streams_deltas(model)
                received = _NOTHING_STREAMED if whole else [0]
                self.in_flight += 1
                t0 = time.monotonic()
                token = current_tracer.set(self.tracer)
                try:
                    timeout = ledger.remaining("seconds")
                    # A whole-reply model's generate() is awaited as is (Model.stream_end
                    # without its coroutine); its StreamEnd is built after.
                    consume = model.generate(request) if whole else self.consume_stream(model, request, received)
                    if timeout == _INF:
                        end = await consume
                    else:
                        try:
                            end = await asyncio.wait_for(consume, timeout)
                        except TimeoutError:
                            self.settle_failed(res, None, worst, received[0], model, role, key=key)
                            raise BudgetExhausted("seconds", 0.0, 0.0, ledger.name) from None
                    if whole:
                        end = model.whole_end(end)
                except BaseException as exc:
                    if not res.done:
                        self.settle_failed(res, exc, worst, received[0], model, role, key=key)
                    raise
                finally:
                    self.in_flight -= 1
                    current_tracer.reset(token)
                return self.settle_sent(request, role, model, worst, res, end, t0, key=key)
            except ModelAPIError as exc:
                wait = self._retry_wait(exc, policy, attempt)
                if wait is None:
                    self.stats["errors"] += 1
                    self.stats["last_error"] = exc
                    self.tracer.emit("error", where=f"model_call {model.spec}", role=role,
                                     error=f"{type(exc).__name__}: {exc}", attempts=attempt)
                    raise CallFailed(exc) from exc
                self.stats["retries"] += 1
                self.tracer.emit("retry", model=model.spec, attempt=attempt, error=str(exc),
                                 wait_s=round(wait, 3))
                from testtime.models import retry as retry_module

                await retry_module._sleep(wait)

    def _retry_wait(self, exc: ModelAPIError, policy: Any, attempt: int) -> float | None:
        """Seconds to wait before the next attempt, or None to give up.

        The backend's policy decides (retryable? attempts left? Retry-After
        within its cap?), with the run's deadline as the last moment a wait
        may end.
        """
        if policy is None:
            return None
        room = self.ledger.remaining("seconds")
        deadline = None if room == float("inf") else time.monotonic() + room
        return policy.next_wait(exc, attempt, deadline=deadline)

    async def _reserve(self, worst: Usage, role: str, model: Model, held: int = 0) -> Any:
        while True:
            seen = self.ledger.settle_count()
            try:
                return self.ledger.reserve(worst, role=role)
            except (BudgetOverdrawn, BudgetExhausted) as exc:
                await self._wait_or_refuse(exc, seen, role, model, held)

    async def _wait_or_refuse(self, exc: BudgetExhausted | BudgetOverdrawn, seen: int, role: str,
                              model: Model, held: int) -> None:
        """After a refused reservation: return once a call in flight settled (try
        again), or trace the refusal and raise it."""
        if isinstance(exc, BudgetOverdrawn):
            self.stats["refusals"] += 1
            self.tracer.emit("budget_refused", role=role, model=model.spec, dimension="overdrawn",
                             requested=0, remaining=0)
            raise exc
        # Calls in flight will return their slack when they settle;
        # wait for that before refusing.
        if exc.dimension != "seconds" and self.ledger.in_flight() > held:
            timeout = self.ledger.remaining("seconds")
            try:
                await asyncio.wait_for(self.ledger.wait_for_settle(seen),
                                       None if timeout == float("inf") else timeout)
            except TimeoutError:
                pass
            return
        self.stats["refusals"] += 1
        self.tracer.emit("budget_refused", role=role, model=model.spec,
                         dimension=exc.dimension, requested=exc.requested,
                         remaining=exc.remaining)
        raise exc

    def settle_sent(self, request: GenerationRequest, role: str, model: Model, worst: Usage, res: Any,
                    end: StreamEnd, t0: float, *, key: str | None = None) -> list[Generation]:
        """Settle an attempt that returned: what the backend reported (the worst
        case when it reported nothing), journal it, count it, trace it.

        ``res`` is the attempt's reservation of ``worst`` (:meth:`reserve`),
        ``t0`` its ``time.monotonic()`` start. Strategies that drive a call
        themselves (:func:`testtime.search.stream_watch.generate_watched`)
        settle through here too, so every call is charged by one rule.
        """
        actual = end.usage
        if actual is None:
            actual = worst
            self.tracer.emit("note", message=f"{model.spec} reported no usage; settled at the worst case",
                             role=role, settled=worst.to_dict())
        elif actual.calls < 1:
            actual = replace(actual, calls=1)
        if request.metadata.get(THINKING_SEGMENT):
            # A thinking segment's output is all thinking, whatever the backend said.
            actual = replace(actual, reasoning_tokens=actual.output_tokens)
        elif actual.reasoning_tokens > actual.output_tokens:
            actual = replace(actual, reasoning_tokens=actual.output_tokens)  # reasoning is part of output
        over = res.settle(actual)
        if over:
            self.tracer.emit("error", where=f"budget {self.ledger.name}", role=role,
                             error=f"{model.spec} billed more than its reservation; the budget is "
                                   f"overdrawn and no further calls are made",
                             over=over, reserved=worst.to_dict(), actual=actual.to_dict())
        if key is not None and self.journal is not None:
            self.journal.complete(key, end.generations, actual, role)
        self.stats["calls_ok"] += 1
        tracer = self.tracer
        if tracer.sinks:  # skip building the event when nobody listens
            # The event emit("model_call", model=..., role=..., ...) would make, built
            # redacted: its keys are fixed and only its strings need a look.
            tracer.emit_redacted("model_call", {
                "model": redact_text(model.spec), "role": redact(role), "n": request.n,
                "usage": actual.to_dict(), "latency_s": round(time.monotonic() - t0, 6),
                "finish_reasons": [redact(g.finish_reason) for g in end.generations],
            })
        return list(end.generations)

    async def consume_stream(self, model: Model, request: GenerationRequest, received: list[int],
                             watch: Callable[[str], bool] | None = None,
                             text: list[str] | None = None) -> StreamEnd | None:
        """Read ``model.stream(request)`` to its end, counting output tokens into ``received[0]``.

        With ``watch``, sample 0's text so far goes to ``watch`` on every text
        delta (and its pieces into ``text``); once it returns True the stream
        is closed (which cancels the request) and None is returned.

        Raises:
            ModelAPIError: the stream ended without a result (retryable).
        """
        stream = model.stream(request)
        end: StreamEnd | None = None
        try:
            async for item in stream:
                if isinstance(item, StreamDelta):
                    received[0] += item.tokens
                    if watch is not None and item.index == 0 and item.text:
                        parts = text if text is not None else []
                        parts.append(item.text)
                        if watch("".join(parts)):
                            return None
                elif isinstance(item, StreamEnd):
                    end = item
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        if end is None:
            raise ModelAPIError(f"{model.spec}: the stream ended without a result", retryable=True,
                                backend=model.backend)
        return end

    def settle_failed(self, res: Any, exc: BaseException | None, worst: Usage, received: int,
                      model: Model, role: str, *, key: str | None = None) -> None:
        """Settle a failed attempt (reservation ``res`` of ``worst``, ``received``
        output tokens seen) at what it may have cost, or release it."""
        settled: Usage | None
        out = min(received, worst.output_tokens)
        if isinstance(exc, ModelAPIError):
            # `calls` counts requests (retries included), error replies too.
            settled = failed_attempt_usage(exc, input_tokens=worst.input_tokens, received=out,
                                           calls=worst.calls, price=model.price)
        elif exc is not None and not isinstance(exc, (asyncio.CancelledError, TimeoutError, ConnectionError)):
            settled = None  # raised before or instead of a request (bad input, a bug)
        else:
            # Timed out or cancelled after sending: the provider may bill the
            # prompt and whatever it generated.
            settled = cut_usage(input_tokens=worst.input_tokens, received=out, calls=worst.calls,
                                price=model.price)
        if settled is None:
            res.release()
        else:
            over = res.settle(settled)
            if over:
                self.tracer.emit("error", where=f"budget {self.ledger.name}", role=role,
                                 error=f"{model.spec} billed more than its reservation for a failed call",
                                 over=over)
        if key is not None and self.journal is not None:
            try:
                self.journal.abort(key, settled, role)
            except Exception:  # the journal must not mask the call's own error
                pass

    def _journal_key(self, request: GenerationRequest, role: str, model: Model) -> str:
        fields = {
            "model": model.spec, "role": role, "prompt": request.prompt,
            "messages": [dict(m) for m in request.messages] if request.messages else None,
            "system": request.system, "prefix": request.prefix, "n": request.n,
            "max_tokens": request.max_tokens, "temperature": request.temperature,
            "top_p": request.top_p, "stop": list(request.stop), "seed": request.seed,
            "logprobs": request.logprobs, "top_logprobs": request.top_logprobs,
            "thinking_budget": request.thinking_budget,
        }
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:24]
        base = f"{self.call_scope}|{digest}"
        counts = self.stats["key_counts"]
        counts[base] += 1
        return f"{base}|{counts[base] - 1}"


def final_stopped_reason(reason: str, ledger: BudgetLedger, stats: dict[str, Any]) -> str:
    """The run's stopped_reason once the ledger and the call counters are known.

    Strategies report ``budget_exhausted`` for any :class:`SearchStop`; this
    tells the three apart: ``budget_overdrawn`` (a backend billed more than
    was reserved), ``errors`` (calls failed and the budget never refused), or
    the strategy's own reason.
    """
    if ledger.root().overdrawn:
        return "budget_overdrawn"
    if stats.get("errors") and reason in ("budget_exhausted", "error"):
        # Calls failed; say "errors" unless the budget really ran out too
        # (a refusal, or samplers that stopped because nothing more fit).
        ran_out = stats.get("refusals") or ledger.root().fraction_used() >= 0.9
        if not ran_out:
            return "errors"
    return reason


def spend_report(ledger: BudgetLedger, stats: dict[str, Any]) -> dict[str, Any]:
    """Errors, retries, replays and any overdraw, for a result's ``usage`` block."""
    out: dict[str, Any] = {"errors": int(stats.get("errors", 0)), "retries": int(stats.get("retries", 0))}
    if stats.get("replayed"):
        out["replayed_calls"] = int(stats["replayed"])
    root = ledger.root()
    if root.overdrawn:
        out["overdrawn"] = {"excess_over_reservations": dict(root.overdrawn),
                            "over_limit": root.over_limit()}
    return out
