"""Honest counters: ``usage.calls`` is requests sent; bad counts are exit-2 errors, never a hang."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import testtime
from testtime.budget import Budget, BudgetLedger
from testtime.context import RunContext
from testtime.errors import UserError
from testtime.models.base import GenerationRequest
from testtime.models.registry import load_model
from testtime.models.retry import RetryPolicy
from testtime.testing.loopback import FaultSchedule, LoopbackOpenAIServer
from testtime.trace.events import Tracer


def _ctx(model, budget: str = "tokens=100k") -> RunContext:
    return RunContext(model=model, ledger=BudgetLedger(Budget.parse(budget)), tracer=Tracer(), max_tokens=16)


@pytest.mark.parametrize("owned_by", [None, "vllm"], ids=["fan-out", "native-n"])
async def test_usage_calls_equals_http_requests_the_server_received(owned_by: str | None) -> None:
    with LoopbackOpenAIServer(reply="The answer is 4.", owned_by=owned_by) as srv:
        model = load_model("openai:fake", base_url=srv.base_url)
        try:
            result = await testtime.arun("What is 2+2?", strategy="self_consistency", n=8,
                                         context=_ctx(model))
        finally:
            await model.aclose()
        sent = srv.served.requests
    assert len(result.candidates) == 8
    assert sent == (8 if owned_by is None else 1)
    assert result.usage["calls"] == sent and result.usage["by_role"]["solve"]["calls"] == sent


async def test_retried_and_topped_up_requests_are_each_counted_as_calls() -> None:
    # Every 500 is retried and a capped server returns 2 of 4 choices: the
    # spend path sends more requests, and `calls` must count every one.
    faults = FaultSchedule(p500=0.3, seed=3)
    with LoopbackOpenAIServer(reply="The answer is 4.", owned_by="vllm", choices_cap=2, faults=faults) as srv:
        model = load_model("openai:fake", base_url=srv.base_url)
        model.retry_policy = RetryPolicy(max_retries=6, initial_wait=0.0, max_wait=0.0)
        ctx = _ctx(model)
        try:
            gens = await ctx.generate(GenerationRequest(prompt="What is 2+2?", n=4, max_tokens=8))
        finally:
            await model.aclose()
        served = srv.served
    assert len(gens) == 4
    assert served.requests > 2  # top-ups (and, with this seed, retries) happened
    assert ctx.ledger.usage.calls == served.requests
    assert ctx.stats["retries"] == served.faults.get("500", 0)


async def test_local_batched_samples_are_one_backend_call_with_the_prompt_billed_once() -> None:
    pytest.importorskip("llama_cpp")
    model = load_model("local", n_threads=1)
    ctx = _ctx(model)
    req = GenerationRequest(prompt="Say hi.", n=4, max_tokens=4, temperature=0.7, seed=1)
    prompt = model.input_upper_bound(req)
    gens = await ctx.generate(req)
    assert len(gens) == 4
    assert ctx.ledger.usage.calls == 1
    assert ctx.ledger.usage.input_tokens == prompt
    assert ctx.ledger.usage.output_tokens == sum(g.usage.output_tokens for g in gens)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "testtime.cli", "run", "What is 2+2?", "--model",
                           "scripted:The answer is 4.", "--json", *args],
                          capture_output=True, text=True, timeout=60, env=env, check=False)


@pytest.mark.parametrize("args, says", [
    (["-o", "n=2.5"], "integer"),
    (["-o", "n=0"], "n >= 1"),
    (["-o", "n=-1"], "n >= 1"),
    (["--n", "2.5"], "--n"),
    (["--n", "0"], "--n must be >= 1"),
    (["--budget", "calls=1.5"], "whole number"),
    (["--budget", "tokens=99.5"], "whole number"),
    (["--threads", "0"], "--threads must be >= 1"),
], ids=["o-n-fraction", "o-n-zero", "o-n-negative", "n-fraction", "n-zero", "calls-fraction",
        "tokens-fraction", "threads-zero"])
def test_fractional_or_out_of_range_counts_exit_2_with_one_line(args: list[str], says: str) -> None:
    out = _cli(*args)  # the timeout turns a hang into a failure
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("testtime: error:") and says in lines[0], out.stderr
    assert out.stdout == ""


def test_whole_counts_with_suffixes_still_parse() -> None:
    assert Budget.parse("tokens=1.5k,calls=3").to_dict() == {"tokens": 1500, "calls": 3}
    with pytest.raises(UserError, match="whole number"):
        Budget.parse("calls=2.5")
