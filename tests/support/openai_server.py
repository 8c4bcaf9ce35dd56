"""A loopback server speaking enough of the OpenAI Chat Completions API for error tests."""

from __future__ import annotations

import itertools
from typing import Any

from tests.support.loopback import LoopbackServer, Reply

CHAT = "/v1/chat/completions"
MODELS = "/v1/models"
_ids = itertools.count()


def completion(texts: list[str], *, finish_reason: str = "stop", prompt_tokens: int = 9,
               cached: int = 0) -> dict[str, Any]:
    """A chat.completion body with one choice per text."""
    out = sum(max(1, len(t.split())) for t in texts)
    return {
        "id": f"chatcmpl-{next(_ids)}", "object": "chat.completion", "created": 0, "model": "fake",
        "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": finish_reason,
                     "logprobs": None} for i, t in enumerate(texts)],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": out, "total_tokens": prompt_tokens + out,
                  "prompt_tokens_details": {"cached_tokens": cached}},
    }


def error(status: int, msg: str, headers: dict[str, str] | None = None, code: str | None = None) -> Reply:
    return Reply(status=status, body={"error": {"message": msg, "type": "error", "code": code}},
                 headers=headers or {})


def _chat(body: dict[str, Any]) -> Reply:
    n = int(body.get("n") or 1)
    return Reply(body=completion([f"reply {i}" for i in range(n)]))


def _models(_: dict[str, Any]) -> Reply:
    return Reply(body={"object": "list", "data": [{"id": "fake", "object": "model", "owned_by": "testtime-fake"}]})


def openai_server() -> LoopbackServer:
    """A not-yet-started fake OpenAI-compatible server."""
    return LoopbackServer({CHAT: _chat, MODELS: _models})
