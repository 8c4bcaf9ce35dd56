"""Thinking policies on backends that budget thinking themselves (Anthropic, OpenAI reasoning models)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import testtime
from tests.support import FAKE_KEY
from tests.support.anthropic_server import MESSAGES, anthropic_server, message
from tests.support.loopback import LoopbackServer, Reply
from tests.support.openai_server import CHAT, completion, openai_server
from testtime.budget import Budget, BudgetLedger
from testtime.context import RunContext
from testtime.models.base import GenerationRequest
from testtime.models.registry import load_model
from testtime.testing.loopback import LoopbackOpenAIServer
from testtime.thinking import with_thinking


@pytest.fixture
def srv() -> Iterator[LoopbackServer]:
    with anthropic_server() as server:
        yield server


def claude(srv: LoopbackServer):
    return load_model("anthropic:claude-test", base_url=srv.url, api_key=FAKE_KEY)


async def test_anthropic_gets_budget_tokens_and_bills_thinking_as_output(srv: LoopbackServer) -> None:
    thought = "let me think about this very carefully " * 50  # 350 words of (summarised) thinking
    srv.push(MESSAGES, Reply(body=message("The answer is \\boxed{42}.", thinking=thought, input_tokens=20,
                                          output_tokens=1500)))
    model = with_thinking(claude(srv), thinking_budget=2048, answer_budget=100)
    ctx = RunContext(model=model, ledger=BudgetLedger(Budget(tokens=5000)))
    gen = (await ctx.generate(GenerationRequest(prompt="What is 6 x 7?", max_tokens=700)))[0]
    body = srv.requests_to(MESSAGES)[0].body
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert body["max_tokens"] == 2148  # answer budget + thinking budget, not the request's 700
    assert gen.thinking == thought and gen.text == "The answer is \\boxed{42}."
    usage = ctx.ledger.usage
    assert usage.output_tokens == 1500  # thinking billed as output, in full
    # the API gives no thinking count: output minus the answer's estimate (25 bytes ~ 7 tokens)
    assert usage.reasoning_tokens == 1500 - 7
    assert not ctx.ledger.overdrawn and ctx.ledger.open_reservations() == 0


async def test_anthropic_run_extracts_the_answer_not_the_thinking(srv: LoopbackServer) -> None:
    srv.push(MESSAGES, Reply(body=message("The answer is 7.", thinking="maybe \\boxed{13}", output_tokens=40)))
    model = with_thinking(claude(srv), thinking_budget=1024, answer_budget=64)
    result = await testtime.arun("q?", model=model, strategy="single", budget="tokens=4000")
    assert result.answer == "7"
    assert result.usage["reasoning_tokens"] > 0
    assert result.usage["reasoning_tokens"] <= result.usage["output_tokens"]


async def test_anthropic_planning_reserves_thinking_plus_answer(srv: LoopbackServer) -> None:
    model = with_thinking(claude(srv), thinking_budget=2048, answer_budget=100)
    worst = model.worst_case(GenerationRequest(prompt="q", max_tokens=700))
    assert worst.output_tokens == 2148


def test_openai_reasoning_model_gets_effort_and_completion_limit() -> None:
    with LoopbackOpenAIServer(reply="The answer is 9.") as server:
        model = with_thinking(load_model("openai:gpt-oss-20b", base_url=server.base_url, reasoning=True),
                              thinking_budget=4000, answer_budget=100)
        result = testtime.run("q?", model=model, strategy="single", budget="tokens=9000")
        body = server.requests[0]
    assert result.answer == "9"
    assert body["reasoning_effort"] == "medium"
    assert body["max_tokens"] == 4100  # reasoning counts toward the completion limit
    assert "temperature" not in body and len(server.requests) == 1  # one call: the server reasons itself


async def test_openai_reasoning_tokens_above_the_completion_are_not_believed() -> None:
    with openai_server() as server:
        server.push(CHAT, Reply(body=completion(["The answer is 3."], completion_tokens=10,
                                                reasoning=["hmm"], reasoning_tokens=900)))
        model = load_model("openai:o3-mini", base_url=server.url + "/v1", api_key=FAKE_KEY, reasoning=True)
        ctx = RunContext(model=with_thinking(model, thinking_budget=1000, answer_budget=50))
        gen = (await ctx.generate(GenerationRequest(prompt="q")))[0]
    assert gen.thinking == "hmm" and gen.text == "The answer is 3."
    assert ctx.ledger.usage.reasoning_tokens == 10 and ctx.ledger.usage.output_tokens == 10
