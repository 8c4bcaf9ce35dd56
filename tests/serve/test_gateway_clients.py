"""Real clients against a real gateway over HTTP: the OpenAI SDK (sync, async, streaming),
LangChain's ChatOpenAI, curl and raw httpx, over the scripted backend and over the OpenAI
backend pointed at a loopback upstream whose own counts are the ground truth."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess

import httpx
import openai
import pytest

from tests.serve.gateway_support import gateway
from testtime.testing.loopback import LoopbackOpenAIServer

REPLY = "Two and two make four. The answer is 4."
CONFIG = {
    "defaults": {"strategy": "self_consistency", "budget": "tokens=1500"},
    "models": {
        "quick": {"strategy": "single", "budget": "tokens=600"},
        "voter": {"strategy": "self_consistency", "budget": "tokens=2500", "options": {"n": 3}},
    },
}


@pytest.fixture(scope="module")
def upstream():
    with LoopbackOpenAIServer(reply=REPLY) as srv:
        yield srv


@pytest.fixture(scope="module")
def gw(upstream):
    with gateway(model="openai:loopback", base_url=upstream.base_url, config=CONFIG) as g:
        yield g


def client(g, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=g.v1, api_key="unused", max_retries=0, **kw)


def test_sdk_sync_usage_equals_what_the_upstream_counted(gw, upstream):
    upstream.reset_counts()
    raw = client(gw).chat.completions.with_raw_response.create(
        model="loopback", messages=[{"role": "user", "content": "What is 2+2?"}],
        extra_body={"testtime": {"strategy": "self_consistency", "budget": "tokens=1200", "options": {"n": 4}}})
    resp = raw.parse()
    served = upstream.served
    assert served.requests == 4  # four samples, as asked
    assert resp.usage.total_tokens == served.prompt_tokens + served.completion_tokens
    assert resp.usage.prompt_tokens == served.prompt_tokens
    assert int(raw.headers["x-testtime-spent-tokens"]) == resp.usage.total_tokens
    assert resp.choices[0].message.content == REPLY
    tt = resp.model_extra["testtime"]
    assert tt["strategy"] == "self_consistency" and tt["candidates"] == 4 and tt["answer"] == "4"
    assert tt["usage"]["by_role"]["solve"]["tokens"] == resp.usage.total_tokens
    assert tt["trace_id"] and raw.headers["x-testtime-trace-id"] == tt["trace_id"]


def test_sdk_async_stream_deltas_join_to_the_answer_and_last_chunk_carries_usage(gw, upstream):
    async def go():
        c = openai.AsyncOpenAI(base_url=gw.v1, api_key="unused", max_retries=0)
        stream = await c.chat.completions.create(
            model="quick", messages=[{"role": "user", "content": "What is 2+2?"}], stream=True,
            stream_options={"include_usage": True})
        parts, last = [], None
        async for ch in stream:
            if ch.choices and ch.choices[0].delta.content:
                parts.append(ch.choices[0].delta.content)
            last = ch
        await c.close()
        return parts, last

    upstream.reset_counts()
    parts, last = asyncio.run(go())
    assert len(parts) > 1 and "".join(parts) == REPLY
    assert last.choices == [] and last.usage.total_tokens == upstream.served.tokens > 0


def test_sdk_async_nonstream_and_sync_stream(gw):
    async def go():
        c = openai.AsyncOpenAI(base_url=gw.v1, api_key="unused", max_retries=0)
        r = await c.chat.completions.create(model="quick", messages=[{"role": "user", "content": "2+2?"}])
        await c.close()
        return r

    r = asyncio.run(go())
    assert r.choices[0].message.content == REPLY and r.model_extra["testtime"]["strategy"] == "single"
    text = "".join(ch.choices[0].delta.content or "" for ch in client(gw).chat.completions.create(
        model="quick", messages=[{"role": "user", "content": "2+2?"}], stream=True) if ch.choices)
    assert text == REPLY


def test_strategy_precedence_body_over_header_over_alias_over_defaults(gw):
    c = client(gw)
    msgs = [{"role": "user", "content": "What is 2+2?"}]

    def tt(**kw):
        return c.chat.completions.create(messages=msgs, **kw).model_extra["testtime"]

    d = tt(model="loopback")
    assert d["strategy"] == "self_consistency" and d["budget"] == {"tokens": 1500}
    assert d["settings_from"]["strategy"] == "defaults"
    a = tt(model="quick")
    assert a["strategy"] == "single" and a["budget"] == {"tokens": 600} and a["alias"] == "quick"
    h = tt(model="quick", extra_headers={"X-Testtime-Strategy": "best_of_n", "X-Testtime-Budget": "tokens=900"})
    assert h["strategy"] == "best_of_n" and h["budget"] == {"tokens": 900}
    b = tt(model="quick", extra_headers={"X-Testtime-Strategy": "best_of_n", "X-Testtime-Budget": "tokens=900"},
           extra_body={"testtime": {"strategy": "self_consistency", "budget": "tokens=700"}})
    assert b["strategy"] == "self_consistency" and b["budget"] == {"tokens": 700}
    assert b["settings_from"] == {**b["settings_from"], "strategy": "body", "budget": "body"}
    # The alias's options (n=3) follow its strategy; a request that keeps the strategy keeps them.
    v = tt(model="voter")
    assert v["candidates"] == 3


def test_langchain_chat_openai_invoke_and_stream(gw):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model="quick", base_url=gw.v1, api_key="unused", max_retries=0)
    msg = llm.invoke([("system", "Answer briefly."), ("human", "What is 2+2?")])
    assert msg.content == REPLY
    assert msg.usage_metadata["total_tokens"] > 0
    chunks = list(llm.stream("What is 2+2?"))
    assert "".join(c.content for c in chunks) == REPLY


def test_curl_raw_http_plain_and_streamed(gw):
    if shutil.which("curl") is None:
        pytest.skip("curl not on PATH")
    body = json.dumps({"model": "quick", "messages": [{"role": "user", "content": "2+2?"}]})
    out = subprocess.run(["curl", "-sS", "-i", gw.v1 + "/chat/completions", "-H", "Content-Type: application/json",
                          "-d", body], capture_output=True, text=True, timeout=60, check=True).stdout
    head, _, payload = out.partition("\n\n")  # text mode: CRLF read as LF
    assert "x-testtime-spent-tokens:" in head.lower()
    assert json.loads(payload)["choices"][0]["message"]["content"] == REPLY
    body = json.dumps({"model": "quick", "stream": True, "messages": [{"role": "user", "content": "2+2?"}]})
    sse = subprocess.run(["curl", "-sS", "-N", gw.v1 + "/chat/completions", "-H", "Content-Type: application/json",
                          "-d", body], capture_output=True, text=True, timeout=60, check=True).stdout
    datas = [line[6:] for line in sse.splitlines() if line.startswith("data: ")]
    assert datas[-1] == "[DONE]"
    text = "".join(json.loads(d)["choices"][0]["delta"].get("content") or "" for d in datas[:-1]
                   if json.loads(d)["choices"])
    assert text == REPLY


def test_multi_turn_with_system_reaches_upstream_intact(gw, upstream):
    upstream.reset_counts()
    convo = [{"role": "system", "content": "You are terse; end with 'The answer is N.'"},
             {"role": "user", "content": "I have 2 apples."},
             {"role": "assistant", "content": "Noted: 2 apples."},
             {"role": "user", "content": "I buy 2 more. How many now?"}]
    client(gw).chat.completions.create(model="loopback", messages=convo,
                                       extra_body={"testtime": {"strategy": "self_consistency",
                                                                "options": {"n": 2}}})
    assert len(upstream.requests) == 2
    for sent in upstream.requests:
        assert sent["messages"] == convo  # every turn, in order, roles kept, nothing flattened


def test_request_fields_reach_upstream_temperature_seed_max_tokens(gw, upstream):
    upstream.reset_counts()
    client(gw).chat.completions.create(model="quick", messages=[{"role": "user", "content": "2+2?"}],
                                       temperature=0.3, max_tokens=77, seed=5)
    (sent,) = upstream.requests
    assert sent["temperature"] == 0.3 and sent["max_tokens"] == 77 and isinstance(sent["seed"], int)


def test_stop_cuts_the_returned_answer(gw):
    r = client(gw).chat.completions.create(model="quick", messages=[{"role": "user", "content": "2+2?"}],
                                           stop=[" make"])
    assert r.choices[0].message.content == "Two and two" and r.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("kw, param", [
    ({"n": 2}, "n"),
    ({"logprobs": True}, "logprobs"),
    ({"top_p": 0.5}, "top_p"),
    ({"extra_body": {"testtime": {"strategy": "no_such"}}}, "testtime.strategy"),
    ({"extra_body": {"testtime": {"budget": "tokens=lots"}}}, "testtime.budget"),
    ({"extra_body": {"testtime": {"options": {"n": "many"}}}}, "testtime.options"),
    ({"extra_body": {"testtime": {"strategy": "beam"}}}, "testtime.prm"),
])
def test_unsupported_or_bad_fields_are_400_saying_why(gw, kw, param):
    with pytest.raises(openai.BadRequestError) as info:
        client(gw).chat.completions.create(model="quick", messages=[{"role": "user", "content": "2+2?"}], **kw)
    err = info.value.body
    assert err["param"] == param and len(err["message"]) > 20


def test_unknown_model_is_404_listing_what_is_served(gw):
    with pytest.raises(openai.NotFoundError) as info:
        client(gw).chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    assert "quick" in info.value.body["message"] and "voter" in info.value.body["message"]


def test_bad_header_budget_and_non_text_content_are_400(gw):
    r = httpx.post(gw.v1 + "/chat/completions", headers={"X-Testtime-Budget": "tokens="},
                   json={"model": "quick", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and "Budget" in r.json()["error"]["message"]
    r = httpx.post(gw.v1 + "/chat/completions", json={"model": "quick", "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]})
    assert r.status_code == 400 and "image_url" in r.json()["error"]["message"]
    r = httpx.post(gw.v1 + "/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400


def test_models_lists_aliases_then_base_and_health_answers(gw):
    ids = [m.id for m in client(gw).models.list()]
    assert ids == ["quick", "voter", "openai:loopback"]
    assert httpx.get(gw.url + "/health").json()["status"] == "ok"


def test_metrics_count_requests_tokens_and_latency_in_prometheus_text(gw):
    client(gw).chat.completions.create(model="quick", messages=[{"role": "user", "content": "2+2?"}])
    text = httpx.get(gw.url + "/metrics").text
    assert '# TYPE testtime_request_seconds histogram' in text
    assert 'testtime_requests_total{model="quick",strategy="single",status="200"}' in text
    assert 'testtime_tokens_total{model="quick",strategy="single",kind="output"}' in text
    assert "testtime_in_flight 0" in text


def test_scripted_backend_serves_and_tools_on_it_are_400():
    with gateway(model="scripted:The answer is 7.") as g:
        c = client(g)
        r = c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "3+4?"}],
                                      extra_body={"testtime": {"options": {"n": 3}}})
        assert r.choices[0].message.content == "The answer is 7."
        assert r.model_extra["testtime"]["answer"] == "7" and r.usage.total_tokens > 0
        with pytest.raises(openai.BadRequestError) as info:
            c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "weather?"}],
                                      tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
        assert "tools" in info.value.body["message"] and "openai:" in info.value.body["message"]
