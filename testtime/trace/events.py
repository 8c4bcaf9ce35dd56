"""Typed trace events and the tracer that fans them out to sinks.

Every event has a ``kind`` from :data:`EVENT_KINDS`, the run id, the stage it
happened in, seconds since the run started, and a flat ``data`` dict. Sinks
are plain callables (JSONL writer, live view, async stream). Values whose key
looks secret (api keys, authorization headers) are redacted before any sink
sees them, and so are strings that look like bearer tokens or API keys.
"""

from __future__ import annotations

import contextvars
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
    "node_added": "node, parent, step, score, tokens, text (truncated); optional visits, q, prior, f, g, h, weight",
    "node_scored": "node, score (a score known after the node was added); optional visits, q, prior, f, g, h, weight",
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
    "thinking": "model, role, thinking_tokens, answer_tokens, forced (Wait continuations), notices, segments, "
                "ended (model|budget|budget_left), budget {thinking, answer}, thinking (truncated)",
}

#: Version of the trace format, written as ``trace_version`` in every
#: ``run_start``. Traces without the field are version 1 (before
#: ``node_scored`` and ``started_at``); readers accept both.
TRACE_VERSION = 2

#: Sinks every new :class:`Tracer` starts with (``testtime run --otel``
#: installs its exporter here, so plain runs and task runs both get it).
_DEFAULT_SINKS: list[Callable[[TraceEvent], None]] = []


def add_default_sink(sink: Callable[[TraceEvent], None]) -> None:
    """Give every Tracer created from now on this sink too (process-wide)."""
    if sink not in _DEFAULT_SINKS:
        _DEFAULT_SINKS.append(sink)


def remove_default_sink(sink: Callable[[TraceEvent], None]) -> None:
    """Undo :func:`add_default_sink` (tracers already made keep the sink)."""
    if sink in _DEFAULT_SINKS:
        _DEFAULT_SINKS.remove(sink)


_SECRET_KEY = re.compile(r"(api[_-]?key|authorization|secret|password|token_value|x-api-key)", re.I)
_SECRET_VALUE = re.compile(r"(sk-[A-Za-z0-9_\-]{8,}|sk-ant-[A-Za-z0-9_\-]{8,}|Bearer\s+[A-Za-z0-9._\-]{8,})")
#: The user-info part of a URL (``scheme://user:password@host``): everything
#: between ``://`` and the last ``@`` before the path, query or fragment.
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s?#]*@")


_PLAIN = frozenset({int, float, bool, type(None)})

#: Environment variables whose values are secrets wherever they turn up (a
#: server error echoing a key of a format the patterns above do not know).
_ENV_SECRET_NAME = re.compile(r"(API_?KEY|_TOKEN$|SECRET|PASSWORD|AUTHORIZATION|_HEADERS$)", re.I)
_ENV_SECRETS: tuple[str, ...] = ()
#: Shorter values are too likely to be ordinary words or numbers.
_MIN_SECRET_LEN = 8


def refresh_env_secrets() -> tuple[str, ...]:
    """Re-read the secret values redacted from every string (every new Tracer does this).

    Values of variables named like ``*_API_KEY``, ``*_TOKEN``, ``*SECRET*``,
    ``*PASSWORD*``; for ``*_HEADERS`` (``OTEL_EXPORTER_OTLP_HEADERS=k=v,...``)
    each header value.
    """
    global _ENV_SECRETS
    import os
    from urllib.parse import unquote

    found: set[str] = set()
    for name, value in os.environ.items():
        if not value or not _ENV_SECRET_NAME.search(name):
            continue
        if name.upper().endswith("_HEADERS"):
            parts = [unquote(p.partition("=")[2]).strip() for p in value.split(",")]
            found.update(p for p in parts if p)
            # "Bearer abc..." as one header value: the token alone is secret too.
            found.update(p.split(None, 1)[1] for p in parts if " " in p)
        else:
            found.add(value.strip())
    _ENV_SECRETS = tuple(sorted((v for v in found if len(v) >= _MIN_SECRET_LEN), key=len, reverse=True))
    return _ENV_SECRETS


# Every event's keys are checked: a plain dict memo is cheaper than lru_cache here.
_SECRET_KEYS_SEEN: dict[str, bool] = {}


def _secret_key(key: str) -> bool:
    hit = _SECRET_KEYS_SEEN.get(key)
    if hit is None:
        if len(_SECRET_KEYS_SEEN) >= 4096:
            _SECRET_KEYS_SEEN.clear()
        hit = _SECRET_KEYS_SEEN[key] = bool(_SECRET_KEY.search(key))
    return hit


def redact_text(value: str) -> str:
    """A string with every secret-looking part (API keys, bearer tokens, URL
    credentials, secret environment values) replaced by ``[redacted]``."""
    # Cheap substring tests first: most strings hold no secret at all.
    if "sk-" in value or "Bearer" in value:
        value = _SECRET_VALUE.sub("[redacted]", value)
    if "@" in value and "://" in value:
        value = redact_url(value)
    for secret in _ENV_SECRETS:
        if secret in value:
            value = value.replace(secret, "[redacted]")
    return value



def redact(value: Any, key: str = "") -> Any:
    """Remove secrets from a value destined for a trace or log."""
    kind = type(value)
    if kind in _PLAIN and not key:
        return value
    if key and _secret_key(key):
        return "[redacted]"
    if isinstance(value, str):
        return redact_text(value)
    if kind in _PLAIN:
        return value
    if isinstance(value, dict):
        return _redact_items(value, {})
    if isinstance(value, (list, tuple)):
        return [v if type(v) in _PLAIN else redact_text(v) if type(v) is str else redact(v)
                for v in value]
    return value


def _redact_items(src: dict[Any, Any], dst: dict[Any, Any]) -> dict[Any, Any]:
    """The one loop that redacts a dict's items: ``src``'s items, redacted, into ``dst``.

    ``dst`` is a new dict (:func:`redact`) or ``src`` itself (an emit's own
    ``**data``, a fresh dict nobody else holds: values are then replaced in
    place and plain values are left where they are).
    Nested values are redacted into copies either way.
    """
    if len(src) <= _SHAPE_MAX_KEYS:
        # Events of one kind have the same keys every time: once their key set is
        # known to hold no secret-looking key, only the values need a look.
        keys = tuple(src)
        safe = _SAFE_SHAPES.get(keys)
        if safe is None:
            safe = _learn_shape(keys)
        if safe:
            if dst is not src:
                dst.update(src)
            if not _PLAIN.issuperset(map(type, src.values())):
                for k, v in src.items():
                    if type(v) not in _PLAIN:
                        dst[k] = _redact_value(v, k if type(k) is str else str(k))
            return dst
    seen = _SECRET_KEYS_SEEN
    copy = dst is not src
    for k, v in src.items():
        ks = k if type(k) is str else str(k)
        secret = seen.get(ks)
        if secret is None:
            secret = _secret_key(ks)
        if secret:
            dst[k] = "[redacted]"
        else:
            if type(v) in _PLAIN:
                if copy:
                    dst[k] = v
            else:
                dst[k] = _redact_value(v, ks)
    return dst


def _redact_value(v: Any, key: str) -> Any:
    """:func:`redact` for a value that is not plain, under a key known not to look secret."""
    vt = type(v)
    if vt is str:
        return redact_text(v)
    if vt is dict:
        return _redact_items(v, {})
    if vt is list or vt is tuple:
        return [x if type(x) in _PLAIN else redact_text(x) if type(x) is str else redact(x) for x in v]
    return redact(v, key)


#: Dicts with more keys than this (tallies keyed by answer...) skip the shape memo.
_SHAPE_MAX_KEYS = 16
#: Key tuples (a dict's keys in order) -> True when none of them looks secret.
_SAFE_SHAPES: dict[tuple[Any, ...], bool] = {}


def _learn_shape(keys: tuple[Any, ...]) -> bool:
    if len(_SAFE_SHAPES) >= 4096:
        _SAFE_SHAPES.clear()
    safe = _SAFE_SHAPES[keys] = not any(_secret_key(k if type(k) is str else str(k)) for k in keys)
    return safe


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

# Building an event field by field through the slots' descriptors skips the
# frozen dataclass __init__ (one object.__setattr__ per field), which is most
# of an event's cost on the spend path. The result is the same frozen event.
_new_event = object.__new__
_SET_KIND = TraceEvent.__dict__["kind"].__set__
_SET_RUN_ID = TraceEvent.__dict__["run_id"].__set__
_SET_T = TraceEvent.__dict__["t"].__set__
_SET_STAGE = TraceEvent.__dict__["stage"].__set__
_SET_DATA = TraceEvent.__dict__["data"].__set__


class Tracer:
    """Emits events to sinks; ``tracer.for_stage(name)`` tags a stage's events.

    Any ``kind`` is accepted (:data:`EVENT_KINDS` documents the known ones;
    readers skip kinds they do not know). ``run_start`` events get
    ``trace_version`` and ``started_at`` (unix seconds of the run's clock
    zero) when the emitter did not set them.
    """

    #: Whether a new tracer without explicit sinks starts with the default sinks.
    takes_default_sinks = True

    def __init__(self, run_id: str | None = None, sinks: list[Sink] | None = None,
                 *, stage: str | None = None, _start: float | None = None) -> None:
        self.run_id = run_id or uuid.uuid4().hex[:12]
        if stage is None and _start is None:  # a new run, not a stage's view of one
            refresh_env_secrets()
        if sinks is None:
            sinks = list(_DEFAULT_SINKS) if self.takes_default_sinks else []
        self.sinks: list[Sink] = sinks
        self.stage = stage
        self._start = time.monotonic() if _start is None else _start

    def add_sink(self, sink: Sink) -> None:
        self.sinks.append(sink)

    def emit(self, kind: str, **data: Any) -> TraceEvent:
        t = time.monotonic() - self._start
        if kind == "run_start":
            data.setdefault("trace_version", TRACE_VERSION)
            data.setdefault("started_at", round(time.time() - t, 6))
        return self._deliver(kind, t, _redact_items(data, data))

    def emit_redacted(self, kind: str, data: dict[str, Any]) -> TraceEvent | None:
        """:meth:`emit` for a hot path that built ``data`` already redacted.

        ``data`` must be a dict made for this event alone whose keys are fixed
        names that do not look secret (so key redaction would change nothing)
        and whose values are plain numbers, or strings passed through
        :func:`redact_text`, or other values passed through :func:`redact`:
        the event is then the one :meth:`emit` would have made, without the
        generic walk over ``data``.
        """
        return self._deliver(kind, time.monotonic() - self._start, data)

    def _deliver(self, kind: str, t: float, data: dict[str, Any]) -> TraceEvent:
        """Build the event and hand it to every sink, in order."""
        event = _new_event(TraceEvent)
        _SET_KIND(event, kind)
        _SET_RUN_ID(event, self.run_id)
        _SET_T(event, t)
        _SET_STAGE(event, self.stage)
        _SET_DATA(event, data)
        sinks = self.sinks
        if len(sinks) == 1:
            sinks[0](event)  # the usual case: no copy of the list to iterate
        else:
            for sink in list(sinks):
                sink(event)
        return event

    def for_stage(self, stage: str | None) -> Tracer:
        """A tracer sharing sinks and clock whose events carry ``stage``."""
        return Tracer(self.run_id, self.sinks, stage=stage, _start=self._start)


class NullTracer(Tracer):
    """A tracer with no sinks (events are built only if someone listens)."""

    takes_default_sinks = False

    def emit(self, kind: str, **data: Any) -> TraceEvent | None:  # type: ignore[override]
        if not self.sinks:
            return None
        return super().emit(kind, **data)

    def emit_redacted(self, kind: str, data: dict[str, Any]) -> TraceEvent | None:
        if not self.sinks:
            return None
        return super().emit_redacted(kind, data)


#: The tracer of the model call in progress. RunContext.generate sets it so
#: backends (which know nothing of runs) can report retries.
current_tracer: contextvars.ContextVar[Tracer | None] = contextvars.ContextVar("testtime_tracer", default=None)


def emit_current(kind: str, **data: Any) -> None:
    """Emit on the tracer of the call in progress, if any."""
    tracer = current_tracer.get()
    if tracer is not None:
        tracer.emit(kind, **data)


refresh_env_secrets()
