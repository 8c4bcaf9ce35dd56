"""Property tests: the budget invariant against adversarial backends, under concurrency and cancellation.

>= 100 concurrent ``RunContext.generate`` calls (the real spend path) against
a random mix of the adversarial fakes of :mod:`testtime.testing.adversarial`
-- honest, slow, over-reporting, no usage, fewer choices than n, cut streams,
408/429/500/timeout storms -- with random cancellations. On every dimension:

* spent <= limit, unless the ledger is overdrawn, which only an
  over-reporting backend can cause; even then spent <= limit + the recorded
  excess, and no reservation is admitted after the overdraw;
* no reservation is left open;
* the ledger never counts less than the backends billed, and for backends
  that report honestly it counts exactly what they billed.

The same properties are then checked over real HTTP against the loopback
OpenAI server in its adversarial modes (fewer examples).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from testtime.budget import DIMENSIONS, Budget, BudgetLedger
from testtime.context import RunContext
from testtime.errors import SearchStop
from testtime.models import retry
from testtime.models.base import GenerationRequest
from testtime.testing.adversarial import (
    AdversarialModel,
    CutStream,
    ErrorStorm,
    FewerChoices,
    HonestModel,
    NoUsage,
    OverReporting,
    Slow,
    watch_overdraw,
)
from testtime.testing.loopback import MISBEHAVIOURS, LoopbackOpenAIServer, misbehaving_server

limits = st.fixed_dictionaries(
    {},
    optional={
        "tokens": st.integers(0, 6000),
        "input_tokens": st.integers(0, 3000),
        "output_tokens": st.integers(0, 4000),
        "calls": st.integers(0, 200),
        "usd": st.floats(0, 0.02, allow_nan=False),
    },
)

#: Far above a run's real duration (< 1 s); only a hang reaches it.
HANG_AFTER_S = 20.0

KINDS = ("honest", "slow", "over-reporting", "no-usage", "fewer-choices", "cut-stream", "error-storm")


def _make(kind: str, seed: int, rng: random.Random) -> AdversarialModel:
    reply = " ".join(f"w{i}" for i in range(rng.randint(1, 40)))
    common: dict[str, Any] = {"delta_latency": rng.choice([0.0, 0.0001, 0.0003]),
                              "native_n": rng.random() < 0.6}
    if kind == "honest":
        return HonestModel(reply, **common)
    if kind == "slow":
        return Slow(reply, latency=rng.random() * 0.003, **common)
    if kind == "over-reporting":
        return OverReporting(reply, factor=rng.choice([2.0, 10.0, 50.0]), **common)
    if kind == "no-usage":
        return NoUsage(reply, **common)
    if kind == "fewer-choices":
        common["native_n"] = True
        return FewerChoices(reply, cap=rng.randint(1, 2), **common)
    if kind == "cut-stream":
        return CutStream(reply, after_k=rng.randint(0, 5), p=rng.random(), seed=seed, **common)
    if kind == "error-storm":
        return ErrorStorm(reply, p408=0.1, p429=0.2, p500=0.2, ptimeout=0.1, seed=seed, **common)
    raise AssertionError(kind)


def _check_invariant(root: BudgetLedger, ledger: BudgetLedger, seen: dict[str, int], *,
                     over_reporter_involved: bool) -> None:
    for node in {root, ledger}:
        assert node.open_reservations() == 0, "leaked reservations"
        for dim in DIMENSIONS:
            if dim != "seconds":
                assert node.reserved(dim) == 0, (node.name, dim, node.reserved(dim))
            limit = node.limit(dim)
            if limit is None or dim == "seconds":
                continue
            excess = node.overdrawn.get(dim, 0.0)
            slack = 1e-9 if dim == "usd" else 0
            if not node.is_overdrawn():
                assert node.spent(dim) <= limit + slack, (node.name, dim, node.spent(dim), limit)
            else:
                # Overspend is bounded by the excess of the settles that overdrew.
                assert node.spent(dim) <= limit + excess + 1e-9, (node.name, dim, node.spent(dim), limit, excess)
    assert root.in_flight() == 0
    if root.overdrawn or ledger.overdrawn:
        assert over_reporter_involved, f"overdrawn {ledger.overdrawn} without an over-reporting backend"
    assert seen["admitted_after_overdraw"] == 0, "a reservation was admitted after the ledger was overdrawn"


async def _drive(ctx: RunContext, models: list[Any], n_calls: int, rng: random.Random,
                 cancel_rate: float, max_n: int = 3) -> list[Any]:
    async def one(i: int) -> str:
        req = GenerationRequest(prompt=f"question {i} " + "w " * rng.randint(0, 20),
                                n=rng.randint(1, max_n), max_tokens=rng.randint(1, 60))
        try:
            await ctx.generate(req, role=rng.choice(["solve", "verify"]), model=rng.choice(models))
            return "ok"
        except SearchStop:
            return "stopped"

    tasks = [asyncio.create_task(one(i)) for i in range(n_calls)]
    await asyncio.sleep(0)
    for t in tasks:
        if rng.random() < cancel_rate:
            asyncio.get_running_loop().call_later(rng.random() * 0.005, t.cancel)
    try:
        # A leaked reservation would make refused calls wait for a settle forever.
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), HANG_AFTER_S)
    except TimeoutError:
        raise AssertionError(f"calls still waiting after {HANG_AFTER_S}s: "
                             f"{ctx.ledger.in_flight()} reservations in flight") from None
    unexpected = [r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)]
    assert not unexpected, unexpected[:3]
    return results


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lim=limits,
    kinds=st.sets(st.sampled_from(KINDS), min_size=1),
    n_calls=st.integers(100, 160),
    seed=st.integers(0, 10_000),
    cancel_rate=st.floats(0, 0.3),
    use_child=st.booleans(),
)
def test_adversarial_fakes_never_overspend_leak_or_undercount(lim, kinds, n_calls, seed, cancel_rate, use_child):
    rng = random.Random(seed)
    models = [_make(k, seed + i, rng) for i, k in enumerate(sorted(kinds))]
    root = BudgetLedger(Budget(**lim))
    ledger = root.share(0.7, name="stage") if use_child and not root.budget.is_unlimited() else root
    seen = watch_overdraw(ledger)
    ctx = RunContext(model=models[0], ledger=ledger)

    results = asyncio.run(_drive(ctx, models, n_calls, rng, cancel_rate))
    event(f"overdrawn={ledger.is_overdrawn()}")
    event(f"some cancelled={any(isinstance(r, BaseException) for r in results)}")
    event(f"some stopped={'stopped' in results}")
    event(f"honest mix={all(m.reports_honestly for m in models)}")

    over = any(isinstance(m, OverReporting) and m.log.over_reports for m in models)
    _check_invariant(root, ledger, seen, over_reporter_involved=over)
    billed_in = sum(m.log.billed.input_tokens for m in models)
    billed_out = sum(m.log.billed.output_tokens for m in models)
    billed_calls = sum(m.log.billed.calls for m in models)
    used = ledger.usage
    # Never counts less than was billed, whatever the backend reported.
    assert used.input_tokens >= billed_in and used.output_tokens >= billed_out, (used, billed_in, billed_out)
    if all(m.reports_honestly for m in models):
        assert (used.input_tokens, used.output_tokens, used.calls) == (billed_in, billed_out, billed_calls)
        assert used.usd == pytest.approx(sum(m.log.billed.usd for m in models), abs=1e-12)
    # Children's spend is included in the parent's.
    assert root.usage.tokens == ledger.usage.tokens


# ----------------------------------------------------------------- over HTTP
def _server(mode: str, seed: int) -> LoopbackOpenAIServer:
    reply = " ".join(f"w{i}" for i in range(random.Random(seed).randint(3, 30)))
    return misbehaving_server(mode, reply=reply, seed=seed, p_cut=0.3, p_timeout=0.05)


async def _no_sleep(seconds: float) -> None:
    await asyncio.sleep(0)


@pytest.mark.slow
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lim=limits,
    mode=st.sampled_from(MISBEHAVIOURS),
    seed=st.integers(0, 10_000),
    cancel_rate=st.sampled_from([0.0, 0.2]),
    native_n=st.booleans(),
)
def test_loopback_http_adversarial_modes_never_overspend_or_leak(lim, mode, seed, cancel_rate, native_n):
    from testtime.models.registry import load_model

    rng = random.Random(seed)
    with _server(mode, seed) as srv, mock.patch.object(retry, "_sleep", _no_sleep):
        model = load_model("openai:loopback", base_url=srv.base_url, api_key="test-key-not-real",
                           native_n=native_n, max_retries=2)
        root = BudgetLedger(Budget(**lim))
        seen = watch_overdraw(root)
        ctx = RunContext(model=model, ledger=root)

        async def main() -> None:
            try:
                await _drive(ctx, [model], 100, rng, cancel_rate)
            finally:
                await model.aclose()

        asyncio.run(main())
        served = srv.served
    _check_invariant(root, root, seen, over_reporter_involved=mode == "over-reporting")
    used = root.usage
    if mode in ("honest", "fewer-choices", "storm") and cancel_rate == 0 and not served.faults.get("timeout"):
        # Every request either failed with an error reply (nothing billed) or
        # reported its usage: the ledger holds exactly what the server reported.
        assert (used.input_tokens, used.output_tokens) == (served.prompt_tokens, served.completion_tokens)
    if cancel_rate == 0:
        assert used.input_tokens >= served.prompt_tokens
        assert used.output_tokens >= max(served.completion_tokens, served.honest_completion_tokens)


# ------------------------------------------------------ multi-call strategies
STRATEGY_CASES = ("solve_detect_verify:stream", "solve_detect_verify:chunks", "plan_and_budget:uniform",
                  "plan_and_budget:proportional")


def _strategy(case: str) -> Any:
    from testtime.agents.plan_and_budget import PlanAndBudget
    from testtime.search.solve_detect_verify import SolveDetectVerify

    name, opt = case.split(":")
    if name == "solve_detect_verify":
        return SolveDetectVerify(mode=opt, chunk_tokens=8, max_revisions=3)
    return PlanAndBudget(opt, plan_tokens=24, compose_tokens=16)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lim=limits,
    kinds=st.sets(st.sampled_from(KINDS), min_size=1, max_size=3),
    case=st.sampled_from(STRATEGY_CASES),
    seed=st.integers(0, 10_000),
    use_child=st.booleans(),
)
def test_solve_detect_verify_and_plan_and_budget_never_overspend_or_leak(lim, kinds, case, seed, use_child):
    """The strategies that make many dependent calls (a streamed attempt cut
    at its completion point, revisions, per-sub-question child ledgers) keep
    the same invariant against the adversarial backends."""
    from testtime.search.base import Problem
    from testtime.verifiers.scripted import ScriptedVerifier

    rng = random.Random(seed)
    models = [_make(k, seed + i, rng) for i, k in enumerate(sorted(kinds))]
    for m in models:
        # A stated answer, then hesitation: the detector's completion point.
        m.reply = rng.choice(["1. [2] first part\n2. [4] second part", "So the answer is 42. Wait, let me " + m.reply,
                              m.reply + " The answer is 41."])
    root = BudgetLedger(Budget(**lim))
    ledger = root.share(0.7, name="stage") if use_child and not root.budget.is_unlimited() else root
    seen = watch_overdraw(ledger)
    ctx = RunContext(model=models[0], ledger=ledger, max_tokens=48,
                     verifier=ScriptedVerifier(reference=True, tokens_per_call=rng.choice([0, 5])))
    problem = Problem(question="What is 40 + 2?", answer="42")

    async def main() -> Any:
        return await asyncio.wait_for(_strategy(case).search(problem, ctx), HANG_AFTER_S)

    result = asyncio.run(main())
    assert result.stopped_reason in ("done", "budget_exhausted", "verified")
    over = any(isinstance(m, OverReporting) and m.log.over_reports for m in models)
    _check_invariant(root, ledger, seen, over_reporter_involved=over)
    # What the policy model was billed (the verifier charges its own role).
    policy = [u for role, u in ledger.usage_by_role().items() if role != "verify"]
    used_in = sum(u.input_tokens for u in policy)
    used_out = sum(u.output_tokens for u in policy)
    billed = models[0].log.billed
    assert used_in >= billed.input_tokens and used_out >= billed.output_tokens, (used_in, used_out, billed)
    if models[0].reports_honestly:
        # Exact, except that a stream closed right after a delta counts that
        # delta as received while the fake bills it only once its yield
        # returns: at most one token per call over.
        assert used_in == billed.input_tokens
        assert billed.output_tokens <= used_out <= billed.output_tokens + ledger.usage.calls
