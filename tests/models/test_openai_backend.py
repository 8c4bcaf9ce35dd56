"""openai:MODEL against a small loopback fake: request shape, n fallback, prefix modes, errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import FAKE_KEY
from tests.support.loopback import LoopbackServer, Reply
from tests.support.openai_server import CHAT, MODELS, completion, error, openai_server
from testtime.errors import ModelAPIError, UserError
from testtime.models.base import GenerationRequest
from testtime.models.registry import load_model


@pytest.fixture
def srv() -> Iterator[LoopbackServer]:
    with openai_server() as server:
        yield server


def gpt(srv: LoopbackServer, **opts: object):
    opts.setdefault("api_key", FAKE_KEY)
    return load_model("openai:fake", base_url=srv.url + "/v1", **opts)


def test_missing_key_for_the_official_api_fails_before_any_call() -> None:
    with pytest.raises(UserError, match="OPENAI_API_KEY"):
        load_model("openai:gpt-4o-mini")


def test_key_is_optional_with_a_custom_server(srv: LoopbackServer) -> None:
    model = load_model("openai:fake", base_url=srv.url + "/v1")
    assert model.base_url == srv.url + "/v1"


def test_unreachable_server_is_a_user_error() -> None:
    from tests.conftest import free_port

    with pytest.raises(UserError, match="cannot reach"):
        load_model("openai:x", base_url=f"http://127.0.0.1:{free_port()}/v1")


def test_unknown_option_and_bad_prefix_mode(srv: LoopbackServer) -> None:
    with pytest.raises(UserError, match="unknown option"):
        gpt(srv, temperature_x=1)
    with pytest.raises(UserError, match="prefix_mode"):
        gpt(srv, prefix_mode="magic")


async def test_request_shape_and_usage(srv: LoopbackServer) -> None:
    srv.push(CHAT, Reply(body=completion(["four"], prompt_tokens=20, cached=16)))
    gens = await gpt(srv).generate(GenerationRequest(prompt="2+2?", system="terse", max_tokens=7,
                                                     temperature=0.3, top_p=0.9, stop=("\n",), seed=11))
    body = srv.requests_to(CHAT)[0].body
    assert body["messages"] == [{"role": "system", "content": "terse"}, {"role": "user", "content": "2+2?"}]
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["stop"], body["seed"]) == (
        7, 0.3, 0.9, ["\n"], 11)
    assert srv.requests_to(CHAT)[0].headers["authorization"] == f"Bearer {FAKE_KEY}"
    g = gens[0]
    assert g.text == "four" and g.finish_reason == "stop"  # stop sequences given: cannot tell eos apart
    assert (g.usage.input_tokens, g.usage.output_tokens, g.usage.cached_tokens) == (20, 1, 16)


async def test_unknown_server_fans_out_n(srv: LoopbackServer) -> None:
    model = gpt(srv)
    assert model.capabilities.native_n is False  # unknown servers: do not trust n
    gens = await model.generate(GenerationRequest(prompt="q", n=3, seed=5))
    assert len(gens) == 3 and len(srv.requests_to(CHAT)) == 3
    assert sorted(r.body["seed"] for r in srv.requests_to(CHAT)) == [5, 6, 7]
    assert all(g.finish_reason == "eos" for g in gens)


async def test_fewer_choices_than_n_are_returned_as_is_without_extra_requests(srv: LoopbackServer) -> None:
    srv.push(CHAT, Reply(body=completion(["only one"])))
    model = gpt(srv, native_n=True)
    req = GenerationRequest(prompt="q", n=3)
    assert model.worst_case(req).calls == 1
    gens = await model.generate(req)
    assert [g.text for g in gens] == ["only one"]
    assert srv.requests_to(CHAT)[0].body["n"] == 3 and len(srv.requests_to(CHAT)) == 1  # no top-up here
    # remembered for later reservations only: they now assume one request per sample
    assert model.capabilities.native_n is False and model.worst_case(req).calls == 3
    assert model.native_n is True  # requests in flight keep the shape they were reserved for


async def test_native_n_and_output_tokens_split(srv: LoopbackServer) -> None:
    gens = await gpt(srv, native_n=True).generate(GenerationRequest(prompt="q", n=2))
    assert len(srv.requests_to(CHAT)) == 1 and [g.text for g in gens] == ["reply 0", "reply 1"]
    assert sum(g.usage.output_tokens for g in gens) == 4  # the call's total, shared out exactly
    assert gens[0].usage.input_tokens == 9 and gens[1].usage.input_tokens == 0


async def test_vllm_is_detected_and_continues_the_final_message(srv: LoopbackServer) -> None:
    srv.push(MODELS, Reply(body={"object": "list", "data": [{"id": "m", "owned_by": "vllm"}]}))
    model = gpt(srv)
    assert model.server_kind == "vllm" and model.native_n and model.prefix_mode == "continue"
    await model.generate(GenerationRequest(prompt="solve", prefix="Step 1:"))
    body = srv.requests_to(CHAT)[0].body
    assert body["messages"][-1] == {"role": "assistant", "content": "Step 1:"}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False


async def test_instruct_prefix_mode_strips_an_echoed_prefix(srv: LoopbackServer) -> None:
    srv.push(CHAT, Reply(body=completion(["Step 1: read. Step 2: add."])))
    gens = await gpt(srv, prefix_mode="instruct").generate(GenerationRequest(prompt="solve", prefix="Step 1: read."))
    assert gens[0].text == " Step 2: add."
    assert "Step 1: read." in srv.requests_to(CHAT)[0].body["messages"][-1]["content"]


async def test_429_then_500_then_success(srv: LoopbackServer, sleeps: list[float]) -> None:
    srv.push(CHAT, error(429, "rate limited", {"retry-after": "1"}), error(500, "oops"))
    gens = await gpt(srv).generate(GenerationRequest(prompt="q"))
    assert gens[0].text == "reply 0" and len(srv.requests_to(CHAT)) == 3
    assert sleeps[0] == 1.0 and len(sleeps) == 2


async def test_401_is_final_and_never_shows_the_key(srv: LoopbackServer, sleeps: list[float]) -> None:
    srv.push(CHAT, error(401, f"Incorrect API key provided: {FAKE_KEY}", code="invalid_api_key"))
    with pytest.raises(ModelAPIError) as info:
        await gpt(srv).generate(GenerationRequest(prompt="q"))
    assert info.value.status == 401 and not info.value.retryable and sleeps == []
    assert len(srv.requests_to(CHAT)) == 1
    assert "authentication failed" in str(info.value) and FAKE_KEY not in str(info.value)


async def test_context_length_error_is_final(srv: LoopbackServer, sleeps: list[float]) -> None:
    srv.push(CHAT, error(400, "This model's maximum context length is 2048 tokens", code="context_length_exceeded"))
    with pytest.raises(ModelAPIError, match="shorten the prompt"):
        await gpt(srv).generate(GenerationRequest(prompt="q"))
    assert len(srv.requests_to(CHAT)) == 1


async def test_worst_case_covers_template_overhead(srv: LoopbackServer) -> None:
    model = gpt(srv)
    req = GenerationRequest(prompt="Hi", max_tokens=5, n=2)
    worst = model.worst_case(req)
    # fan-out: prompt billed per sample; a hidden default system prompt still fits
    assert worst.input_tokens >= 2 * 64 and worst.output_tokens == 10
