"""The OpenAI chat-completions wire format: reading requests, writing responses and errors.

Only what the gateway needs, written against the public API reference:
``messages`` (string or text-part content), the sampling fields it can
honour, ``ChatCompletion`` / ``ChatCompletionChunk`` bodies and the
``{"error": {...}}`` shape every OpenAI client knows how to raise.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

#: Fields a search cannot honour: a scaled request setting them (to non-default values) gets a 400.
UNSUPPORTED_FIELDS: dict[str, tuple[Any, ...]] = {
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "response_format": (None, {"type": "text"}),
    "functions": (None, []),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "reasoning_effort": (None,),
}


class ApiError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {message, type, param, code}}``.

    Attributes:
        status: the HTTP status.
        extra: more fields inside ``error`` (e.g. which limit refused).
        headers: response headers (``x-should-retry: false`` stops SDK retries
            where retrying cannot help).
    """

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",  # noqa: A002
                 code: str | None = None, param: str | None = None,
                 extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code, **self.extra}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code, headers={"x-should-retry": "false"})


def text_of(content: Any, where: str) -> str:
    """A message's text: a string, or the text parts of a content list (other parts: 400)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise bad_request(f"{where}: content part of type {kind!r} is not supported by testtime "
                                  "serve (text only)", param="messages")
        return "".join(parts)
    raise bad_request(f"{where}: content must be a string or a list of text parts", param="messages")


@dataclass(frozen=True)
class Conversation:
    """A chat split the way strategies see it.

    Attributes:
        system: the leading system (or developer) message(s), joined; None if none.
        history: every turn between the system prompt and the last user turn, as sent.
        question: the last user turn's text (what strategies call the question).
    """

    system: str | None
    history: tuple[dict[str, Any], ...]
    question: str
    messages: tuple[dict[str, Any], ...] = field(default=())


def parse_messages(raw: Any) -> Conversation:
    """Check ``messages`` and split it into system / earlier turns / question (400 on misuse)."""
    if not isinstance(raw, list) or not raw:
        raise bad_request("messages must be a non-empty list of {role, content} objects", param="messages")
    msgs: list[dict[str, Any]] = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise bad_request(f"messages[{i}] must be an object with a role", param="messages")
        role = m["role"]
        if role not in ("system", "developer", "user", "assistant", "tool"):
            raise bad_request(f"messages[{i}]: unknown role {role!r}", param="messages")
        out = {k: v for k, v in m.items() if k != "content"}
        if role == "assistant" and m.get("content") is None and m.get("tool_calls"):
            out["content"] = None
        else:
            out["content"] = text_of(m.get("content"), f"messages[{i}]")
        msgs.append(out)
    i = 0
    system_parts: list[str] = []
    while i < len(msgs) and msgs[i]["role"] in ("system", "developer"):
        system_parts.append(msgs[i]["content"])
        i += 1
    rest = msgs[i:]
    if not rest or rest[-1]["role"] != "user":
        raise bad_request("the last message must be the user's turn for a test-time-scaled request "
                          "(a conversation that ends with an assistant or tool turn needs `tools`, "
                          "which is passed through unscaled)", param="messages")
    question = rest[-1]["content"]
    if not question.strip():
        raise bad_request("the last user message is empty", param="messages")
    history = tuple({"role": m["role"], "content": m["content"],
                     **{k: v for k, v in m.items() if k in ("name", "tool_calls", "tool_call_id")}}
                    for m in rest[:-1])
    return Conversation(system="\n\n".join(system_parts) if system_parts else None,
                        history=history, question=question, messages=tuple(msgs))


def check_unsupported(body: dict[str, Any]) -> None:
    """400 for fields a search cannot honour (set to something other than their default)."""
    for name, defaults in UNSUPPORTED_FIELDS.items():
        if name in body and body[name] not in defaults:
            raise bad_request(f"{name} is not supported on a test-time-scaled request: the answer is "
                              f"chosen from several samples, so {name} cannot apply to it "
                              "(requests with `tools` are passed through unscaled with every field)",
                              param=name)


def stops_of(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
        raise bad_request("stop must be a non-empty string or a list of up to 4 non-empty strings",
                          param="stop")
    return tuple(stop)


def apply_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` cut before the first stop sequence (and whether one matched)."""
    cut = min((i for s in stops if (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def new_id() -> str:
    return "chatcmpl-tt" + uuid.uuid4().hex[:24]


def usage_body(usage: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's ``usage`` from a testtime usage report (the whole spend of the request)."""
    prompt = int(usage.get("input_tokens", 0))
    completion = int(usage.get("output_tokens", 0))
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}
    if usage.get("cached_tokens"):
        out["prompt_tokens_details"] = {"cached_tokens": int(usage["cached_tokens"])}
    if usage.get("reasoning_tokens"):
        out["completion_tokens_details"] = {"reasoning_tokens": int(usage["reasoning_tokens"])}
    return out


def completion_body(*, rid: str, model: str, text: str, finish_reason: str, usage: dict[str, Any],
                    testtime: dict[str, Any], created: int | None = None) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(created or time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": finish_reason, "logprobs": None}],
        "usage": usage_body(usage),
        "testtime": testtime,
    }


def chunk(*, rid: str, model: str, created: int, delta: dict[str, Any] | None = None,
          finish_reason: str | None = None, usage: dict[str, Any] | None = None,
          testtime: dict[str, Any] | None = None, choices: bool = True) -> str:
    """One SSE ``data:`` line of a ChatCompletionChunk."""
    body: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk", "created": created,
                            "model": model,
                            "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason,
                                         "logprobs": None}] if choices else []}
    if usage is not None:
        body["usage"] = usage
    if testtime is not None:
        body["testtime"] = testtime
    return "data: " + json.dumps(body, ensure_ascii=False) + "\n\n"


def pieces(text: str, size: int = 24) -> list[str]:
    """``text`` in content deltas of about ``size`` characters, split after whitespace."""
    out: list[str] = []
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            space = text.rfind(" ", start + 1, end + 1)
            if space > start:
                end = space + 1
        out.append(text[start:end])
        start = end
    return out
