"""The one spend path (RunContext.generate) and the ledger rules it relies on.

Each fake here misbehaves in one way; the tests check that the ledger still
tells the truth about what was (or may have been) billed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

import testtime
from testtime.budget import Budget, BudgetLedger, Usage
from testtime.context import RunContext
from testtime.errors import BudgetExhausted, BudgetOverdrawn, CallFailed, ModelAPIError
from testtime.models import retry as retry_module
from testtime.models.base import (
    Capabilities,
    Generation,
    GenerationRequest,
    Model,
    StreamDelta,
    StreamEnd,
)
from testtime.models.retry import RetryPolicy
from testtime.trace.events import Tracer

REQ = GenerationRequest(prompt="hello there", max_tokens=10)


class StreamingFake(Model):
    """Streams ``words`` words per choice; reports usage scaled by ``scale`` (None: no usage)."""

    backend = "fake"

    def __init__(self, *, words: int = 5, scale: float | None = 1.0, native_n: bool = True,
                 choices_cap: int | None = None, delay: float = 0.0, fail: list[BaseException] | None = None,
                 retries: int = 0) -> None:
        super().__init__("fake")
        self.words = words
        self.scale = scale
        self._native = native_n
        self.choices_cap = choices_cap
        self.delay = delay
        self.fail = list(fail or [])
        self.requests: list[GenerationRequest] = []
        self.served_output = 0
        if retries:
            self.retry_policy = RetryPolicy(max_retries=retries, initial_wait=0.0)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(native_n=self._native, exact_token_count=True)

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta | StreamEnd]:
        self.requests.append(request)
        if self.fail:
            raise self.fail.pop(0)
        n = request.n if self.choices_cap is None else min(request.n, self.choices_cap)
        words = min(self.words, request.max_tokens)
        gens = []
        for i in range(n):
            for _ in range(words):
                if self.delay:
                    await asyncio.sleep(self.delay)
                self.served_output += 1
                yield StreamDelta(index=i, text="w ")
            gens.append(Generation(text="w " * words, finish_reason="eos"))
        prompt = sum(len(m["content"].split()) for m in request.chat_messages())
        if self.scale is None:
            usage = None
        else:
            usage = self.usage(prompt, int(n * words * self.scale))
        yield StreamEnd(generations=gens, usage=usage)


def _ctx(model: Model, budget: str = "tokens=10k", events: list | None = None) -> RunContext:
    tracer = Tracer()
    if events is not None:
        tracer.add_sink(events.append)
    return RunContext(model=model, ledger=BudgetLedger(Budget.parse(budget)), tracer=tracer)


@pytest.fixture(autouse=True)
def _no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    async def instant(_s: float) -> None:
        return None

    monkeypatch.setattr(retry_module, "_sleep", instant)


# ------------------------------------------------------------------- ledger
def test_settle_above_reservation_is_recorded_in_full_and_refuses_everything_after() -> None:
    ledger = BudgetLedger(Budget(tokens=100))
    res = ledger.reserve(Usage(input_tokens=10, output_tokens=50, calls=1))
    over = res.settle(Usage(input_tokens=10, output_tokens=130, calls=1))
    assert ledger.spent("tokens") == 140
    assert over == {"tokens": 80, "output_tokens": 80} and ledger.overdrawn == over
    assert ledger.over_limit() == {"tokens": 40}
    with pytest.raises(BudgetOverdrawn):
        ledger.reserve(Usage(output_tokens=1))
    assert not ledger.can_afford(Usage())


def test_overdraw_in_a_child_marks_the_parent_and_siblings_refuse() -> None:
    root = BudgetLedger(Budget(tokens=1000))
    a, b = root.child(name="a"), root.child(name="b")
    a.reserve(Usage(output_tokens=5)).settle(Usage(output_tokens=6))
    assert root.overdrawn and a.overdrawn
    with pytest.raises(BudgetOverdrawn):
        b.reserve(Usage(output_tokens=1))


def test_charge_and_restore_never_raise_and_reach_every_parent() -> None:
    clock = [0.0]
    root = BudgetLedger(Budget(tokens=100, seconds=5), clock=lambda: clock[0])
    kid = root.child(Budget(tokens=50), name="stage")
    clock[0] = 10.0  # past the seconds limit: reserving would refuse
    kid.charge(Usage(input_tokens=70, output_tokens=10, calls=1), role="verify")
    kid.restore(Usage(output_tokens=5))
    assert kid.spent("tokens") == 85 and root.spent("tokens") == 85
    assert root.usage_by_role()["verify"].tokens == 80
    assert root.usage.tokens == 85 and kid.usage.tokens == 85
    assert root.open_reservations() == 0 and root.in_flight() == 0


# --------------------------------------------------------------- spend path
async def test_over_reporting_backend_marks_overdrawn_and_later_calls_are_not_sent() -> None:
    events: list = []
    model = StreamingFake(scale=50.0)
    ctx = _ctx(model, "tokens=200", events)
    await ctx.generate(REQ)
    assert ctx.ledger.overdrawn["output_tokens"] == 5 * 50 - 10
    with pytest.raises(BudgetOverdrawn):
        await ctx.generate(REQ)
    assert len(model.requests) == 1
    assert any(e.kind == "error" and "overdrawn" in e.data["error"] for e in events)


async def test_missing_usage_settles_the_worst_case_with_a_note() -> None:
    events: list = []
    model = StreamingFake(scale=None)
    ctx = _ctx(model, "tokens=10k", events)
    await ctx.generate(REQ)
    assert ctx.ledger.usage.tokens == model.worst_case(REQ).tokens
    assert ctx.ledger.usage.tokens >= model.served_output
    assert any(e.kind == "note" and "no usage" in e.data["message"] for e in events)


async def test_cancel_after_k_deltas_settles_k_tokens_plus_the_prompt() -> None:
    model = StreamingFake(words=10, delay=0.01)
    ctx = _ctx(model)
    task = asyncio.create_task(ctx.generate(REQ.with_(max_tokens=10)))
    while model.served_output < 3:  # noqa: ASYNC110 - polling a fake's counter is the point
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    k = model.served_output
    worst = model.worst_case(REQ.with_(max_tokens=10))
    assert ctx.ledger.usage.output_tokens == k and 3 <= k < 10
    assert ctx.ledger.usage.input_tokens == worst.input_tokens
    assert ctx.ledger.open_reservations() == 0


async def test_every_retry_is_reserved_and_counted_as_a_call() -> None:
    boom = [ModelAPIError("HTTP 500", retryable=True, status=500) for _ in range(2)]
    model = StreamingFake(fail=boom, retries=3)
    ctx = _ctx(model, "tokens=10k")
    await ctx.generate(REQ)
    assert len(model.requests) == 3
    # The two 500 replies generated nothing but were requests: three calls, no tokens for them.
    assert ctx.ledger.usage.calls == 3 and ctx.stats["retries"] == 2
    assert ctx.ledger.usage.output_tokens == 5


async def test_calls_limit_caps_requests_including_retries() -> None:
    boom = [ModelAPIError("HTTP 500", retryable=True, status=500)]
    model = StreamingFake(fail=boom, retries=3)
    ctx = _ctx(model, "calls=1")
    # The 500 reply used the only call; the retry is refused, not sent.
    with pytest.raises(BudgetExhausted):
        await ctx.generate(REQ)
    assert len(model.requests) == 1 and ctx.ledger.spent("calls") == 1


async def test_calls_limit_one_with_fan_out_of_eight_sends_one_request() -> None:
    model = StreamingFake(native_n=False)
    ctx = _ctx(model, "calls=1")
    gens = await ctx.generate(REQ.with_(n=8))
    assert len(model.requests) == 1 and len(gens) == 1
    assert ctx.ledger.spent("calls") == 1


async def test_a_timed_out_stream_settles_the_prompt_and_what_arrived() -> None:
    cut = ModelAPIError("stream cut", retryable=False)
    model = StreamingFake(fail=[cut])
    ctx = _ctx(model)
    with pytest.raises(CallFailed):
        await ctx.generate(REQ)
    assert ctx.ledger.usage.input_tokens == model.worst_case(REQ).input_tokens
    assert ctx.ledger.usage.calls == 1 and ctx.stats["errors"] == 1


async def test_fewer_choices_are_topped_up_through_the_ledger() -> None:
    model = StreamingFake(choices_cap=2)
    ctx = _ctx(model, "tokens=10k")
    gens = await ctx.generate(REQ.with_(n=5))
    assert len(gens) == 5
    # 5 asked, 2 came; then 3 asked, 2 came; then 1.
    assert [r.n for r in model.requests] == [5, 3, 1]
    assert ctx.ledger.usage.calls == 3


async def test_a_call_that_does_not_fit_waits_for_calls_in_flight_before_refusing() -> None:
    model = StreamingFake(words=2, delay=0.01)
    # Worst case of one call is ~2 + 10 tokens; two do not fit at once, but
    # each settles at ~4, so both can run one after the other.
    worst = model.worst_case(REQ).tokens
    ctx = _ctx(model, f"tokens={worst + worst // 2}")
    results = await asyncio.gather(ctx.generate(REQ), ctx.generate(REQ))
    assert all(len(r) == 1 for r in results)
    assert len(model.requests) == 2 and ctx.ledger.open_reservations() == 0


async def test_fan_out_keeps_the_samples_that_succeeded() -> None:
    model = StreamingFake(native_n=False, fail=[ModelAPIError("HTTP 400 bad", status=400)])
    ctx = _ctx(model)
    gens = await ctx.generate(REQ.with_(n=4))
    assert len(gens) == 3 and ctx.stats["errors"] == 1


# ----------------------------------------------------------------- run level
def test_a_run_with_some_failed_calls_returns_an_answer_with_stopped_reason_errors() -> None:
    calls = {"n": 0}

    def flaky(request: GenerationRequest) -> str:
        calls["n"] += 1
        if calls["n"] % 2 == 0:
            raise ModelAPIError("HTTP 503", retryable=False, status=503)
        return "The answer is 7."

    model = testtime.FunctionModel(flaky)
    result = testtime.run("q", model=model, strategy="self_consistency", n=6, budget="tokens=100k")
    assert result.answer == "7"
    assert result.usage["errors"] == calls["n"] // 2 > 0
    assert result.stopped_reason in ("errors", "done")


def test_a_run_where_no_call_succeeds_raises_the_api_error() -> None:
    def down(request: GenerationRequest) -> str:
        raise ModelAPIError("HTTP 401: check OPENAI_API_KEY", status=401)

    with pytest.raises(ModelAPIError, match="401"):
        testtime.run("q", model=testtime.FunctionModel(down), strategy="self_consistency", n=3)


def test_over_reporting_run_ends_budget_overdrawn_and_says_by_how_much() -> None:
    model = StreamingFake(scale=50.0)
    result = testtime.run("q", model=model, strategy="self_consistency", budget="tokens=300")
    assert result.stopped_reason == "budget_overdrawn"
    over = result.usage["overdrawn"]
    assert over["excess_over_reservations"]["output_tokens"] > 0
    # Only the one over-reported call was sent before everything was refused.
    assert len(model.requests) == 1


def test_settled_usage_keeps_reasoning_tokens_apart() -> None:
    u = Usage(input_tokens=3, output_tokens=10, reasoning_tokens=6, calls=1)
    ledger = BudgetLedger(Budget(tokens=100))
    ledger.reserve(replace(u, output_tokens=20)).settle(u)
    assert ledger.usage.reasoning_tokens == 6 and ledger.usage.output_tokens == 10
