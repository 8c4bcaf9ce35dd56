"""What outlives one request: model-backed verifiers/PRMs (built once, closed at shutdown) and the
metrics of every worker (summed through the shared store)."""

from __future__ import annotations

import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from tests.serve.gateway_support import gateway, gateway_process
from tests.serve.redis_support import redis_available, redis_server
from testtime.testing.loopback import LoopbackOpenAIServer


def _count_loads(monkeypatch: Any, prefix: str) -> tuple[list[Any], list[Any]]:
    """Record every model loaded with a spec starting ``prefix``, and every aclose() of one."""
    import testtime.models.registry as registry

    loaded: list[Any] = []
    closed: list[Any] = []
    real = registry.load_model

    def load_model(spec: Any, **kw: Any) -> Any:
        model = real(spec, **kw)
        if isinstance(spec, str) and spec.startswith(prefix):
            loaded.append(model)
            inner = model.aclose

            async def aclose() -> None:
                closed.append(model)
                await inner()

            model.aclose = aclose
        return model

    monkeypatch.setattr(registry, "load_model", load_model)
    return loaded, closed


def test_a_model_backed_verifier_is_built_once_for_many_requests_and_closed_on_shutdown(monkeypatch):
    loaded, closed = _count_loads(monkeypatch, "openai:judge")
    with LoopbackOpenAIServer(reply="The answer is 4.") as policy, \
            LoopbackOpenAIServer(reply="The steps check out. Yes", model="judge") as judge:
        cfg = {"models": {"judged": {"strategy": "best_of_n", "options": {"n": 2},
                                     "verifier": f"genrm:openai:judge?base_url={judge.base_url}"}}}
        with gateway(model="openai:loopback", base_url=policy.base_url, config=cfg) as g:
            c = openai.OpenAI(base_url=g.v1, api_key="unused", max_retries=0)

            def ask(i: int) -> Any:
                return c.chat.completions.create(model="judged", messages=[{"role": "user", "content": f"2+2? #{i}"}])

            with ThreadPoolExecutor(6) as pool:  # concurrent first uses must still build it once
                answers = list(pool.map(ask, range(6)))
            answers += [ask(6), ask(7)]
            assert all(a.model_extra["testtime"]["answer"] == "4" for a in answers)
            # Every request really used the judge (2 candidates each) ...
            assert judge.served.requests >= 2 * len(answers)
            # ... and the gateway built it, and loaded its model, exactly once.
            assert g.gw.judges.constructed == 1 and len(loaded) == 1
            assert closed == []
        assert closed == loaded  # the lifespan's shutdown closed the judge's model


def test_a_prm_with_per_run_state_is_still_built_for_each_request(monkeypatch):
    import testtime.verifiers.prm as prm_module

    built: list[Any] = []
    real = prm_module.ConfidencePRM

    class Counting(real):  # type: ignore[misc, valid-type]
        def __init__(self, **kw: Any) -> None:
            super().__init__(**kw)
            built.append(self)

    monkeypatch.setattr(prm_module, "ConfidencePRM", Counting)
    with gateway(model="scripted:Step one.\n\nThe answer is 4.") as g:
        c = openai.OpenAI(base_url=g.v1, api_key="unused", max_retries=0)
        for i in range(3):
            c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": f"q{i}"}],
                                      extra_body={"testtime": {"strategy": "best_of_n", "prm": "prm:confidence",
                                                               "options": {"n": 2}}})
        # prm:confidence remembers the logprobs of its run's samples: sharing it would mix runs.
        assert len(built) == 3 and len({id(p) for p in built}) == 3
        assert g.gw.judges.constructed == 0


# ------------------------------------------------------------------ metrics across workers
ASK = {"model": "scripted", "messages": [{"role": "user", "content": "2+2?"}], "testtime": {"strategy": "single"}}


def _requests_total(text: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("testtime_requests_total{"))


def test_metrics_with_two_workers_on_sqlite_count_every_request_whichever_worker_answers(tmp_path):
    db = tmp_path / "serve.db"
    k = 24
    args = ["--model", "scripted:The answer is 4.", "--workers", "2", "--store", f"sqlite:///{db}"]
    with gateway_process(args, tmp=tmp_path, timeout=120) as url:
        for _ in range(k):
            with httpx.Client(timeout=30) as c:  # a new connection each time: either worker may take it
                assert c.post(url + "/v1/chat/completions", json=ASK).status_code == 200
        # Each scrape is a new connection too; poll until both workers have answered one
        # and both report all k (the other worker's counts arrive within its flush interval).
        seen: dict[str, float] = {}
        text = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = httpx.get(url + "/metrics", timeout=10)
            text = r.text
            seen[r.headers["x-testtime-worker"]] = _requests_total(text)
            if len(seen) >= 2 and all(v == k for v in seen.values()):
                break
            time.sleep(0.05)
        assert len(seen) == 2, f"only worker(s) {sorted(seen)} answered a scrape"
        assert all(v == k for v in seen.values()), seen
        assert "testtime_workers 2" in text
        assert f'testtime_request_seconds_count{{model="scripted",strategy="single"}} {k}' in text
    # Shutdown published each worker's last counts: the rows add up, nothing left in flight.
    with sqlite3.connect(db) as conn:
        rows = [json.loads(b) for (b,) in conn.execute("SELECT body FROM metrics_workers")]
    assert len(rows) == 2
    assert sum(v for row in rows for _, v in row["requests"]) == k
    assert all(row["in_flight"] == 0 for row in rows)


@pytest.mark.skipif(redis_available() is not None, reason=str(redis_available()))
def test_metrics_of_two_gateways_sharing_a_redis_store_are_summed_and_memory_stays_per_process():
    with redis_server() as store, \
            gateway(model="scripted:The answer is 4.", store=store) as a, \
            gateway(model="scripted:The answer is 4.", store=store) as b:
        for _ in range(3):
            assert httpx.post(a.v1 + "/chat/completions", json=ASK, timeout=30).status_code == 200
        assert httpx.post(b.v1 + "/chat/completions", json=ASK, timeout=30).status_code == 200
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            totals = [_requests_total(httpx.get(g.url + "/metrics").text) for g in (a, b)]
            if totals == [4, 4]:
                break
            time.sleep(0.1)
        assert totals == [4, 4]
    with gateway(model="scripted:The answer is 4.") as c, gateway(model="scripted:The answer is 4.") as d:
        assert httpx.post(c.v1 + "/chat/completions", json=ASK, timeout=30).status_code == 200
        time.sleep(1.5)  # longer than a flush interval: nothing is shared all the same
        texts = [httpx.get(g.url + "/metrics").text for g in (c, d)]
        assert [_requests_total(t) for t in texts] == [1, 0]
        assert "testtime_workers" not in texts[0]
