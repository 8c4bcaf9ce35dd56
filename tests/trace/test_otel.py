"""OpenTelemetry export: real OTLP/HTTP exporter -> a protobuf-decoding receiver on 127.0.0.1."""

from __future__ import annotations

import json
import secrets
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.trace.otlp_receiver import OTLPReceiver
from tests.trace.sim_traces import sim_trace
from testtime.cli import main
from testtime.orchestrator import Workflow
from testtime.trace.events import _DEFAULT_SINKS, Tracer
from testtime.trace.jsonl import read_events
from testtime.trace.otel import OtelSink, plan_spans

RUN = ["run", "What is 17+25?", "--model", "sim", "--strategy", "beam", "--prm", "sim:calibrated",
       "--budget", "tokens=3000", "--seed", "2", "--json"]


def _tree(spans):
    by_id = {s["span_id"]: s for s in spans}
    roots = [s for s in spans if s["parent"] is None]
    return by_id, roots


def _ancestors(span, by_id):
    out = []
    while span["parent"] is not None:
        span = by_id[span["parent"]]
        out.append(span["name"].split()[0])
    return out


def test_run_with_otel_exports_one_span_tree_whose_numbers_equal_the_usage(tmp_path: Path, monkeypatch, capsys):
    key = "tt-test-" + secrets.token_hex(12)
    monkeypatch.setenv("OPENAI_API_KEY", key)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"authorization=Bearer {key}")
    with OTLPReceiver() as rx:
        assert main([*RUN, "--otel-endpoint", rx.url, "--trace", str(tmp_path / "t.jsonl")]) == 0
    result = json.loads(capsys.readouterr().out)
    usage = result["usage"]
    assert len(rx.bodies) == 1  # one request per run
    by_id, roots = _tree(rx.spans)
    assert len(roots) == 1 and len({s["trace_id"] for s in rx.spans}) == 1
    root = roots[0]["attributes"]
    assert roots[0]["name"] == "invoke_agent beam"
    assert root["gen_ai.operation.name"] == "invoke_agent"
    assert root["testtime.strategy"] == "beam"
    assert root["testtime.budget.tokens"] == 3000
    assert root["testtime.stopped_reason"] == result["stopped_reason"]
    assert root["gen_ai.usage.input_tokens"] == usage["input_tokens"]
    assert root["gen_ai.usage.output_tokens"] == usage["output_tokens"]
    assert root["testtime.usage.calls"] == usage["calls"]
    assert root["testtime.usage.usd"] == pytest.approx(usage["usd"])
    chats = [s for s in rx.spans if s["name"].startswith("chat ")]
    assert len(chats) == usage["calls"]
    assert sum(s["attributes"]["gen_ai.usage.input_tokens"] for s in chats) == usage["input_tokens"]
    assert sum(s["attributes"]["gen_ai.usage.output_tokens"] for s in chats) == usage["output_tokens"]
    roles = Counter(s["attributes"]["testtime.role"] for s in chats)
    assert roles == {r: u["calls"] for r, u in usage["by_role"].items()}
    for s in chats:
        a = s["attributes"]
        assert a["gen_ai.system"] == "sim" and a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.request.model"] in ("default", "prm-calibrated")
        assert _ancestors(s, by_id)[-1] == "invoke_agent" and "strategy" in _ancestors(s, by_id)
        assert roots[0]["start"] <= s["start"] <= s["end"] <= roots[0]["end"]
    rounds = [s for s in rx.spans if s["name"].startswith("round ")]
    assert len(rounds) == result["stats"]["rounds"]
    assert all(by_id[s["parent"]]["name"] == "strategy beam" for s in rounds)
    assert any(_ancestors(s, by_id)[0] == "round" for s in chats)
    # The key went to the collector as a header, and nowhere into the spans.
    assert rx.headers[0].get("authorization") == f"Bearer {key}"
    assert key.encode() not in rx.bodies[0]
    assert key not in (tmp_path / "t.jsonl").read_text()
    assert not _DEFAULT_SINKS  # the exporter is gone once the command returns


def test_the_standard_environment_variable_alone_turns_export_on(monkeypatch, capsys):
    with OTLPReceiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url)
        assert main(RUN) == 0
    capsys.readouterr()
    assert len(rx.spans) > 3 and rx.resources[0]["service.name"] == "testtime"


def test_trace_export_sends_the_same_span_tree_as_a_live_run(tmp_path: Path, capsys):
    path = tmp_path / "t.jsonl"
    with OTLPReceiver() as live:
        assert main([*RUN, "--otel-endpoint", live.url, "--trace", str(path)]) == 0
    with OTLPReceiver() as later:
        assert main(["trace", "export", str(path), "--otlp", later.url]) == 0
    assert f"exported {len(live.spans)} span(s)" in capsys.readouterr().out

    def shape(spans):
        by_id, _ = _tree(spans)
        return sorted((s["name"], tuple(_ancestors(s, by_id)), s["end"] - s["start"]) for s in spans)

    assert shape(later.spans) == shape(live.spans)
    assert {s["start"] for s in later.spans} == {s["start"] for s in live.spans}  # started_at anchors both


async def test_workflow_stages_become_spans_under_the_run(tmp_path: Path):
    wf = Workflow("two-stage", model="sim", budget="tokens=4000", seed=0)
    wf.stage("plan", "Plan: {inputs.q}", share=0.3)
    wf.stage("solve", "{inputs.q} {stages.plan.text}", strategy="self_consistency", strategy_options={"n": 3})
    with OTLPReceiver() as rx:
        sink = OtelSink(rx.url)
        result = await wf.arun({"q": "What is 2+3?"}, on_event=sink)
    assert sink.exported == len(rx.spans) and not sink.failures
    by_id, roots = _tree(rx.spans)
    assert len(roots) == 1 and roots[0]["name"] == "invoke_agent two-stage"
    stages = {s["name"]: s for s in rx.spans if s["name"].startswith("stage ")}
    assert set(stages) == {"stage plan", "stage solve"}
    assert all(s["parent"] == roots[0]["span_id"] for s in stages.values())
    chats = [s for s in rx.spans if s["name"].startswith("chat ")]
    assert all("stage" in _ancestors(s, by_id) for s in chats)
    assert roots[0]["attributes"]["gen_ai.usage.output_tokens"] == result.usage["output_tokens"]


def test_a_dead_collector_warns_and_the_run_still_succeeds(capsys):
    sink = OtelSink("http://127.0.0.1:9", timeout_s=0.5)  # port 9 (discard): nothing listens
    tracer = Tracer(sinks=[sink])
    tracer.emit("run_start", strategy="x", model="sim", budget={})
    tracer.emit("run_end", answer="1", stopped_reason="done", usage={})
    assert sink.exported == 0 and len(sink.failures) == 1
    assert "did not accept" in capsys.readouterr().err


def test_span_plan_redacts_secrets_and_skips_nested_values():
    key = "sk-" + secrets.token_hex(16)
    events = [{"kind": "run_start", "t": 0.0, "strategy": "s", "model": "openai:gpt", "budget": {"tokens": 5}},
              {"kind": "error", "t": 0.5, "where": "x", "error": f"bad key {key}", "api_key": key},
              {"kind": "run_end", "t": 1.0, "stopped_reason": "error", "error": f"Bearer {key}", "usage": {}}]
    spans = plan_spans(events)
    assert key not in repr(spans)
    assert spans[0].attributes["gen_ai.system"] == "openai" and spans[0].attributes["gen_ai.request.model"] == "gpt"
    assert spans[0].events[0][0] == "error" and spans[0].error


def test_otel_without_the_extra_names_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    assert main([*RUN, "--otel"]) == 2
    assert 'pip install "testtime[otel]"' in capsys.readouterr().err


def test_trace_export_needs_an_endpoint(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    sim_trace(tmp_path / "t.jsonl", budget="tokens=800")
    assert main(["trace", "export", str(tmp_path / "t.jsonl")]) == 2
    assert "--otlp URL" in capsys.readouterr().err
    assert main(["trace", "export", str(tmp_path / "t.jsonl"), "--otlp", "ftp://x"]) == 2
    assert read_events(tmp_path / "t.jsonl")  # untouched


def test_task_runs_export_stage_spans_through_the_cli(tmp_path: Path, capsys):
    task = Path(__file__).parents[2] / "examples" / "plan_solve_math.yaml"
    with OTLPReceiver() as rx:
        assert main(["run", "--task", str(task), "--model", "sim", "--input", "question=What is 17 * 23?",
                     "--json", "--otel-endpoint", rx.url]) == 0
    capsys.readouterr()
    by_id, roots = _tree(rx.spans)
    assert [r["name"] for r in roots] == ["invoke_agent plan-solve-math"]
    stages = sorted(s["name"] for s in rx.spans if s["parent"] == roots[0]["span_id"]
                    and s["name"].startswith("stage "))
    assert stages[:2] == ["stage plan", "stage solve"]
    assert roots[0]["attributes"]["testtime.budget.tokens"] == 30000


def test_a_key_from_the_environment_echoed_by_a_server_reaches_no_span_and_no_trace(tmp_path: Path, monkeypatch,
                                                                                  capsys):
    from tests.support.loopback import Reply
    from tests.support.openai_server import completion, error, openai_server

    key = "tt-test-" + secrets.token_hex(12)  # no sk- prefix: only the environment says it is a key
    monkeypatch.setenv("OPENAI_API_KEY", key)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"x-tenant-token={key}")
    trace = tmp_path / "t.jsonl"
    with openai_server() as server, OTLPReceiver() as rx:
        server.push("/v1/chat/completions", Reply(body=completion(["The answer is 4."])))
        for _ in range(8):
            server.push("/v1/chat/completions", error(401, f"Incorrect API key provided: {key}."))
        rc = main(["run", "2+2?", "--model", "openai:fake", "--base-url", f"{server.url}/v1",
                   "--strategy", "self_consistency", "--n", "3", "--budget", "tokens=4000", "--json",
                   "--otel-endpoint", rx.url, "--trace", str(trace), "-o", "max_n=3"])
        sent = [r.headers.get("Authorization") or r.headers.get("authorization") for r in server.requests]
    out = capsys.readouterr()
    assert rc in (0, 1)
    assert any(h and key in h for h in sent)  # the key really was used ...
    assert rx.headers[0].get("x-tenant-token") == key  # ... and sent to the collector as a header
    text = trace.read_text()
    assert '"kind": "error"' in text or '"kind": "retry"' in text  # the echo was traced ...
    assert key not in text  # ... without the key
    assert rx.spans and all(key.encode() not in b for b in rx.bodies)
    assert key not in out.out and key not in out.err


def test_values_of_secret_environment_variables_are_redacted_from_any_event(monkeypatch):
    key = "tt-test-" + secrets.token_hex(12)
    token = "tok" + secrets.token_hex(8)
    monkeypatch.setenv("MY_SERVICE_API_KEY", key)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"authorization=Bearer%20{token},x-org=acme")
    seen = []
    tracer = Tracer(sinks=[seen.append])  # a new tracer reads the environment
    tracer.emit("error", where="plugin", error=f"backend said: bad key {key}; header Bearer {token}",
                detail=[f"{key}"], nested={"msg": f"token={token}"})
    data = json.dumps(seen[0].to_dict())
    assert key not in data and token not in data and data.count("[redacted]") >= 3
    assert "acme" in json.dumps(Tracer(sinks=[seen.append]).emit("note", message="acme").to_dict())
