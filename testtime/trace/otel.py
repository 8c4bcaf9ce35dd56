"""OpenTelemetry export of traces: one span per run, stage, strategy, round and model call.

Spans are built from trace events (the same records a JSONL trace holds),
so a live run (``testtime run --otel``, or the standard
``OTEL_EXPORTER_OTLP_ENDPOINT`` environment variable) and a finished file
(``testtime trace export RUN.jsonl --otlp URL``) give the same spans.

Shape::

    run (invoke_agent)            testtime.strategy, testtime.budget.*, testtime.stopped_reason,
    ├── stage NAME                gen_ai.usage.* = the run's usage
    │   └── strategy NAME
    │       ├── round 1
    │       │   └── chat MODEL    gen_ai.system, gen_ai.request.model, gen_ai.usage.input_tokens, ...
    │       └── chat MODEL        (calls after the last round)
    └── ...

A model call belongs to the round reported next in its stage (strategies
emit ``search_round`` after a round's calls return). Budget refusals,
retries and errors become span events on the innermost open span. Values
are redacted again before export; header values (``OTEL_EXPORTER_OTLP_HEADERS``)
go to the HTTP request only, never into attributes.

:func:`plan_spans` is pure (no OpenTelemetry import); :func:`export_events`
needs the ``otel`` extra (``pip install "testtime[otel]"``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testtime.errors import TesttimeError, UserError
from testtime.trace.events import TraceEvent, add_default_sink, redact, remove_default_sink
from testtime.trace.numbers import number

ENV_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_USAGE_KEYS = ("tokens", "input_tokens", "output_tokens", "cached_tokens", "calls", "usd", "seconds")


@dataclass(slots=True)
class SpanPlan:
    """A span to be: times are seconds on the run's clock, ``parent`` an index into the plan."""

    name: str
    start: float
    end: float | None = None
    parent: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, float, dict[str, Any]]] = field(default_factory=list)
    error: str | None = None


def split_model(spec: Any) -> tuple[str, str]:
    """``"openai:gpt-4o"`` -> ``("openai", "gpt-4o")``; a bare spec is both system and model."""
    s = str(spec or "unknown")
    system, sep, model = s.partition(":")
    return (system, model) if sep and model else (s, s)


def _attr(v: Any) -> Any:
    """An OTel attribute value: str/bool/int/float or a list of one type; None dropped."""
    if v is None or isinstance(v, (bool, float)):
        return v
    if isinstance(v, int):  # OTLP ints are 64-bit
        return v if -(2**63) <= v < 2**63 else str(v)
    if isinstance(v, str):
        return redact(v)[:1000]
    if isinstance(v, (list, tuple)):
        items = [_attr(x) for x in v if x is not None]
        if items and all(isinstance(x, str) for x in items):
            return items
        if items and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in items):
            return [float(x) for x in items]
        return redact(str(list(v)))[:1000]
    return redact(str(v))[:1000]


def _clean(attrs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in attrs.items():
        v = _attr(redact(v, k))
        if v is not None and v != []:
            out[k] = v
    return out


def _usage_attrs(usage: Any, prefix: str = "testtime.usage.") -> dict[str, Any]:
    if not isinstance(usage, dict):
        return {}
    out = {f"{prefix}{k}": usage[k] for k in _USAGE_KEYS if number(usage.get(k)) is not None}
    for k in ("input_tokens", "output_tokens"):
        if number(usage.get(k)) is not None:
            out[f"gen_ai.usage.{k}"] = int(usage[k])
    return out


def _secs(v: Any) -> float:
    """A time field as seconds: finite and >= 0, else 0 (a hand-edited trace may hold anything)."""
    n = number(v)
    return 0.0 if n is None or n < 0 else min(n, _MAX_SECS)


#: Longer than any run; keeps nanosecond timestamps inside OTLP's 64 bits.
_MAX_SECS = 1e8


def segments(events: Iterable[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Split a trace into runs: each ``run_start`` begins one (a resumed run's file holds several)."""
    out: list[list[dict[str, Any]]] = []
    for e in events:
        if e.get("kind") == "run_start" or not out:
            out.append([])
        out[-1].append(e)
    return out


def plan_spans(events: list[dict[str, Any]]) -> list[SpanPlan]:
    """The spans of one run (events of one segment), root first."""
    spans: list[SpanPlan] = []
    start = next((e for e in events if e.get("kind") == "run_start"), {})
    last_t = max((_secs(e.get("t")) for e in events), default=0.0)
    system, model = split_model(start.get("model"))
    name = start.get("task") or start.get("strategy") or "run"
    root = SpanPlan(f"invoke_agent {name}", _secs(start.get("t")), attributes={
        "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "testtime",
        "gen_ai.system": system, "gen_ai.request.model": model, "testtime.model": start.get("model"),
        "testtime.run_id": start.get("run_id"), "testtime.strategy": start.get("strategy"),
        "testtime.task": start.get("task"), "testtime.seed": start.get("seed"),
        "testtime.trace_version": start.get("trace_version", 1),
    })
    budget = start.get("budget")
    if isinstance(budget, dict):
        root.attributes.update({f"testtime.budget.{k}": v for k, v in budget.items() if isinstance(v, (int, float))})
    spans.append(root)
    stage_span: dict[str, int] = {}
    # Per stage: the open strategy span and the model calls waiting for their round.
    strategy_span: dict[str, int] = {}
    pending: dict[str, list[int]] = {}
    round_start: dict[str, float] = {}

    def host(stage: str) -> int:
        if stage in strategy_span:
            return strategy_span[stage]
        return stage_span.get(stage, 0)

    for e in events:
        kind = e.get("kind")
        t = _secs(e.get("t"))
        stage = e.get("stage") or ""
        if kind == "run_end":
            root.end = t
            root.attributes["testtime.stopped_reason"] = e.get("stopped_reason")
            root.attributes["testtime.answer"] = None if e.get("answer") is None else str(e.get("answer"))[:200]
            root.attributes.update(_usage_attrs(e.get("usage")))
            if e.get("stopped_reason") == "error":
                root.error = redact(str(e.get("error") or "error"))
        elif kind == "stage_start":
            name = str(e.get("stage") or stage)
            s_system, s_model = split_model(e.get("model"))
            attrs = {"testtime.stage": name, "testtime.strategy": e.get("strategy"),
                     "gen_ai.system": s_system, "gen_ai.request.model": s_model}
            if isinstance(e.get("budget"), dict):
                attrs.update({f"testtime.budget.{k}": v for k, v in e["budget"].items()
                              if isinstance(v, (int, float))})
            spans.append(SpanPlan(f"stage {name}", t, parent=0, attributes=attrs))
            stage_span[name] = len(spans) - 1
        elif kind == "stage_end":
            i = stage_span.get(str(e.get("stage") or stage))
            if i is not None:
                spans[i].end = t
                spans[i].attributes.update({"testtime.stopped_reason": e.get("stopped_reason"),
                                            "testtime.score": e.get("score"), **_usage_attrs(e.get("usage"))})
        elif kind == "strategy_start":
            spans.append(SpanPlan(f"strategy {e.get('strategy')}", t, parent=stage_span.get(stage, 0),
                                  attributes={"testtime.strategy": e.get("strategy"), "testtime.stage": stage or None}))
            strategy_span[stage] = len(spans) - 1
            pending[stage] = []
            round_start[stage] = t
        elif kind == "strategy_end":
            i = strategy_span.pop(stage, None)
            if i is not None:
                spans[i].end = t
                spans[i].attributes["testtime.stopped_reason"] = e.get("stopped_reason")
                for c in pending.pop(stage, []):
                    spans[c].parent = i
        elif kind == "search_round" and stage in strategy_span:
            parent = strategy_span[stage]
            first = min([spans[c].start for c in pending.get(stage, [])] + [round_start.get(stage, t)])
            spans.append(SpanPlan(f"round {e.get('round')}", first, end=t, parent=parent, attributes={
                "testtime.round": e.get("round"), "testtime.round.alive": e.get("alive"),
                "testtime.round.best_score": e.get("best_score")}))
            r = len(spans) - 1
            for c in pending.get(stage, []):
                spans[c].parent = r
            pending[stage] = []
            round_start[stage] = t
        elif kind == "model_call":
            latency = _secs(e.get("latency_s"))
            m_system, m_model = split_model(e.get("model"))
            usage = e.get("usage") if isinstance(e.get("usage"), dict) else {}
            attrs = {"gen_ai.operation.name": "chat", "gen_ai.system": m_system, "gen_ai.provider.name": m_system,
                     "gen_ai.request.model": m_model, "gen_ai.request.choice.count": e.get("n"),
                     "gen_ai.response.finish_reasons": e.get("finish_reasons"),
                     "testtime.role": e.get("role"), "testtime.replayed": e.get("replayed"),
                     "testtime.stage": stage or None, **_usage_attrs(usage, "testtime.call.")}
            spans.append(SpanPlan(f"chat {m_model}", max(t - latency, 0.0), end=t, parent=host(stage),
                                  attributes=attrs))
            if stage in strategy_span:
                pending[stage].append(len(spans) - 1)
        elif kind in ("budget_refused", "retry", "error"):
            attrs = {k: v for k, v in e.items() if k not in ("kind", "run_id", "t", "stage")}
            target = spans[host(stage)]
            target.events.append((kind, t, attrs))
            if kind == "error" and target is not root:
                target.attributes["testtime.had_error"] = True
    for stage, calls in pending.items():
        for c in calls:
            spans[c].parent = strategy_span.get(stage, spans[c].parent)
    for s in spans:
        if s.end is None:
            s.end = max(last_t, s.start)
        s.attributes = _clean(s.attributes)
        s.events = [(k, t, _clean({a: v for a, v in attrs.items() if not isinstance(v, dict)}))
                    for k, t, attrs in s.events]
    return spans


def _parents_first(plans: list[SpanPlan]) -> list[int]:
    """Plan indices ordered so each span comes after its parent (calls are
    re-parented to rounds planned after them)."""
    def depth(i: int) -> int:
        d = 0
        while plans[i].parent is not None:
            i = plans[i].parent  # type: ignore[assignment]
            d += 1
        return d

    return sorted(range(len(plans)), key=lambda i: (depth(i), i))


def _require_otel() -> Any:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider  # noqa: F401
    except ModuleNotFoundError as exc:
        raise UserError('OpenTelemetry export needs the otel extra: pip install "testtime[otel]"') from exc
    return OTLPSpanExporter


def traces_url(endpoint: str) -> str:
    """A collector's base URL gets the OTLP/HTTP traces path; a full path is kept."""
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(f"not an OTLP/HTTP URL: {redact(endpoint)!r} (expected e.g. http://localhost:4318)")
    return endpoint if parts.path not in ("", "/") else endpoint.rstrip("/") + "/v1/traces"


def export_events(events: list[dict[str, Any]], *, endpoint: str | None = None, timeout_s: float = 5.0,
                  started_at: float | None = None) -> int:
    """Send the spans of every run in ``events`` to an OTLP/HTTP collector; returns the span count.

    ``endpoint``: the collector URL (base or ``.../v1/traces``); None reads
    the standard ``OTEL_EXPORTER_OTLP_*`` environment. ``started_at``: unix
    time of the run clock's zero for traces without ``started_at`` (v1).

    Raises:
        UserError: the extra is missing or the URL is not one.
        TesttimeError: the collector did not accept the spans.
    """
    exporter_cls = _require_otel()
    from opentelemetry import trace as otel_trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExportResult

    from testtime import __version__

    class _Collect(SpanProcessor):
        def __init__(self) -> None:
            self.spans: list[Any] = []

        def on_end(self, span: Any) -> None:
            self.spans.append(span)

    collect = _Collect()
    provider = TracerProvider(resource=Resource.create({"service.name": "testtime",
                                                       "service.version": __version__}), shutdown_on_exit=False)
    provider.add_span_processor(collect)
    tracer = provider.get_tracer("testtime.trace.otel", __version__)
    for run in segments(events):
        start = next((e for e in run if e.get("kind") == "run_start"), {})
        zero = start.get("started_at")
        if not isinstance(zero, (int, float)) or isinstance(zero, bool) or not 0 <= zero < 4e9:
            zero = started_at if started_at is not None else time.time() - max(
                (_secs(e.get("t")) for e in run), default=0.0)
        plans = plan_spans(run)
        made: dict[int, Any] = {}
        for i in _parents_first(plans):
            p = plans[i]
            ctx = otel_trace.set_span_in_context(made[p.parent]) if p.parent is not None else None
            span = tracer.start_span(p.name, context=ctx, attributes=p.attributes,
                                     start_time=int((zero + p.start) * 1e9),
                                     kind=otel_trace.SpanKind.CLIENT if p.name.startswith("chat ")
                                     else otel_trace.SpanKind.INTERNAL)
            for name, t, attrs in p.events:
                span.add_event(name, attributes=attrs, timestamp=int((zero + t) * 1e9))
            if p.error:
                span.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR, redact(p.error)[:500]))
            made[i] = span
        # Children end first, so a viewer never sees a child outlive its ended parent.
        for i in reversed(_parents_first(plans)):
            made[i].end(end_time=int((zero + (plans[i].end or plans[i].start)) * 1e9))
    url = traces_url(endpoint) if endpoint else None
    exporter = exporter_cls(endpoint=url, timeout=timeout_s)
    # The exporter logs each retry; one line of ours says what failed instead.
    quiet = logging.getLogger("opentelemetry.exporter.otlp.proto.http")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        result = exporter.export(collect.spans) if collect.spans else SpanExportResult.SUCCESS
    finally:
        quiet.setLevel(level)
        exporter.shutdown()
    if result is not SpanExportResult.SUCCESS:
        where = redact(url or _env_endpoint() or "the default OTLP endpoint")
        raise TesttimeError(f"OpenTelemetry collector at {where} did not accept {len(collect.spans)} span(s)")
    return len(collect.spans)


def export_file(path: str | Path, *, endpoint: str | None = None) -> int:
    """``testtime trace export``: send a JSONL trace's spans; returns the span count."""
    from testtime.trace.jsonl import load_events

    if endpoint is None and not _env_endpoint():
        raise UserError("testtime trace export: give --otlp URL (or set OTEL_EXPORTER_OTLP_ENDPOINT)")
    if endpoint is not None:
        traces_url(endpoint)  # a bad URL fails before the file is read
    events, _skipped = load_events(path)
    if not events:
        raise UserError(f"{path}: no readable trace events")
    p = Path(path)
    last = max((_secs(e.get("t")) for e in events if isinstance(e.get("t"), (int, float))), default=0.0)
    return export_events(events, endpoint=endpoint, started_at=p.stat().st_mtime - last)


def _env_endpoint() -> str | None:
    return next((os.environ[k] for k in ENV_ENDPOINTS if os.environ.get(k)), None)


class OtelSink:
    """A trace sink exporting each run's spans when its ``run_end`` arrives.

    Export happens once per run, in one request; a failure is reported on
    stderr and never fails the run.
    """

    def __init__(self, endpoint: str | None = None, *, timeout_s: float = 5.0) -> None:
        _require_otel()
        self.endpoint = endpoint
        if endpoint is not None:
            traces_url(endpoint)
        self.timeout_s = timeout_s
        self._runs: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.exported = 0
        self.failures: list[str] = []

    def __call__(self, event: TraceEvent) -> None:
        with self._lock:
            self._runs.setdefault(event.run_id, []).append(event.to_dict())
            if event.kind != "run_end":
                return
            events = self._runs.pop(event.run_id)
        self._export(events)

    def _export(self, events: list[dict[str, Any]]) -> None:
        try:
            self.exported += export_events(events, endpoint=self.endpoint, timeout_s=self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - an exporter failure must never fail the run it watches
            self.failures.append(str(exc))
            print(f"testtime: warning: {redact(str(exc))}", file=sys.stderr)

    def flush(self) -> None:
        """Export runs that never ended (interrupted): their spans end at their last event."""
        with self._lock:
            runs, self._runs = list(self._runs.values()), {}
        for events in runs:
            if any(e.get("kind") == "run_start" for e in events):
                self._export(events)


@contextlib.contextmanager
def exporting(endpoint: str | None) -> Iterator[OtelSink | None]:
    """While inside, every new Tracer exports its runs (``testtime run --otel [URL]``).

    ``endpoint`` None: export only if ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the
    traces variant) is set; ``""``: ``--otel`` without a URL (environment,
    else the OTLP default http://localhost:4318). Without the ``otel`` extra,
    ``--otel`` is a UserError and the environment alone only warns.
    """
    if endpoint is None and not _env_endpoint():
        yield None
        return
    try:
        sink = OtelSink(endpoint or None)
    except UserError as exc:
        if endpoint is not None:
            raise
        print(f"testtime: warning: OTEL_EXPORTER_OTLP_ENDPOINT is set but {exc}", file=sys.stderr)
        yield None
        return
    add_default_sink(sink)
    try:
        yield sink
    finally:
        remove_default_sink(sink)
        sink.flush()
