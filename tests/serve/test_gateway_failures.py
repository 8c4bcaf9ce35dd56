"""Failures around a request: a store outage, a dead upstream, a trace that cannot be written, bad store URLs."""

from __future__ import annotations

import httpx
import pytest

import testtime.serve.app as app_module
from tests.serve.gateway_support import ToolLoopback, gateway, key_entry, new_key
from testtime.errors import UserError
from testtime.serve.ledgers import open_store
from testtime.serve.ledgers.base import LedgerUnavailable
from testtime.testing.loopback import LoopbackOpenAIServer

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather in a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]
MSGS = [{"role": "user", "content": "Weather in Paris?"}]


def _post(g, key: str, body: dict) -> httpx.Response:
    return httpx.post(g.v1 + "/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                      json={"model": "loopback", **body})


def test_a_store_outage_at_grant_is_503_with_retry_after_and_counted_as_503():
    key = new_key()
    cfg = {"keys": [key_entry("k", key, total="tokens=100k")]}
    with LoopbackOpenAIServer() as up, gateway(model="openai:loopback", base_url=up.base_url, config=cfg) as g:
        def down(*a, **kw):
            raise LedgerUnavailable("the ledger store at memory:// failed: down for the test")

        g.gw.store.grant = down
        r = _post(g, key, {"messages": MSGS, "testtime": {"strategy": "single"}})
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
        assert r.headers["retry-after"] == "1"
        assert up.served.requests == 0
        assert 'status="503"' in httpx.get(g.url + "/metrics").text


def test_passthrough_to_a_dead_upstream_is_502_and_releases_the_hold():
    key = new_key()
    cfg = {"keys": [key_entry("k", key, total="tokens=100k")]}
    with ToolLoopback() as up, gateway(model="openai:loopback", base_url=up.base_url, config=cfg) as g:
        up.close()  # gone after the gateway started: connections are refused
        r = _post(g, key, {"messages": MSGS, "tools": TOOLS})
        assert r.status_code == 502 and r.json()["error"]["type"] == "upstream_error"
        assert not any(g.gw.store.held(g.gw.keys.lookup(key).scope).values())


def test_passthrough_whose_trace_cannot_be_opened_releases_the_hold(tmp_path, monkeypatch):
    import testtime.trace.jsonl as jsonl

    def broken(path, **kw):
        raise UserError(f"cannot write trace file {path}: broken for the test")

    monkeypatch.setattr(jsonl, "JsonlWriter", broken)
    key = new_key()
    cfg = {"keys": [key_entry("k", key, total="tokens=100k")]}
    with ToolLoopback() as up, gateway(model="openai:loopback", base_url=up.base_url, config=cfg,
                                       trace_dir=str(tmp_path)) as g:
        r = _post(g, key, {"messages": MSGS, "tools": TOOLS})
        assert r.status_code != 200 and "error" in r.json()
        assert up.served.requests == 0
        assert not any(g.gw.store.held(g.gw.keys.lookup(key).scope).values())


def test_running_contexts_are_per_gateway_and_dropped_after_the_request():
    assert not hasattr(app_module, "holder")  # no process-wide table shared by every app
    with LoopbackOpenAIServer() as up, gateway(model="openai:loopback", base_url=up.base_url) as g:
        r = _post(g, "unused", {"messages": MSGS, "testtime": {"strategy": "single"}})
        assert r.status_code == 200
        assert g.gw.running == {}


@pytest.mark.parametrize("url", ["redis+x://:s3cret-pw@127.0.0.1/0", "memory://u:s3cret-pw@x",
                                 "u:s3cret-pw@127.0.0.1:6379"])
def test_bad_store_urls_never_echo_a_password(url):
    with pytest.raises(UserError) as err:
        open_store(url)
    assert "s3cret-pw" not in str(err.value) and "bad ledger store URL" in str(err.value)
