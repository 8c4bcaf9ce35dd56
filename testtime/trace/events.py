"""Typed trace events and the tracer that fans them out to sinks.

Every event has a ``kind`` from :data:`EVENT_KINDS`, the run id, the stage it
happened in, seconds since the run started, and a flat ``data`` dict. Sinks
are plain callables (JSONL writer, live view, async stream). Values whose key
looks secret (api keys, authorization headers) are redacted before any sink
sees them, and so are strings that look like bearer tokens or API keys.
"""

from __future__ import annotations

import contextvars
import functools
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Event kinds and what their ``data`` carries.
EVENT_KINDS: dict[str, str] = {
    "run_start": "question/task, strategy, model, budget",
    "run_end": "answer, stopped_reason, usage",
    "stage_start": "stage, model, strategy, budget share",
    "stage_end": "stage, answer, usage",
    "model_call": "model, role, n, usage, latency_s, finish_reasons",
    "budget_refused": "role, dimension, requested, remaining",
    "retry": "model, attempt, error, wait_s",
    "error": "where, error",
    "verdict": "verifier, score, passed, detail",
    "prm_scores": "prm, scores, aggregate",
    "node_added": "node, parent, step, score, tokens, text (truncated)",
    "node_pruned": "node, reason",
    "node_selected": "node, reason",
    "search_round": "round, alive, best_score",
    "strategy_start": "strategy, params",
    "strategy_end": "strategy, answer, stopped_reason",
    "checkpoint": "run_id, step",
    "run_resumed": "completed_stages, restored_usage",
    "verify_round": "verifier, round, score, passed, detail (workflow verify loop)",
    "refine": "round, feedback",
    "route": "stage, target",
    "note": "free-form message",
}

_SECRET_KEY = re.compile(r"(api[_-]?key|authorization|secret|password|token_value|x-api-key)", re.I)
_SECRET_VALUE = re.compile(r"(sk-[A-Za-z0-9_\-]{8,}|sk-ant-[A-Za-z0-9_\-]{8,}|Bearer\s+[A-Za-z0-9._\-]{8,})")
#: The user-info part of a URL (``scheme://user:password@host``): everything
#: between ``://`` and the last ``@`` before the path, query or fragment.
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s?#]*@")


_PLAIN = frozenset({int, float, bool, type(None)})


@functools.lru_cache(maxsize=4096)
def _secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key))


def redact(value: Any, key: str = "") -> Any:
    """Remove secrets from a value destined for a trace or log."""
    kind = type(value)
    if kind in _PLAIN and not key:
        return value
    if key and _secret_key(key):
        return "[redacted]"
    if isinstance(value, str):
        # Cheap substring tests first: most strings hold no secret at all.
        if "sk-" in value or "Bearer" in value:
            value = _SECRET_VALUE.sub("[redacted]", value)
        if "@" in value and "://" in value:
            value = redact_url(value)
        return value
    if kind in _PLAIN:
        return value
    if isinstance(value, dict):
        return {k: (v if type(v) in _PLAIN and not _secret_key(str(k)) else redact(v, str(k)))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def redact_url(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced:
    ``http://user:pw@host/v1`` -> ``http://[redacted]@host/v1``."""
    return _URL_USERINFO.sub(r"\1[redacted]@", text)


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceEvent:
    """One record of what happened."""

    kind: str
    run_id: str
    t: float
    stage: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "run_id": self.run_id, "t": round(self.t, 6),
                "stage": self.stage, **self.data}


Sink = Callable[[TraceEvent], None]


class Tracer:
    """Emits events to sinks; ``tracer.for_stage(name)`` tags a stage's events."""

    def __init__(self, run_id: str | None = None, sinks: list[Sink] | None = None,
                 *, stage: str | None = None, _start: float | None = None) -> None:
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.sinks: list[Sink] = sinks if sinks is not None else []
        self.stage = stage
        self._start = time.monotonic() if _start is None else _start

    def add_sink(self, sink: Sink) -> None:
        self.sinks.append(sink)

    def emit(self, kind: str, **data: Any) -> TraceEvent:
        event = TraceEvent(kind=kind, run_id=self.run_id, t=time.monotonic() - self._start,
                           stage=self.stage, data=redact(data))
        for sink in list(self.sinks):
            sink(event)
        return event

    def for_stage(self, stage: str | None) -> Tracer:
        """A tracer sharing sinks and clock whose events carry ``stage``."""
        return Tracer(self.run_id, self.sinks, stage=stage, _start=self._start)


class NullTracer(Tracer):
    """A tracer with no sinks (events are built only if someone listens)."""

    def emit(self, kind: str, **data: Any) -> TraceEvent | None:  # type: ignore[override]
        if not self.sinks:
            return None
        return super().emit(kind, **data)


#: The tracer of the model call in progress. RunContext.generate sets it so
#: backends (which know nothing of runs) can report retries.
current_tracer: contextvars.ContextVar[Tracer | None] = contextvars.ContextVar("testtime_tracer", default=None)


def emit_current(kind: str, **data: Any) -> None:
    """Emit on the tracer of the call in progress, if any."""
    tracer = current_tracer.get()
    if tracer is not None:
        tracer.emit(kind, **data)
