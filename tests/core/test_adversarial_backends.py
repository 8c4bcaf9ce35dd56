"""Adversarial backends, one misbehaviour at a time, counted on the server side.

Each test drives ``testtime run`` (in-process, ``--json``) or
``RunContext.generate`` against the loopback OpenAI server in one
adversarial mode (or an in-process fake) and compares the ledger with what
the server says it served.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

from testtime.budget import Budget, BudgetLedger
from testtime.cli import main
from testtime.context import RunContext
from testtime.errors import BudgetOverdrawn, CallFailed
from testtime.models import retry
from testtime.models.base import GenerationRequest, StreamDelta
from testtime.testing.adversarial import CutStream
from testtime.testing.loopback import FaultSchedule, LoopbackOpenAIServer

QUESTION = "What is 6 times 7?"
REPLY = "Six times seven is 42. The answer is 42."


@pytest.fixture(autouse=True)
def _no_keys_no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """No real keys or base URLs reach a test; retry waits are recorded, not slept."""
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(retry, "_sleep", fake_sleep)
    return waits


@pytest.fixture
def reservations(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Every reservation of the run: admitted, refused as overdrawn, admitted after an overdraw (must be 0)."""
    seen = {"admitted": 0, "refused_overdrawn": 0, "admitted_after_overdraw": 0}
    original = BudgetLedger.reserve

    def reserve(self: BudgetLedger, amount: Any, **kw: Any) -> Any:
        was = self.is_overdrawn()
        try:
            res = original(self, amount, **kw)
        except BudgetOverdrawn:
            seen["refused_overdrawn"] += 1
            raise
        seen["admitted"] += 1
        seen["admitted_after_overdraw"] += was
        return res

    monkeypatch.setattr(BudgetLedger, "reserve", reserve)
    return seen


def run_cli(capsys: pytest.CaptureFixture[str], url: str, *args: str,
            trace: Path | None = None) -> tuple[int, dict[str, Any] | None, str]:
    argv = ["run", QUESTION, "--model", "openai:loopback", "--base-url", url, "--json", *args]
    if trace is not None:
        argv += ["--trace", str(trace)]
    rc = main(argv)
    out, err = capsys.readouterr()
    data = json.loads(out) if out.strip() else None
    return rc, data, err


def events(trace: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]


@pytest.fixture
def server_factory() -> Iterator[Any]:
    started: list[LoopbackOpenAIServer] = []

    def make(**kw: Any) -> LoopbackOpenAIServer:
        kw.setdefault("reply", REPLY)
        srv = LoopbackOpenAIServer(**kw)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.close()


# ------------------------------------------------------------ over-reporting
def test_over_reporting_server_ends_overdrawn_says_by_how_much_and_sends_nothing_after(
        capsys, server_factory, reservations, tmp_path) -> None:
    srv = server_factory(usage_scale=50)
    trace = tmp_path / "t.jsonl"
    rc, data, err = run_cli(capsys, srv.base_url, "--strategy", "self_consistency", "--max-tokens", "16",
                            "--budget", "tokens=3000", trace=trace)
    assert rc == 0, err
    assert data["stopped_reason"] == "budget_overdrawn"
    over = data["usage"]["overdrawn"]
    assert over["excess_over_reservations"]["output_tokens"] > 0
    assert over["excess_over_reservations"]["tokens"] > 0
    served = srv.served
    # The ledger recorded everything the server reported, and says how far past the limit it went.
    assert data["usage"]["output_tokens"] == served.completion_tokens
    assert data["usage"]["input_tokens"] == served.prompt_tokens
    if data["usage"]["tokens"] > 3000:
        assert over["over_limit"]["tokens"] == data["usage"]["tokens"] - 3000
    # Nothing was admitted once the ledger was overdrawn; every request had a reservation.
    assert reservations["admitted_after_overdraw"] == 0
    assert served.requests <= reservations["admitted"]
    kinds = [e["kind"] for e in events(trace)]
    assert "error" in kinds  # the overdraw is traced as an error event


# ------------------------------------------------------------ missing usage
def test_missing_usage_settles_at_least_what_was_served_with_a_trace_note(
        capsys, server_factory, tmp_path) -> None:
    srv = server_factory(omit_usage=True)
    trace = tmp_path / "t.jsonl"
    rc, data, err = run_cli(capsys, srv.base_url, "--n", "4", "--max-tokens", "16",
                            "--budget", "tokens=5000", trace=trace)
    assert rc == 0, err
    served = srv.served
    assert served.ok >= 1 and served.completion_tokens == 0  # it reported nothing
    assert data["usage"]["output_tokens"] >= served.honest_completion_tokens
    assert data["usage"]["input_tokens"] >= served.honest_prompt_tokens
    assert data["usage"]["tokens"] <= 5000
    notes = [e for e in events(trace) if e["kind"] == "note" and "no usage" in e.get("message", "")]
    assert len(notes) == served.ok


# ------------------------------------------------------------ fewer choices
def test_fewer_choices_top_up_requests_are_reserved_and_counted(capsys, server_factory, tmp_path) -> None:
    srv = server_factory(choices_cap=1, owned_by="vllm")  # vllm: native n, so n=4 goes in one request
    trace = tmp_path / "t.jsonl"
    rc, data, err = run_cli(capsys, srv.base_url, "--n", "4", "--max-tokens", "16",
                            "--budget", "tokens=5000", trace=trace)
    assert rc == 0, err
    served = srv.served
    assert served.requests >= 2  # the server ignored n: the rest came as top-up requests
    assert data["usage"]["calls"] == served.requests  # each counted as a call
    assert (data["usage"]["input_tokens"], data["usage"]["output_tokens"]) == \
        (served.prompt_tokens, served.completion_tokens)  # each one's prompt billed and counted
    assert data["usage"]["tokens"] <= 5000
    assert any("choices" in e.get("message", "") for e in events(trace) if e["kind"] == "note")


def test_fewer_choices_top_ups_stay_within_a_tight_budget(capsys, server_factory) -> None:
    srv = server_factory(choices_cap=1, owned_by="vllm")
    rc, data, err = run_cli(capsys, srv.base_url, "--n", "8", "--max-tokens", "16",
                            "--budget", "tokens=900")
    assert rc == 0, err
    assert data["usage"]["tokens"] <= 900
    assert data["usage"]["calls"] == srv.served.requests


# ------------------------------------------------------------- cut streams
@pytest.mark.parametrize("k", [1, 3])
async def test_cancel_after_k_deltas_leaves_k_tokens_plus_prompt(k: int) -> None:
    from testtime.models.registry import load_model

    with LoopbackOpenAIServer(reply=REPLY) as srv:
        model = load_model("openai:loopback", base_url=srv.base_url, api_key="test-key-not-real")
        ledger = BudgetLedger(Budget(tokens=10_000))
        ctx = RunContext(model=model, ledger=ledger)
        req = GenerationRequest(prompt=QUESTION, max_tokens=32)
        got: list[int] = []
        inner = model.stream

        async def counting(request: GenerationRequest) -> Any:
            async with aclosing(inner(request)) as deltas:
                async for item in deltas:
                    yield item  # the spend path has counted it when it asks for the next one
                    if isinstance(item, StreamDelta):
                        got.append(item.tokens)
                        if len(got) == k:
                            task.cancel()
                            await asyncio.sleep(0)  # the cancellation lands here, after k deltas

        model.stream = counting  # type: ignore[method-assign]
        task = asyncio.ensure_future(ctx.generate(req))
        with pytest.raises(asyncio.CancelledError):
            await task
        await model.aclose()
        worst = model.worst_case(req)
    assert sum(got) == k
    assert ledger.usage.output_tokens == k
    assert ledger.usage.input_tokens == worst.input_tokens  # the prompt's upper bound: it may be billed
    assert ledger.usage.calls == 1
    assert ledger.open_reservations() == 0


async def test_fake_cut_after_k_deltas_settles_k_tokens_plus_prompt_per_attempt() -> None:
    model = CutStream(REPLY, after_k=3, p=1.0)
    ledger = BudgetLedger()
    ctx = RunContext(model=model, ledger=ledger)
    with pytest.raises(CallFailed):
        await ctx.generate(GenerationRequest(prompt=QUESTION, max_tokens=32))
    attempts = model.log.attempts
    assert attempts == model.retry_policy.max_attempts
    assert ledger.usage.output_tokens == 3 * attempts
    assert ledger.usage.input_tokens == model.input_upper_bound(GenerationRequest(prompt=QUESTION)) * attempts
    assert ledger.usage == model.log.billed


def test_server_cut_streams_settle_what_arrived_and_retry(capsys, server_factory) -> None:
    srv = server_factory(cut_after=2)
    rc, data, err = run_cli(capsys, srv.base_url, "--n", "2", "--max-tokens", "16",
                            "--budget", "tokens=20000")
    served = srv.served
    assert rc == 1, "no call can succeed when every stream is cut"
    assert served.ok == 0 and served.chunks == 2 * served.requests
    assert "model error" in err


# --------------------------------------------------------------- storms
def test_storm_after_two_successes_exits_0_with_answer_and_errors_count(capsys, server_factory, tmp_path) -> None:
    kinds = ["408", "429", "500", "timeout"]
    srv = server_factory(faults=lambda i, body: None if i < 2 else kinds[i % 4], stall=0.05, retry_after=0.01)
    trace = tmp_path / "t.jsonl"
    rc, data, err = run_cli(capsys, srv.base_url, "--n", "6", "--max-tokens", "16",
                            "--budget", "tokens=20000", trace=trace)
    assert rc == 0, err
    assert data["answer"] is not None
    served = srv.served
    assert served.ok == 2
    errors = [e for e in events(trace) if e["kind"] == "error" and "model_call" in e.get("where", "")]
    assert data["usage"]["errors"] == len(errors) == 4
    assert data["stopped_reason"] in ("errors", "done")
    # The successful calls' usage is kept; timeouts are charged their prompt bound, error replies nothing.
    assert data["usage"]["output_tokens"] == served.completion_tokens
    assert data["usage"]["input_tokens"] >= served.prompt_tokens


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_seeded_storm_exits_0_with_answer_when_any_call_succeeded(capsys, server_factory, seed) -> None:
    srv = server_factory(faults=FaultSchedule(p408=0.1, p429=0.2, p500=0.2, ptimeout=0.1, seed=seed,
                                              retry_after=0.01, stall=0.05))
    rc, data, err = run_cli(capsys, srv.base_url, "--n", "6", "--max-tokens", "16", "--budget", "tokens=20000")
    served = srv.served
    assert served.ok > 0  # the schedule is seeded: these seeds let calls through
    assert rc == 0, err
    assert data["answer"] is not None
    assert data["stopped_reason"] in ("errors", "done")
    assert data["usage"]["output_tokens"] == served.completion_tokens
    assert data["usage"]["calls"] == served.requests  # every request sent, faulted or not


def test_all_calls_failing_exits_1_without_json(capsys, server_factory) -> None:
    srv = server_factory(faults=lambda i, body: "500")
    rc, data, err = run_cli(capsys, srv.base_url, "--n", "3", "--max-tokens", "16", "--budget", "tokens=20000")
    assert rc == 1
    assert data is None
    assert "model error" in err
    assert srv.served.ok == 0 and srv.served.requests >= 3


# ------------------------------------------------------------ calls limit
def test_calls_limit_1_with_n_8_sends_at_most_one_request(capsys, server_factory) -> None:
    srv = server_factory()
    rc, data, err = run_cli(capsys, srv.base_url, "--budget", "calls=1", "--n", "8", "--max-tokens", "16")
    assert rc == 0, err
    assert srv.served.requests == 1
    assert data["usage"]["calls"] == 1


def test_calls_limit_counts_retried_requests_too(capsys, server_factory) -> None:
    # The first two requests are refused with 429 and retried: `calls` counts requests sent.
    srv = server_factory(faults=lambda i, body: "429" if i < 2 else None, retry_after=0.01)
    rc, data, err = run_cli(capsys, srv.base_url, "--budget", "calls=2", "--n", "8", "--max-tokens", "16")
    assert srv.served.requests == 2, f"calls=2 but the server received {srv.served.requests} requests"
    assert rc == 0, err
    assert data["usage"]["calls"] == 2  # both refused requests count
    assert data["stopped_reason"] == "budget_exhausted"


# -------------------------------------------------------------- unpriced usd
def test_usd_limit_with_unpriced_model_exits_2_before_any_request(capsys, server_factory) -> None:
    srv = server_factory()
    rc, data, err = run_cli(capsys, srv.base_url, "--budget", "usd=1", "--n", "2", "--max-tokens", "16")
    assert rc == 2
    assert "price" in err.lower() and err.count("\n") == 1
    assert srv.served.requests == 0
