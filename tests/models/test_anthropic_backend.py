"""anthropic:MODEL against a loopback server that speaks the Messages API."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import FAKE_KEY
from tests.support.anthropic_server import MESSAGES, anthropic_server, error, message
from tests.support.loopback import LoopbackServer, Reply
from testtime.errors import CapabilityError, ModelAPIError, UserError
from testtime.models.base import GenerationRequest
from testtime.models.registry import load_model


@pytest.fixture
def srv() -> Iterator[LoopbackServer]:
    with anthropic_server() as server:
        yield server


def claude(srv: LoopbackServer, **opts: object):
    return load_model("anthropic:claude-test", base_url=srv.url, api_key=FAKE_KEY, **opts)


async def test_success_maps_text_finish_and_usage(srv: LoopbackServer) -> None:
    srv.push(MESSAGES, Reply(body=message("Paris.", input_tokens=12, output_tokens=3, cache_read=30)))
    gens = await claude(srv).generate(GenerationRequest(prompt="Capital of France?", system="Be brief.",
                                                        max_tokens=50, stop=("\n\n",)))
    assert [g.text for g in gens] == ["Paris."]
    assert gens[0].finish_reason == "eos"
    assert gens[0].usage.input_tokens == 42 and gens[0].usage.cached_tokens == 30
    assert gens[0].usage.output_tokens == 3
    body = srv.requests_to(MESSAGES)[0].body
    assert body["system"] == "Be brief." and body["max_tokens"] == 50 and body["stop_sequences"] == ["\n\n"]
    assert body["messages"] == [{"role": "user", "content": "Capital of France?"}]
    headers = srv.requests_to(MESSAGES)[0].headers
    # SDK versions send the key as x-api-key or as an Authorization bearer
    assert FAKE_KEY in headers.get("x-api-key", "") + headers.get("authorization", "")


@pytest.mark.parametrize(("reason", "expected"), [("end_turn", "eos"), ("stop_sequence", "stop"),
                                                  ("max_tokens", "length")])
async def test_stop_reasons(srv: LoopbackServer, reason: str, expected: str) -> None:
    srv.push(MESSAGES, Reply(body=message("x", stop_reason=reason)))
    gens = await claude(srv).generate(GenerationRequest(prompt="q"))
    assert gens[0].finish_reason == expected


async def test_prefix_is_sent_as_assistant_prefill(srv: LoopbackServer) -> None:
    srv.push(MESSAGES, Reply(body=message("\n\nStep 2: add.")))
    gens = await claude(srv).generate(GenerationRequest(prompt="Solve it", prefix="Step 1: read.\n\n"))
    body = srv.requests_to(MESSAGES)[0].body
    # trailing whitespace is not allowed in a prefill: it is trimmed and removed from the reply
    assert body["messages"][-1] == {"role": "assistant", "content": "Step 1: read."}
    assert gens[0].text == "Step 2: add."


async def test_thinking_budget_turns_on_extended_thinking(srv: LoopbackServer) -> None:
    srv.push(MESSAGES, Reply(body=message("42", thinking="let me think")))
    gens = await claude(srv).generate(GenerationRequest(prompt="q", max_tokens=100, thinking_budget=1024))
    body = srv.requests_to(MESSAGES)[0].body
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert body["max_tokens"] == 1124 and "temperature" not in body
    assert gens[0].text == "42"  # thinking blocks are not part of the answer


async def test_429_with_retry_after_then_success(srv: LoopbackServer, sleeps: list[float], events: list) -> None:
    srv.push(MESSAGES, error(429, "rate_limit_error", "slow down", {"retry-after": "2"}))
    gens = await claude(srv).generate(GenerationRequest(prompt="hello"))
    assert gens[0].text == "echo: hello"
    assert len(srv.requests_to(MESSAGES)) == 2
    assert sleeps == [2.0]  # the server's Retry-After, not our backoff
    assert [e.data["attempt"] for e in events if e.kind == "retry"] == [1]


async def test_500_then_success(srv: LoopbackServer, sleeps: list[float]) -> None:
    srv.push(MESSAGES, error(500, "api_error", "boom"), error(529, "overloaded_error", "busy"))
    gens = await claude(srv).generate(GenerationRequest(prompt="hi"))
    assert gens[0].text == "echo: hi"
    assert len(srv.requests_to(MESSAGES)) == 3 and len(sleeps) == 2


async def test_timeout_is_retried(srv: LoopbackServer, sleeps: list[float], events: list) -> None:
    srv.push(MESSAGES, Reply(body=message("late"), delay=1.5))
    gens = await claude(srv, timeout=0.3).generate(GenerationRequest(prompt="hi"))
    assert gens[0].text == "echo: hi"
    assert len(srv.requests_to(MESSAGES)) == 2
    assert "timed out" in [e for e in events if e.kind == "retry"][0].data["error"]


async def test_timeouts_exhaust_the_retries(srv: LoopbackServer, sleeps: list[float]) -> None:
    srv.push(MESSAGES, Reply(body=message("late"), delay=1.0), Reply(body=message("late"), delay=1.0))
    with pytest.raises(ModelAPIError, match="timed out") as info:
        await claude(srv, idle_timeout=0.2, max_retries=1).generate(GenerationRequest(prompt="hi"))
    # max_retries=1: the first attempt and one retry
    assert info.value.retryable and len(srv.requests_to(MESSAGES)) == 2


async def test_401_fails_at_once_with_a_clear_message(srv: LoopbackServer, sleeps: list[float]) -> None:
    srv.push(MESSAGES, error(401, "authentication_error", f"invalid x-api-key {FAKE_KEY}"))
    with pytest.raises(ModelAPIError) as info:
        await claude(srv).generate(GenerationRequest(prompt="hi"))
    assert len(srv.requests_to(MESSAGES)) == 1 and sleeps == []
    assert not info.value.retryable and info.value.status == 401
    assert "ANTHROPIC_API_KEY" in str(info.value)
    assert FAKE_KEY not in str(info.value)  # even when the server echoes it


async def test_missing_key_fails_before_any_request(srv: LoopbackServer) -> None:
    with pytest.raises(UserError, match="ANTHROPIC_API_KEY"):
        load_model("anthropic:claude-test", base_url=srv.url)
    assert srv.requests == []


async def test_key_and_base_url_from_environment(srv: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", FAKE_KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.url)
    model = load_model("anthropic:claude-test")
    assert FAKE_KEY not in repr(model)
    assert (await model.generate(GenerationRequest(prompt="env")))[0].text == "echo: env"


async def test_logprobs_are_refused_with_a_capability_error(srv: LoopbackServer) -> None:
    model = claude(srv)
    assert model.capabilities.logprobs is False
    with pytest.raises(CapabilityError, match="logprobs"):
        await model.generate(GenerationRequest(prompt="hi", logprobs=True))
    assert srv.requests == []


async def test_n_samples_are_concurrent_calls(srv: LoopbackServer) -> None:
    srv.push(MESSAGES, *[Reply(body=message(f"s{i}"), delay=1.0) for i in range(4)])
    gens = await claude(srv).generate(GenerationRequest(prompt="hi", n=4))
    assert sorted(g.text for g in gens) == ["s0", "s1", "s2", "s3"]
    assert len(srv.requests_to(MESSAGES)) == 4
    assert srv.max_in_flight == 4  # all four were in flight together, not one after another


async def test_too_small_thinking_budget_is_a_user_error(srv: LoopbackServer) -> None:
    with pytest.raises(UserError, match="thinking_budget must be >= 1024"):
        await claude(srv).generate(GenerationRequest(prompt="q", thinking_budget=100))
    assert srv.requests == []
