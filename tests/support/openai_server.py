"""A loopback server speaking enough of the OpenAI Chat Completions API for backend tests.

A request with ``"stream": true`` gets its (scripted or default) reply as
chunks: plain ``chat.completion`` / ``text_completion`` bodies are turned
into SSE chunks by :func:`to_chunks` (one chunk per word, a final
``finish_reason`` chunk per choice, and the usage chunk when the request
sent ``stream_options.include_usage``), so the same scripts serve streaming
and non-streaming clients.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

from tests.support.loopback import LoopbackServer, Reply

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MODELS = "/v1/models"
_ids = itertools.count()


def completion(texts: list[str], *, finish_reason: str | None = "stop", prompt_tokens: int = 9,
               cached: int = 0, completion_tokens: int | None = None, usage: bool = True,
               reasoning: list[str] | None = None, reasoning_tokens: int | None = None) -> dict[str, Any]:
    """A chat.completion body with one choice per text.

    ``completion_tokens`` defaults to the words of all texts; ``reasoning``
    gives each choice a ``reasoning_content``; ``usage=False`` omits usage.
    """
    out = completion_tokens if completion_tokens is not None else sum(max(1, len(t.split())) for t in texts)
    choices = []
    for i, t in enumerate(texts):
        msg: dict[str, Any] = {"role": "assistant", "content": t}
        if reasoning is not None:
            msg["reasoning_content"] = reasoning[i]
        choices.append({"index": i, "message": msg, "finish_reason": finish_reason, "logprobs": None})
    body: dict[str, Any] = {"id": f"chatcmpl-{next(_ids)}", "object": "chat.completion", "created": 0,
                            "model": "fake", "choices": choices}
    if usage:
        body["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": out,
                         "total_tokens": prompt_tokens + out, "prompt_tokens_details": {"cached_tokens": cached}}
        if reasoning_tokens is not None:
            body["usage"]["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    return body


def _words(text: str) -> list[str]:
    """``text`` in pieces that join back to it (a word and its trailing space each)."""
    if not text:
        return []
    parts = text.split(" ")
    return [p + " " for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def to_chunks(body: dict[str, Any], *, include_usage: bool = True) -> list[dict[str, Any]]:
    """The stream of chunks a server would send for a chat.completion or text_completion body."""
    chat = body.get("object") == "chat.completion"
    base = {"id": body.get("id", "x"), "created": 0, "model": body.get("model", "fake"),
            "object": "chat.completion.chunk" if chat else "text_completion"}
    out: list[dict[str, Any]] = []
    for c in body.get("choices") or []:
        i = c.get("index", 0)
        if chat:
            msg = c.get("message") or {}
            out.append({**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                              "finish_reason": None, "logprobs": None}]})
            for piece in _words(msg.get("reasoning_content") or ""):
                out.append({**base, "choices": [{"index": i, "delta": {"reasoning_content": piece},
                                                  "finish_reason": None, "logprobs": None}]})
            for piece in _words(msg.get("content") or ""):
                out.append({**base, "choices": [{"index": i, "delta": {"content": piece},
                                                  "finish_reason": None, "logprobs": None}]})
            last = {"index": i, "delta": {}, "finish_reason": c.get("finish_reason"), "logprobs": None}
        else:
            for piece in _words(c.get("text") or ""):
                out.append({**base, "choices": [{"index": i, "text": piece, "finish_reason": None,
                                                  "logprobs": None}]})
            last = {"index": i, "text": "", "finish_reason": c.get("finish_reason"), "logprobs": None}
        if c.get("finish_reason") is not None:
            out.append({**base, "choices": [last]})
    if include_usage and body.get("usage") is not None:
        out.append({**base, "choices": [], "usage": body["usage"]})
    return out


def _adapt(reply: Reply, body: Any) -> Reply:
    """Stream a plain completion body when the request asked for a stream."""
    if not (isinstance(body, dict) and body.get("stream")) or reply.status != 200 or reply.stream is not None:
        return reply
    if not isinstance(reply.body, dict) or reply.body.get("object") not in ("chat.completion", "text_completion"):
        return reply
    include = bool((body.get("stream_options") or {}).get("include_usage"))
    return replace(reply, stream=to_chunks(reply.body, include_usage=include))


def error(status: int, msg: str, headers: dict[str, str] | None = None, code: str | None = None,
          kind: str = "error") -> Reply:
    return Reply(status=status, body={"error": {"message": msg, "type": kind, "code": code}},
                 headers=headers or {})


def _chat(body: dict[str, Any]) -> Reply:
    n = int(body.get("n") or 1)
    return Reply(body=completion([f"reply {i}" for i in range(n)]))


def _models(_: dict[str, Any]) -> Reply:
    return Reply(body={"object": "list", "data": [{"id": "fake", "object": "model", "owned_by": "testtime-fake"}]})


def openai_server() -> LoopbackServer:
    """A not-yet-started fake OpenAI-compatible server."""
    return LoopbackServer({CHAT: _chat, MODELS: _models}, adapt=_adapt)
