"""A loopback server speaking enough of the Anthropic Messages API for tests.

``POST /v1/messages`` answers from a script (see :class:`LoopbackServer`);
by default it replies ``"echo: <last user text>"`` with usage counted in
words, so tests can tell requests apart. A request with ``"stream": true``
gets a plain ``message`` body as Messages streaming events
(:func:`to_events`: ``message_start`` with the input usage, a
``content_block_*`` run per block with one delta per word, ``message_delta``
with the stop reason and output tokens, ``message_stop``).
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

from tests.support.loopback import LoopbackServer, Reply

MESSAGES = "/v1/messages"
_ids = itertools.count()


def message(text: str, *, stop_reason: str = "end_turn", input_tokens: int = 10, output_tokens: int | None = None,
            cache_read: int = 0, model: str = "claude-test", thinking: str | None = None) -> dict[str, Any]:
    """A Messages API response body."""
    content: list[dict[str, Any]] = []
    if thinking is not None:
        content.append({"type": "thinking", "thinking": thinking, "signature": "sig"})
    content.append({"type": "text", "text": text})
    return {
        "id": f"msg_{next(_ids)}", "type": "message", "role": "assistant", "model": model,
        "content": content, "stop_reason": stop_reason, "stop_sequence": None,
        "usage": {"input_tokens": input_tokens,
                  "output_tokens": output_tokens if output_tokens is not None else max(1, len(text.split())),
                  "cache_read_input_tokens": cache_read, "cache_creation_input_tokens": 0},
    }


def _words(text: str) -> list[str]:
    parts = text.split(" ")
    return [p + " " for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def to_events(msg: dict[str, Any], *, start_usage: bool = True, delta_usage: bool = True) -> list[Any]:
    """The Messages streaming events for a ``message`` body, as ``(event, data)`` pairs."""
    usage = dict(msg.get("usage") or {})
    start = {k: v for k, v in msg.items() if k not in ("content", "usage", "stop_reason", "stop_sequence")}
    start.update(content=[], stop_reason=None, stop_sequence=None)
    if start_usage:
        start["usage"] = {**usage, "output_tokens": 1}
    else:  # the SDK requires a usage object: send one without counts
        start["usage"] = {"input_tokens": None, "output_tokens": None}
    events: list[Any] = [("message_start", {"type": "message_start", "message": start})]
    for i, block in enumerate(msg.get("content") or []):
        kind = block.get("type")
        if kind == "thinking":
            events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                   "content_block": {"type": "thinking", "thinking": "",
                                                                     "signature": ""}}))
            for piece in _words(block.get("thinking") or ""):
                events.append(("content_block_delta", {"type": "content_block_delta", "index": i,
                                                       "delta": {"type": "thinking_delta", "thinking": piece}}))
            events.append(("content_block_delta", {"type": "content_block_delta", "index": i,
                                                   "delta": {"type": "signature_delta",
                                                             "signature": block.get("signature", "")}}))
        else:
            events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                   "content_block": {"type": "text", "text": ""}}))
            for piece in _words(block.get("text") or ""):
                events.append(("content_block_delta", {"type": "content_block_delta", "index": i,
                                                       "delta": {"type": "text_delta", "text": piece}}))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    delta: dict[str, Any] = {"type": "message_delta",
                             "delta": {"stop_reason": msg.get("stop_reason"), "stop_sequence": None},
                             "usage": {"output_tokens": usage.get("output_tokens") if delta_usage else None}}
    events.append(("message_delta", delta))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def _adapt(reply: Reply, body: Any) -> Reply:
    """Stream a plain message body when the request asked for a stream."""
    if not (isinstance(body, dict) and body.get("stream")) or reply.status != 200 or reply.stream is not None:
        return reply
    if not isinstance(reply.body, dict) or reply.body.get("type") != "message":
        return reply
    return replace(reply, stream=to_events(reply.body), done=False)


def error(status: int, kind: str, msg: str, headers: dict[str, str] | None = None, delay: float = 0.0) -> Reply:
    """A scripted Messages API error reply."""
    return Reply(status=status, body={"type": "error", "error": {"type": kind, "message": msg}},
                 headers=headers or {}, delay=delay)


def _echo(body: dict[str, Any]) -> Reply:
    msgs = body.get("messages") or [{}]
    users = [m for m in msgs if m.get("role") == "user"]
    last = users[-1].get("content", "") if users else ""
    if isinstance(last, list):
        last = " ".join(part.get("text", "") for part in last)
    return Reply(body=message(f"echo: {last}", model=body.get("model", "claude-test")))


def anthropic_server() -> LoopbackServer:
    """A not-yet-started server; use ``with anthropic_server() as srv:``."""
    return LoopbackServer({MESSAGES: _echo}, adapt=_adapt)
