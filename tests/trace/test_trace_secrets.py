"""No API key or Authorization header ever reaches a trace file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.loopback import Reply
from tests.support.openai_server import completion, error, openai_server
from testtime.errors import ModelAPIError
from testtime.models.scripted import FunctionModel
from testtime.orchestrator import Workflow, load_task

KEY = "sk-test-abcdefghijklmnop0123456789"


async def test_function_model_errors_with_keys_are_redacted(tmp_path: Path):
    def boom(request):
        raise ModelAPIError(f"401 invalid api key {KEY}; sent Authorization: Bearer {KEY}", status=401)

    wf = Workflow("s", model=FunctionModel(boom), budget="tokens=1000")
    wf.stage("a", "q")
    trace = tmp_path / "t.jsonl"
    with pytest.raises(ModelAPIError):
        await wf.arun(trace=trace)
    text = trace.read_text()
    assert "\"kind\": \"error\"" in text  # the failure was traced ...
    assert KEY not in text and "sk-test-abc" not in text  # ... without the key


async def test_openai_backend_over_loopback_keeps_keys_out_of_traces(tmp_path: Path):
    with openai_server() as server:
        # Stage 1 succeeds; stage 2's server error echoes the key and the auth header back.
        server.push("/v1/chat/completions", Reply(body=completion(["The answer is 4."])))
        server.push("/v1/chat/completions",
                    error(401, f"Incorrect API key provided: {KEY}. Header was 'Authorization: Bearer {KEY}'"))
        task = tmp_path / "mixed.yaml"
        task.write_text(f"""
name: mixed
budget: tokens=4000
models:
  local: "scripted:The answer is 4."
  api: {{spec: "openai:fake", base_url: "{server.url}/v1", options: {{api_key: "{KEY}", max_retries: 0}}}}
stages:
  - {{name: solve, prompt: "2+2?", model: api}}
  - {{name: check, prompt: "Check {{stages.solve.answer}}", model: api}}
""")
        wf = load_task(task)
        trace = tmp_path / "t.jsonl"
        # Stage 1's call succeeded, so the run is anytime: it ends with the
        # error counted instead of raising it.
        result = await wf.arun(trace=trace, checkpoint=tmp_path / "ck.sqlite")
        assert result.usage["errors"] == 1 and result.stopped_reason == "errors"
        sent = [r.headers.get("Authorization") or r.headers.get("authorization") for r in server.requests]
    assert any(h and KEY in h for h in sent)  # the key really was in play
    text = trace.read_text()
    events = [json.loads(line) for line in text.splitlines()]
    assert any(e["kind"] == "stage_end" and e["stage"] == "solve" for e in events)
    assert any(e["kind"] == "error" for e in events)
    assert KEY not in text and "Bearer sk-" not in text
