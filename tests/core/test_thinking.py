"""Thinking budgets on think-tag models: Elastic split, budget forcing, notices, the ledger."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import testtime
from testtime.budget import Budget, BudgetLedger, Usage
from testtime.cli import main
from testtime.context import RunContext
from testtime.errors import UserError
from testtime.models.base import Generation, GenerationRequest
from testtime.models.registry import load_model
from testtime.models.scripted import FunctionModel
from testtime.testing.loopback import LoopbackOpenAIServer
from testtime.thinking import ThinkingPolicy, split_thinking, with_thinking

CLOSE = "</think>"


def forever(body: dict) -> str:
    """A think-tag model that would think forever: it answers only once thinking was closed."""
    last = body["messages"][-1]
    prefix = last["content"] if last["role"] == "assistant" else ""
    if CLOSE in prefix:
        return "The answer is \\boxed{7}."
    return " ".join(["hmm"] * 10_000)


def think_server(**kw: object) -> LoopbackOpenAIServer:
    # owned_by=vllm: the client continues an assistant prefix (continue_final_message).
    return LoopbackOpenAIServer(reply=forever, honor_stop=True, owned_by="vllm", **kw)


async def test_a_model_that_would_think_forever_ends_at_thinking_plus_answer_budget_over_http() -> None:
    with think_server() as srv:
        model = with_thinking(load_model("openai:think", base_url=srv.base_url),
                              thinking_budget=40, answer_budget=16)
        result = await testtime.arun("What is 3 + 4?", model=model, strategy="single", budget="tokens=3000")
        bodies = list(srv.requests)
    assert result.answer == "7"
    assert "hmm" not in result.text  # the answer is kept apart from the thinking
    assert [b["max_tokens"] for b in bodies] == [40, 16]
    assert bodies[0]["stop"] == [CLOSE]
    # The closing tag was inserted exactly where the thinking budget ended.
    answer_prefix = bodies[1]["messages"][-1]["content"]
    thinking, _, after = answer_prefix.partition(CLOSE)
    assert thinking.startswith("<think>") and thinking.split()[1:] == ["hmm"] * 40
    assert after == "\n\n"
    usage = result.usage
    assert usage["reasoning_tokens"] == 40 and usage["output_tokens"] == 40 + 4
    assert usage["by_role"]["solve"]["reasoning_tokens"] == 40
    assert usage["tokens"] <= 3000


def test_cli_thinking_flags_drive_the_split_over_http() -> None:
    with think_server() as srv:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["run", "What is 3 + 4?", "--model", "openai:think", "--base-url", srv.base_url,
                         "--strategy", "single", "--thinking-budget", "25", "--answer-budget", "12",
                         "--budget", "tokens=2000", "--json"])
        maxes = [b["max_tokens"] for b in srv.requests]
    assert code == 0
    result = json.loads(out.getvalue())
    assert result["answer"] == "7" and maxes == [25, 12]
    assert result["usage"]["reasoning_tokens"] == 25


@pytest.mark.parametrize("argv", [
    ["--thinking-budget", "0"],
    ["--min-thinking", "50", "--thinking-budget", "10"],
    ["--thinking", "mode=sideways", "--thinking-budget", "10"],
    ["--thinking", "colour=blue"],
])
def test_bad_thinking_flags_exit_2_before_any_call(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "q", "--model", "scripted", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("testtime: error:") and err.count("\n") == 1


def _think_fn(segments: list[str], answer: str = "The answer is 3."):
    """A fake whose thinking segments reply from ``segments`` in order (each ends thinking early)."""
    it = iter(segments)

    def fn(req: GenerationRequest) -> str:
        if CLOSE in req.prefix:
            return answer
        return next(it) + f" {CLOSE} The answer is 99."  # the stop sequence cuts it at the tag

    return fn


async def test_budget_forcing_replaces_an_early_end_with_wait_up_to_the_cap() -> None:
    inner = FunctionModel(_think_fn(["short thought"] * 5))
    model = with_thinking(inner, thinking_budget=200, answer_budget=20, min_thinking=50, max_forcing=2)
    ctx = RunContext(model=model, ledger=BudgetLedger(Budget(tokens=5000)))
    gen = (await ctx.generate(GenerationRequest(prompt="q", max_tokens=50)))[0]
    thinking_calls = [r for r in inner.requests if CLOSE not in r.prefix]
    assert len(thinking_calls) == 3  # the first end, then two "Wait" continuations, then accepted
    assert gen.thinking.count("Wait,") == 2
    assert gen.raw["thinking"]["forced"] == 2 and gen.raw["thinking"]["ended"] == "model"
    assert thinking_calls[2].prefix.endswith("short thought Wait,short thought Wait,")
    assert gen.text == "The answer is 3." and "99" not in gen.text


async def test_budget_forcing_stops_once_thinking_reached_the_minimum() -> None:
    long = " ".join(["step"] * 30)
    inner = FunctionModel(_think_fn([long] * 5))
    model = with_thinking(inner, thinking_budget=500, answer_budget=20, min_thinking=50, max_forcing=5)
    gen = (await RunContext(model=model).generate(GenerationRequest(prompt="q")))[0]
    assert gen.raw["thinking"]["forced"] == 1  # 30 < 50 -> Wait; 60 >= 50 -> accepted
    assert gen.raw["thinking"]["thinking_tokens"] == 60


async def test_notices_tell_the_model_the_budget_left_and_stay_out_of_the_thinking() -> None:
    inner = FunctionModel(lambda r: "The answer is 1." if CLOSE in r.prefix else " ".join(["w"] * 999))
    model = with_thinking(inner, thinking_budget=50, answer_budget=10, notice_every=20)
    gen = (await RunContext(model=model).generate(GenerationRequest(prompt="q")))[0]
    thinking_calls = [r for r in inner.requests if CLOSE not in r.prefix]
    assert [r.max_tokens for r in thinking_calls] == [20, 20, 10]
    assert "[30 thinking tokens left]" in thinking_calls[1].prefix
    assert "[10 thinking tokens left]" in thinking_calls[2].prefix
    assert "left]" not in gen.thinking and gen.thinking.split().count("w") == 50


async def test_answer_extraction_ignores_a_boxed_answer_inside_the_thinking() -> None:
    def fn(req: GenerationRequest) -> str:
        return "The answer is 7." if CLOSE in req.prefix else "maybe \\boxed{13} is it"

    result = await testtime.arun("q?", model=with_thinking(FunctionModel(fn), thinking_budget=30),
                                 strategy="single", budget="tokens=2000")
    assert result.answer == "7"


async def test_a_think_tag_reply_without_a_policy_keeps_its_thinking_out_of_the_answer() -> None:
    model = FunctionModel(lambda r: "<think>\nsurely \\boxed{13}\n</think>\n\nThe answer is 7.")
    result = await testtime.arun("q?", model=model, strategy="single", budget="tokens=2000")
    assert result.answer == "7" and "13" not in result.text


def test_split_thinking_only_splits_replies_that_think() -> None:
    assert split_thinking("<think>a b</think>\n\nans") == ("a b", "ans")
    assert split_thinking("a b</think>ans") == ("a b", "ans")  # the template opened the tag
    assert split_thinking("plain \\boxed{2}") == ("", "plain \\boxed{2}")
    assert split_thinking("<think>never closed") == ("never closed", "")


async def test_the_answer_is_funded_even_when_thinking_could_take_the_whole_budget() -> None:
    # Thinking would use every token; the answer's share is held from the start.
    inner = FunctionModel(lambda r: "The answer is 5." if CLOSE in r.prefix else " ".join(["z"] * 5000))
    model = with_thinking(inner, thinking_budget=4000, answer_budget=10)
    ctx = RunContext(model=model, ledger=BudgetLedger(Budget(tokens=600)))
    gen = (await ctx.generate(GenerationRequest(prompt="q")))[0]
    assert gen.text == "The answer is 5."
    assert gen.raw["thinking"]["ended"] == "budget_left"  # thinking shrunk to what was left
    assert 200 < gen.raw["thinking"]["thinking_tokens"] < 300  # ~half: it is re-sent as the answer's prompt
    assert ctx.ledger.spent("tokens") <= 600 and ctx.ledger.open_reservations() == 0


async def test_a_generation_that_cannot_afford_its_answer_does_not_start() -> None:
    inner = FunctionModel(lambda r: "x")
    model = with_thinking(inner, thinking_budget=100, answer_budget=500)
    ctx = RunContext(model=model, ledger=BudgetLedger(Budget(tokens=300)))
    with pytest.raises(testtime.errors.BudgetExhausted):
        await ctx.generate(GenerationRequest(prompt="q"))
    assert inner.calls == 0


async def test_over_reported_thinking_overdraws_the_ledger_and_stops_sending() -> None:
    with think_server(usage_scale=3.0) as srv:
        model = with_thinking(load_model("openai:think", base_url=srv.base_url),
                              thinking_budget=40, answer_budget=16)
        result = await testtime.arun("q?", model=model, strategy="single", budget="tokens=3000")
        sent = srv.served.requests
    assert result.stopped_reason == "budget_overdrawn"
    assert sent == 1  # the answer segment was never sent on an overdrawn ledger


class _Liar(FunctionModel):
    """Reports reasoning tokens far above the output it generated (and sometimes more output)."""

    def __init__(self, scale: float) -> None:
        super().__init__(self._reply)
        self.scale = scale

    def _reply(self, req: GenerationRequest) -> Generation:
        words = 3 if CLOSE in req.prefix else req.max_tokens
        text = "The answer is 2." if CLOSE in req.prefix else " ".join(["t"] * words)
        out = min(len(text.split()), req.max_tokens)
        u = self.usage(self.input_upper_bound(req), int(out * self.scale))
        return Generation(text=text, usage=Usage(input_tokens=u.input_tokens, output_tokens=u.output_tokens,
                                                 calls=1, reasoning_tokens=out * 50))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limit=st.integers(200, 4000), think=st.integers(1, 400), answer=st.integers(1, 60),
       min_think=st.integers(0, 40), n=st.integers(1, 6), notice=st.one_of(st.none(), st.integers(5, 100)),
       scale=st.sampled_from([1.0, 1.0, 1.5]))
def test_ledger_invariant_holds_with_thinking_under_concurrency(limit: int, think: int, answer: int,
                                                                 min_think: int, n: int, notice: int | None,
                                                                 scale: float) -> None:
    policy = ThinkingPolicy(thinking_budget=think, answer_budget=answer, min_thinking=min(min_think, think),
                            notice_every=notice)
    ledger = BudgetLedger(Budget(tokens=limit))
    ctx = RunContext(model=with_thinking(_Liar(scale), policy), ledger=ledger)

    async def go() -> None:
        async def one(i: int) -> None:
            with contextlib.suppress(testtime.errors.SearchStop):
                await ctx.generate(GenerationRequest(prompt=f"question {i}", n=2, max_tokens=answer))

        await asyncio.gather(*(one(i) for i in range(n)))

    asyncio.run(go())
    usage = ledger.usage
    assert ledger.open_reservations() == 0 and ledger.reserved("tokens") == 0
    assert usage.reasoning_tokens <= usage.output_tokens  # over-reported reasoning is not believed
    if ledger.overdrawn:
        assert scale > 1.0  # only an over-reporting backend overdraws
    else:
        assert ledger.spent("tokens") <= limit


def test_policy_options_are_checked() -> None:
    with pytest.raises(UserError, match="thinking_budget"):
        ThinkingPolicy(thinking_budget=0)
    with pytest.raises(UserError, match="unknown thinking option"):
        ThinkingPolicy.from_options({"budget": 3})
    assert ThinkingPolicy.from_options({}) is None
    assert ThinkingPolicy.from_options({"thinking_budget": "2k"}).thinking_budget == 2000
    p = ThinkingPolicy.from_options({"close_tag": "</reasoning>", "open_tag": "<reasoning>"})
    assert p.tags == ("<reasoning>", "</reasoning>")


def test_thinking_model_worst_case_covers_thinking_and_answer() -> None:
    inner = FunctionModel(lambda r: "x")
    model = with_thinking(inner, thinking_budget=300, answer_budget=40)
    one = model.worst_case(GenerationRequest(prompt="a b c", max_tokens=999))
    assert one.output_tokens == 340 and one.calls == 2
    # the answer is priced with the thinking re-sent as its prompt
    assert one.input_tokens >= 2 * inner.input_upper_bound(GenerationRequest(prompt="a b c")) + 300
    four = model.worst_case(GenerationRequest(prompt="a b c", n=4))
    assert four.output_tokens == 4 * 340


async def test_a_request_can_carry_its_own_policy_and_the_trace_shows_the_split() -> None:
    from testtime.trace.events import Tracer

    seen: list = []
    inner = FunctionModel(lambda r: "The answer is 4." if CLOSE in r.prefix else " ".join(["k"] * 99))
    ctx = RunContext(model=inner, tracer=Tracer(sinks=[seen.append]))
    gen = (await ctx.generate(GenerationRequest(prompt="q", thinking=ThinkingPolicy(thinking_budget=12,
                                                                                    answer_budget=8))))[0]
    assert gen.text == "The answer is 4." and gen.thinking.split() == ["k"] * 12
    [event] = [e for e in seen if e.kind == "thinking"]
    assert event.data["thinking_tokens"] == 12 and event.data["answer_tokens"] == 4
    assert event.data["ended"] == "budget" and event.data["budget"] == {"thinking": 12, "answer": 8}
    calls = [e for e in seen if e.kind == "model_call"]
    # each segment's call is traced with its thinking part: the thinking segment's output is thinking
    assert [e.data["usage"]["reasoning_tokens"] for e in calls] == [12, 0]
    assert ctx.ledger.usage.reasoning_tokens == 12


def test_a_plain_model_prices_a_request_that_carries_a_policy_as_thinking_plus_answer() -> None:
    inner = FunctionModel(lambda r: "x")
    req = GenerationRequest(prompt="a b c", max_tokens=999, thinking=ThinkingPolicy(thinking_budget=300,
                                                                                     answer_budget=40))
    assert inner.worst_case(req).output_tokens == 340
    assert inner.worst_case(req.with_(thinking=None)).output_tokens == 999


@pytest.mark.parametrize("strategy", ["single", "self_consistency", "best_of_n"])
def test_a_thinking_budget_too_long_for_the_run_is_shortened_so_the_strategy_still_answers(strategy: str) -> None:
    # 960 thinking tokens are re-sent as the answer's prompt, so one full sample
    # (~2 x 960 + answer) cannot fit in 2,000 tokens: budget fitting must shorten
    # the thinking (the answer keeps its own budget) instead of drawing nothing.
    model = with_thinking(load_model("sim:thinking"), thinking_budget=960, answer_budget=32)
    result = testtime.run("What is 12 + 30?", model=model, strategy=strategy, budget="tokens=2000", seed=0)
    assert result.usage["tokens"] <= 2000
    assert result.usage["calls"] >= 1, result.usage
    assert result.usage["reasoning_tokens"] > 0
    assert result.answer is not None and result.answer != ""


async def test_a_thinking_segment_retried_after_a_cut_stream_refuses_instead_of_waiting_for_its_own_hold() -> None:
    # The segment is fitted to exactly the room left beside the answer's hold; the
    # cut attempt is charged, so its retry no longer fits. The only call "in flight"
    # is this generation's own hold, which cannot settle while it waits: the retry
    # must be refused (thinking ends at the budget), never wait for it.
    from testtime.testing.adversarial import CutStream

    inner = CutStream(" ".join(["hmm"] * 400), after_k=3, p=1.0, seed=1)
    model = with_thinking(inner, thinking_budget=200, answer_budget=20)
    ledger = BudgetLedger(Budget(tokens=300))
    ctx = RunContext(model=model, ledger=ledger)

    async def run() -> None:
        with contextlib.suppress(testtime.errors.SearchStop):
            await ctx.generate(GenerationRequest(prompt="q"))

    await asyncio.wait_for(run(), timeout=20)
    assert ledger.in_flight() == 0
    assert ledger.spent("tokens") <= 300
    assert inner.log.attempts >= 2  # the segment was cut and a retry was at least considered
