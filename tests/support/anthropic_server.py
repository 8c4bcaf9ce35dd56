"""A loopback server speaking enough of the Anthropic Messages API for tests.

``POST /v1/messages`` answers from a script (see :class:`LoopbackServer`);
by default it replies ``"echo: <last user text>"`` with usage counted in
words, so tests can tell requests apart.
"""

from __future__ import annotations

import itertools
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
    return LoopbackServer({MESSAGES: _echo})
