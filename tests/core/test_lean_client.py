"""The lean client path: SDKs imported only when used, one HTTP client per model, real HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import testtime
from testtime.budget import Budget, BudgetLedger
from testtime.context import RunContext
from testtime.errors import CallFailed
from testtime.models.base import GenerationRequest
from testtime.models.registry import load_model
from testtime.testing.loopback import LoopbackOpenAIServer
from testtime.trace.events import Tracer

HEAVY = ("openai", "anthropic", "llama_cpp", "numpy", "httpx", "rich", "textual", "ray", "fastapi", "uvicorn",
         "datasets", "opentelemetry", "redis", "aiohttp", "pydantic", "jinja2")


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          env=env, check=False)


def test_importing_the_cli_imports_no_sdk_or_heavy_extra() -> None:
    out = _python("import sys, json, testtime.cli; print(json.dumps(sorted(sys.modules)))")
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout))
    assert [m for m in HEAVY if m in loaded] == []


def test_run_over_an_openai_compatible_server_never_imports_the_openai_sdk() -> None:
    code = (
        "import sys, json\n"
        "from testtime.cli import main\n"
        "rc = main(['run', 'What is 2+2?', '--model', 'openai:fake', '--base-url', sys.argv[1], '--n', '8', "
        "'--json'])\n"
        "print(json.dumps({'rc': rc, 'sdk': [m for m in ('openai', 'anthropic', 'aiohttp') if m in sys.modules]}))\n"
    )
    with LoopbackOpenAIServer(reply="The answer is 4.") as srv:
        out = _python(code, srv.base_url)
        served = srv.served
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    result, tail = json.loads("\n".join(lines[:-1])), json.loads(lines[-1])
    assert tail == {"rc": 0, "sdk": []}
    assert result["answer"] == "4" and len(result["candidates"]) == 8
    assert served.requests == 8 and result["usage"]["calls"] == 8


async def test_one_client_per_model_keeps_as_many_connections_alive_as_its_concurrency() -> None:
    with LoopbackOpenAIServer(reply="The answer is 4.", latency=0.05) as srv:
        # No startup probe: it is one more (sync) connection of its own.
        model = load_model("openai:fake", base_url=srv.base_url, max_concurrency=16, probe=False)
        ctx = RunContext(model=model, ledger=BudgetLedger(Budget(tokens=100_000)), tracer=Tracer(), max_tokens=8)
        try:
            results = [await testtime.arun("What is 2+2?", strategy="self_consistency", n=16, context=ctx)
                       for _ in range(3)]
            clients = list(model._clients)
        finally:
            await model.aclose()
        served, connections = srv.served.requests, srv.connections
    assert all(r.answer == "4" and len(r.candidates) == 16 for r in results)
    assert len(clients) == 1 and clients[0].max_connections == 16 and not clients[0].via_proxy
    # 48 streamed requests in three waves of 16 over the same 16 kept-alive connections.
    assert served == 48 and connections == 16


@pytest.mark.parametrize("status", ["429", "500"])
async def test_http_errors_from_the_lean_client_map_as_the_sdks_did(status: str) -> None:
    # Both are retried (429 after its Retry-After), then fail with their status; every attempt is a call.
    with LoopbackOpenAIServer(faults=lambda i, body: status, retry_after=0.01) as srv:
        model = load_model("openai:fake", base_url=srv.base_url)
        model.retry_policy = type(model.retry_policy)(max_retries=1, initial_wait=0.0, max_wait=0.0)
        ctx = RunContext(model=model, ledger=BudgetLedger(Budget(tokens=10_000)), tracer=Tracer())
        try:
            with pytest.raises(CallFailed) as info:
                await ctx.generate(GenerationRequest(prompt="hi", max_tokens=4))
        finally:
            await model.aclose()
        sent = srv.served.requests
    err = info.value.error
    assert err.status == int(status) and err.retryable and f"HTTP {status}" in str(err)
    if status == "429":
        assert err.retry_after == pytest.approx(0.01)
    assert sent == 2 and ctx.ledger.usage.calls == sent and ctx.stats["retries"] == 1
