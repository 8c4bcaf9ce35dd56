"""Traces: typed events, JSONL files, live terminal views and tree rendering."""

from testtime.trace.events import EVENT_KINDS, NullTracer, TraceEvent, Tracer, redact
from testtime.trace.jsonl import JsonlWriter, read_events

__all__ = ["EVENT_KINDS", "JsonlWriter", "NullTracer", "TraceEvent", "Tracer", "read_events", "redact"]
