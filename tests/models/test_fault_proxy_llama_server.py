"""A fault-injecting proxy in front of a real llama_cpp.server: runs survive, and the ledger matches the proxy.

20 runs of ``testtime run`` (in-process, ``--json``) go through a
:class:`~testtime.testing.faultproxy.FaultProxy` that answers some requests
itself with 429 (+ ``Retry-After``) or 500, cuts some replies mid-body and
delays others. Every run in which at least one call got through must exit 0
with an answer, and the tokens in its ledger must equal what the proxy
relayed: exactly the usage of the replies relayed in full when nothing was
cut. A cut reply was billed upstream but never reached the client, which
charges what it cannot rule out: the output tokens it received (none, for a
cut JSON body) and the prompt's upper bound -- at least the prompt the
upstream billed, at most the byte bound of a fresh model (the bound is exact
once the same prompt was answered before).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from testtime.cli import main
from testtime.models import retry
from testtime.models.base import GenerationRequest
from testtime.models.registry import load_model
from testtime.testing.faultproxy import FaultProxy
from testtime.testing.loopback import FaultSchedule

pytestmark = pytest.mark.slow

RUNS = 20
QUESTION = "How many legs does a cat have? Answer with a digit."


@pytest.fixture
def short_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Retry waits really happen (the proxy's Retry-After is honoured) but backoff is capped at 50 ms."""
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(min(seconds, 0.05))

    monkeypatch.setattr(retry, "_sleep", sleep)
    return waits


def test_faulty_proxy_runs_exit_0_with_answer_and_ledger_equals_forwarded(
        llama_server: str, short_waits: list[float], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    outcomes: list[dict[str, Any]] = []
    fresh = load_model("openai:smollm2", base_url=llama_server)  # the reservation bound before any reply

    def byte_bound(body: dict[str, Any]) -> int:
        return fresh.input_upper_bound(GenerationRequest(messages=tuple(body["messages"])))

    with FaultProxy(llama_server) as proxy:
        for run in range(RUNS):
            proxy.faults = FaultSchedule(p429=0.3, p500=0.2, pcut=0.1, pslow=0.1, seed=run,
                                         retry_after=0.02, slow=0.05)
            proxy.reset_counts()
            rc = main(["run", QUESTION, "--model", "openai:smollm2", "--base-url", proxy.base_url,
                       "--strategy", "self_consistency", "--n", "3", "--max-tokens", "8",
                       "--temperature", "0", "--seed", str(run), "--budget", "tokens=20000", "--json"])
            out, err = capsys.readouterr()
            fwd = proxy.forwarded
            outcomes.append({"run": run, "rc": rc, "err": err.strip()[-300:], "forwarded": fwd,
                             "result": json.loads(out) if out.strip() else None})
    assert sum(o["forwarded"].ok > 0 for o in outcomes) >= RUNS // 2, "the fault mix let too few calls through"
    assert sum(bool(o["forwarded"].faults) for o in outcomes) >= RUNS // 2, "too few faults were injected"
    assert sum(o["forwarded"].ok > 0 and not o["forwarded"].cuts for o in outcomes) >= RUNS // 4
    assert any(o["forwarded"].cuts for o in outcomes), "no reply was cut"
    assert 0.02 in short_waits, "the proxy's Retry-After was not honoured"
    for o in outcomes:
        fwd, res = o["forwarded"], o["result"]
        if fwd.ok == 0:
            assert o["rc"] == 1, o
            continue
        assert o["rc"] == 0, o
        assert res is not None and res["text"], o
        assert res["answer"] is not None, o
        usage = res["usage"]
        assert all(not c.stream for c in fwd.cuts)  # llama-cpp-python replies are plain JSON here
        # Output: exactly what was relayed (a cut body delivered no tokens).
        assert usage["output_tokens"] == fwd.completion_tokens, o
        if not fwd.cuts:
            assert usage["input_tokens"] == fwd.prompt_tokens, o
        else:
            # Each cut request's prompt was billed upstream: charged at its bound.
            billed = sum(c.upstream_usage["prompt_tokens"] for c in fwd.cuts if c.upstream_usage)
            bound = sum(byte_bound(c.body) for c in fwd.cuts)
            assert fwd.prompt_tokens + billed <= usage["input_tokens"] <= fwd.prompt_tokens + bound, o
        # Every request that reached the upstream is a call; no call is counted that was not sent.
        assert fwd.ok + len(fwd.cuts) <= usage["calls"] <= fwd.requests, o
