"""Traces: typed events, JSONL files, live views, the browser index, pictures and OpenTelemetry export."""

from testtime.trace.events import EVENT_KINDS, TRACE_VERSION, NullTracer, TraceEvent, Tracer, redact
from testtime.trace.index import TraceIndex
from testtime.trace.jsonl import JsonlWriter, read_events

__all__ = ["EVENT_KINDS", "TRACE_VERSION", "JsonlWriter", "NullTracer", "TraceEvent", "TraceIndex", "Tracer",
           "read_events", "redact"]
