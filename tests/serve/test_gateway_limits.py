"""Shared limits through the gateway: per key and global, refusals (429) and degrading, one process
and `testtime serve --workers 4` sharing a SQLite (and a Redis) store, counted on the upstream."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx
import pytest

from tests.serve.gateway_support import ROOT, gateway, gateway_process, key_entry, new_key
from tests.serve.redis_support import redis_available, redis_server
from testtime.serve.keys import hash_key
from testtime.testing.loopback import LoopbackOpenAIServer

ASK = {"model": "loopback", "max_tokens": 50, "messages": [{"role": "user", "content": "What is 2+2?"}],
       "testtime": {"strategy": "self_consistency", "budget": "tokens=600", "options": {"n": 2}}}


_HTTP = httpx.Client(timeout=60)  # one pool: a new client per call costs more than the call


def _post(url: str, key: str, body: dict = ASK) -> httpx.Response:
    return _HTTP.post(url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})


def test_key_limit_refuses_with_429_naming_the_limit_and_never_passes_it():
    key, other = new_key(), new_key()
    cfg = {"keys": [key_entry("small", key, total="tokens=800"), key_entry("big", other, total="tokens=1M")]}
    with LoopbackOpenAIServer(reply="The answer is 4.") as up, \
            gateway(model="openai:loopback", base_url=up.base_url, config=cfg) as g:
        codes = []
        for _ in range(100):
            r = _post(g.url, key)
            codes.append(r.status_code)
            if r.status_code == 429:
                break
        assert codes[0] == 200 and codes[-1] == 429
        err = r.json()["error"]
        kid = g.gw.keys.lookup(key).key_id
        assert err["limit"]["scope"] == f"key:{kid}" and err["limit"]["dimension"] == "tokens"
        assert err["limit"]["period"] == "total" and "tokens" in err["message"]
        assert r.headers["x-should-retry"] == "false"
        assert key not in r.text
        spent = g.gw.store.spent(f"key:{kid}")["tokens"]
        assert spent == up.served.tokens <= 800
        # Another key is not affected by this one's exhaustion.
        assert _post(g.url, other).status_code == 200
        assert 'testtime_refusals_total{reason="limit",scope="key",dimension="tokens"} 1' in \
            httpx.get(g.url + "/metrics").text


def test_a_request_that_does_not_fit_whole_degrades_to_what_is_left():
    key = new_key()
    cfg = {"keys": [key_entry("k", key, total="tokens=1000")]}
    with LoopbackOpenAIServer(reply="The answer is 4.") as up, \
            gateway(model="openai:loopback", base_url=up.base_url, config=cfg) as g:
        body = {**ASK, "testtime": {"strategy": "self_consistency", "budget": "tokens=5000"}}
        r = _post(g.url, key, body)
        assert r.status_code == 200
        tt = r.json()["testtime"]
        assert tt["degraded"] is True and tt["budget"]["tokens"] == 1000 and tt["limited_by"]
        assert tt["answer"] == "4" and up.served.tokens <= 1000


def test_global_limit_applies_across_keys():
    a, b = new_key(), new_key()
    cfg = {"keys": [key_entry("a", a), key_entry("b", b)], "limits": {"total": "tokens=1500"}}
    with LoopbackOpenAIServer(reply="The answer is 4.") as up, \
            gateway(model="openai:loopback", base_url=up.base_url, config=cfg) as g:
        codes = []
        for k in (a, b) * 20:
            r = _post(g.url, k)
            codes.append(r.status_code)
            if r.status_code == 429:
                break
        assert codes[0] == 200 and codes[1] == 200 and codes[-1] == 429
        assert r.json()["error"]["limit"]["scope"] == "global"
        assert up.served.tokens <= 1500


async def _storm(url: str, key: str, count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=count)) as c:
        return await asyncio.gather(*(c.post(url + "/v1/chat/completions", json=ASK,
                                             headers={"Authorization": f"Bearer {key}"}) for _ in range(count)))


def _workers_storm(tmp_path, store: str) -> None:
    limit = 12000
    key = new_key()
    cfg = {"keys": [key_entry("storm", key, total=f"tokens={limit}")]}
    with LoopbackOpenAIServer(reply="The answer is 4.", latency=0.02) as up, \
            gateway_process(["--model", "openai:loopback", "--base-url", up.base_url, "--workers", "4",
                             "--store", store], config=cfg, tmp=tmp_path, timeout=120) as url:
        responses = asyncio.run(_storm(url, key, 200))
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 429}, sorted(set(codes))
        ok = [r for r in responses if r.status_code == 200]
        refused = [r for r in responses if r.status_code == 429]
        assert ok and refused
        assert all(r.json()["error"]["limit"]["scope"].startswith("key:") for r in refused)
        served = up.served
        assert served.tokens <= limit  # counted by the upstream itself
        assert sum(r.json()["usage"]["total_tokens"] for r in ok) == served.tokens


def test_200_concurrent_requests_four_workers_sqlite_never_pass_the_key_limit(tmp_path):
    _workers_storm(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}")


@pytest.mark.skipif(redis_available() is not None, reason=str(redis_available()))
def test_200_concurrent_requests_four_workers_redis_never_pass_the_key_limit(tmp_path):
    with redis_server() as url:
        _workers_storm(tmp_path, url)


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "testtime.cli", "serve", *args], capture_output=True, text=True,
                          cwd=ROOT, input=stdin, timeout=60)


def test_cli_workers_need_a_shared_store_and_bad_config_names_file_and_line(tmp_path):
    r = _cli("--model", "scripted", "--workers", "2")
    assert r.returncode == 2 and "sqlite" in r.stderr and "memory" in r.stderr
    bad = tmp_path / "serve.yaml"
    bad.write_text("defaults:\n  strategy: self_consistency\nmodels:\n  best:\n    strategy: mctss\n")
    r = _cli("--config", str(bad))
    assert r.returncode == 2 and f"{bad}:5" in r.stderr and "mcts" in r.stderr


def test_cli_hash_key_from_argument_and_stdin():
    key = new_key()
    by_arg = _cli("hash-key", key)
    assert by_arg.stdout.strip() == hash_key(key)
    assert "hash-key < keyfile" in by_arg.stderr  # told to pipe it in next time
    by_stdin = _cli("hash-key", stdin=key + "\n")
    assert by_stdin.stdout.strip() == hash_key(key) and by_stdin.stderr == ""
    assert _cli("hash-key", stdin="").returncode == 2
    assert "stdin" in _cli("--help").stdout


def test_cli_errors_never_echo_a_key_typed_in_the_wrong_place():
    key = new_key()
    for args in ([key], ["hash-key", key, key], ["--port", key], ["--model", "scripted", key]):
        r = _cli(*args)
        assert r.returncode == 2 and r.stderr.startswith("testtime: error:"), (args, r.stderr)
        assert key not in r.stderr + r.stdout and key[8:] not in r.stderr + r.stdout
    assert "hash-key" in _cli(key).stderr  # still says what to do
    # Ordinary mistakes are still echoed: only key-shaped values are hidden.
    assert "'loud'" in _cli("--log-level", "loud").stderr
    assert "'8k'" in _cli("--port", "8k").stderr


def test_admission_wait_lets_a_burst_use_what_requests_in_flight_return_without_passing_the_limit():
    async def burst(url: str, key: str) -> list[int]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=60)) as c:
            rs = await asyncio.gather(*(c.post(url + "/v1/chat/completions", json=ASK,
                                               headers={"Authorization": f"Bearer {key}"}) for _ in range(60)))
        return [r.status_code for r in rs]

    admitted = {}
    for wait in (0.0, 20.0):
        key = new_key()
        cfg = {"keys": [key_entry("k", key, total="tokens=3000")], "admission_wait_s": wait}
        with LoopbackOpenAIServer(reply="The answer is 4.", latency=0.05) as up, \
                gateway(model="openai:loopback", base_url=up.base_url, config=cfg) as g:
            codes = asyncio.run(burst(g.url, key))
            assert set(codes) <= {200, 429} and up.served.tokens <= 3000
            admitted[wait] = codes.count(200)
    # Without waiting only what the holds allow at once gets in (3000 / 600 = 5); waiting, the
    # requests use what the first ones returned (each spends ~100 of its 600).
    assert admitted[0.0] <= 6 < 2 * admitted[0.0] < admitted[20.0]
