"""Per-request behaviour over real HTTP: tools pass through, auth, traces, disconnects, isolation."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tests.serve.gateway_support import ROOT, ToolLoopback, gateway, key_entry, new_key
from testtime.testing.loopback import LoopbackOpenAIServer

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather in a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]


def test_tools_pass_through_as_one_upstream_call_with_tool_calls_as_given():
    with ToolLoopback() as up, gateway(model="openai:loopback", base_url=up.base_url) as g:
        c = openai.OpenAI(base_url=g.v1, api_key="unused", max_retries=0)
        msgs = [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "Weather in Paris?"}]
        raw = c.chat.completions.with_raw_response.create(model="loopback", messages=msgs, tools=TOOLS,
                                                          tool_choice="auto")
        r = raw.parse()
        assert up.served.requests == 1
        sent = up.requests[0]
        assert sent["tools"] == TOOLS and sent["tool_choice"] == "auto" and sent["messages"] == msgs
        call = r.choices[0].message.tool_calls[0]
        assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
        assert r.choices[0].finish_reason == "tool_calls"
        assert r.model_extra["testtime"]["passthrough"] is True
        assert r.usage.total_tokens == up.served.tokens
        assert int(raw.headers["x-testtime-spent-tokens"]) == up.served.tokens
        # The tool result turn goes back the same way, streamed this time.
        follow = [*msgs, {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                  {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
        stream = c.chat.completions.create(model="loopback", messages=follow, tools=TOOLS, stream=True)
        calls = [tc for ch in stream if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
        assert calls and calls[0].function.name == "get_weather"
        assert up.requests[1]["messages"][-1] == {"role": "tool", "tool_call_id": call.id, "content": "sunny"}


def test_keys_missing_unknown_401_known_200_and_never_in_metrics_or_traces(tmp_path):
    key = new_key()
    cfg = {"keys": [key_entry("alice", key, total="tokens=1M")]}
    with LoopbackOpenAIServer(reply="The answer is 4.") as up, \
            gateway(model="openai:loopback", base_url=up.base_url, config=cfg, trace_dir=str(tmp_path)) as g:
        body = {"model": "loopback", "messages": [{"role": "user", "content": "2+2?"}]}
        r = httpx.post(g.v1 + "/chat/completions", json=body)
        assert r.status_code == 401 and "missing" in r.json()["error"]["message"]
        wrong = new_key()
        r = httpx.post(g.v1 + "/chat/completions", json=body, headers={"Authorization": f"Bearer {wrong}"})
        assert r.status_code == 401 and wrong not in r.text
        assert up.served.requests == 0
        ok = openai.OpenAI(base_url=g.v1, api_key=key, max_retries=0).chat.completions.create(**body)
        assert ok.model_extra["testtime"]["answer"] == "4"
        metrics = httpx.get(g.url + "/metrics").text
        assert 'testtime_refusals_total{reason="auth"} 2' in metrics
        dumped = metrics + "".join(p.read_text() for p in tmp_path.glob("*.jsonl"))
        assert key not in dumped and wrong not in dumped
        assert g.gw.store.spent(f"key:{g.gw.keys.lookup(key).key_id}")["tokens"] == ok.usage.total_tokens


def test_trace_dir_writes_one_jsonl_per_request_that_trace_show_reads(tmp_path):
    with gateway(model="scripted:The answer is 5.", trace_dir=str(tmp_path)) as g:
        c = openai.OpenAI(base_url=g.v1, api_key="unused", max_retries=0)
        ids = [c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": f"q{i}"}],
                                         extra_body={"testtime": {"options": {"n": 2}}}
                                         ).model_extra["testtime"]["trace_id"] for i in range(3)]
    files = sorted(p.stem for p in tmp_path.glob("*.jsonl"))
    assert files == sorted(ids)
    events = [json.loads(line) for line in (tmp_path / f"{ids[0]}.jsonl").read_text().splitlines()]
    assert events[0]["kind"] == "run_start" and events[-1]["kind"] == "run_end"
    assert sum(e["kind"] == "model_call" for e in events) == 2
    shown = subprocess.run([sys.executable, "-m", "testtime.cli", "trace", "show", str(tmp_path / f"{ids[0]}.jsonl")],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert shown.returncode == 0 and "self_consistency" in shown.stdout


def _sequential_upstream() -> LoopbackOpenAIServer:
    # Each call takes 0.25 s; with max_tokens 9000 and tokens=30000 about three calls fit at once, so
    # the 60 samples a search draws take some 20 waves (5 s): a disconnect lands mid-search.
    return LoopbackOpenAIServer(reply="Thinking. The answer is 4.", latency=0.25)


SLOW_SEARCH = {"model": "loopback", "max_tokens": 9000,
               "messages": [{"role": "user", "content": "What is 2+2?"}],
               "testtime": {"strategy": "self_consistency", "budget": "tokens=30000",
                            "options": {"batch": 1, "max_n": 60}}}


def _quiet_after(up: LoopbackOpenAIServer, g) -> tuple[int, int]:
    """Upstream request counts shortly after a disconnect and 1.5 s later (must be equal)."""
    deadline = time.monotonic() + 5
    while g.gw.metrics.in_flight and time.monotonic() < deadline:
        time.sleep(0.02)
    first = up.served.requests
    time.sleep(1.5)
    return first, up.served.requests


@pytest.mark.parametrize("stream", [False, True])
def test_client_disconnect_mid_search_stops_upstream_requests_and_releases_holds(stream):
    key = new_key()
    cfg = {"keys": [key_entry("k", key, total="tokens=1M")]}
    with _sequential_upstream() as up, gateway(model="openai:loopback", base_url=up.base_url, config=cfg) as g:
        headers = {"Authorization": f"Bearer {key}"}
        body = {**SLOW_SEARCH, "stream": stream}
        if stream:
            with httpx.Client(timeout=30) as h, \
                    h.stream("POST", g.v1 + "/chat/completions", json=body, headers=headers) as resp:
                lines = resp.iter_lines()
                assert next(lines).startswith("data: ")  # the role chunk comes at once
                while not next(lines).startswith(": testtime"):  # progress: the search is under way
                    pass
        else:
            # A raw socket, closed once the upstream has seen the search start.
            payload = json.dumps(body).encode()
            sock = socket.create_connection(("127.0.0.1", int(g.url.rsplit(":", 1)[1])))
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         + f"Authorization: Bearer {key}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
                         + payload)
            deadline = time.monotonic() + 20
            while up.served.ok < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            sock.close()
        before, after = _quiet_after(up, g)
        assert 1 <= before == after
        assert before < 60  # the search was cut short, not run to its end (max_n=60)
        scope = g.gw.keys.lookup(key).scope
        assert g.gw.store.held(scope) == {d: 0.0 for d in g.gw.store.held(scope)}
        spent = g.gw.store.spent(scope)["tokens"]
        assert spent > 0  # what the cancelled calls may have cost was settled, not dropped
        assert 'status="499"' in httpx.get(g.url + "/metrics").text


def test_fifty_concurrent_requests_each_reflect_their_own_strategy_budget_and_usage():
    strategies = ["single", "self_consistency", "best_of_n", "best_of_majority"]
    seen: dict[int, list[tuple[float, int]]] = {}

    def reply(body):
        # The upstream answers with a marker of the request, so answers cannot cross, and records
        # the sampling settings each request's calls arrived with.
        i = int(body["messages"][-1]["content"].split()[-1])
        seen.setdefault(i, []).append((body["temperature"], body["max_tokens"]))
        return f"Working on request {i}. The answer is {i}."

    async def one(c, i):
        strategy = strategies[i % len(strategies)]
        budget = 400 + 37 * i
        r = await c.chat.completions.create(
            model="loopback", messages=[{"role": "user", "content": f"request number {i}"}],
            max_tokens=40 + i, temperature=round(0.02 * i, 2),
            extra_body={"testtime": {"strategy": strategy, "budget": f"tokens={budget}"}})
        return i, strategy, budget, r

    async def go(url):
        c = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0,
                               http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=60), timeout=120))
        out = await asyncio.gather(*(one(c, i) for i in range(50)))
        await c.close()
        return out

    with LoopbackOpenAIServer(reply=reply) as up, gateway(model="openai:loopback", base_url=up.base_url) as g:
        results = asyncio.run(go(g.v1))
        total = 0
        for i, strategy, budget, r in results:
            tt = r.model_extra["testtime"]
            assert tt["strategy"] == strategy and tt["budget"] == {"tokens": budget}
            assert tt["answer"] == str(i) and r.choices[0].message.content.endswith(f"is {i}.")
            assert 0 < r.usage.total_tokens <= budget
            assert tt["usage"]["tokens"] == r.usage.total_tokens
            # Its own settings on every call (a last sample may be shortened to fit what budget is left).
            assert {t for t, _ in seen[i]} == {round(0.02 * i, 2)}
            assert max(m for _, m in seen[i]) == 40 + i
            assert len(seen[i]) == tt["usage"]["calls"]
            total += r.usage.total_tokens
        assert total == up.served.tokens  # the sum of what each response says is what the upstream served


def test_failing_upstream_is_502_and_releases_the_hold():
    key = new_key()
    cfg = {"keys": [key_entry("k", key, total="tokens=100k")]}
    with LoopbackOpenAIServer(faults=lambda i, body: "500") as up, \
            gateway(model="openai:loopback", base_url=up.base_url, config=cfg) as g:
        r = httpx.post(g.v1 + "/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                       json={"model": "loopback", "messages": [{"role": "user", "content": "2+2?"}],
                             "testtime": {"strategy": "single"}})
        assert r.status_code == 502 and r.json()["error"]["type"] == "upstream_error"
        assert up.served.requests >= 1
        scope = g.gw.keys.lookup(key).scope
        assert not any(g.gw.store.held(scope).values())


def test_upstream_that_over_reports_usage_overdraws_the_key_and_later_requests_are_refused():
    key = new_key()
    cfg = {"keys": [key_entry("k", key, total="tokens=100k")]}
    # Reports 600x the completion tokens it generated: more than the call reserved, and more than the
    # whole request was granted, so the key's shared ledger is overdrawn too.
    with LoopbackOpenAIServer(reply="The answer is 4.", usage_scale=600) as up, \
            gateway(model="openai:loopback", base_url=up.base_url, config=cfg) as g:
        body = {"model": "loopback", "max_tokens": 20, "messages": [{"role": "user", "content": "2+2?"}],
                "testtime": {"strategy": "single", "budget": "tokens=2000"}}
        headers = {"Authorization": f"Bearer {key}"}
        first = httpx.post(g.v1 + "/chat/completions", json=body, headers=headers, timeout=60)
        assert first.status_code == 200
        assert first.json()["testtime"]["stopped_reason"] == "budget_overdrawn"
        assert first.json()["usage"]["completion_tokens"] == up.served.completion_tokens > 2000  # as reported
        scope = g.gw.keys.lookup(key).scope
        assert g.gw.store.spent(scope)["tokens"] == up.served.tokens  # recorded in full: the spend happened
        again = httpx.post(g.v1 + "/chat/completions", json=body, headers=headers, timeout=60)
        assert again.status_code == 429 and again.json()["error"]["limit"]["overdrawn"] is True
        assert up.served.requests == 1
