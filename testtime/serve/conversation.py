"""Whole conversations through strategies that think in single questions.

Strategies build their requests from ``Problem.question`` (the last user
turn). :class:`ConversationModel` wraps the shared backend for one request
and puts the earlier turns back in front of every request about that
question, so the model sees the conversation as the client sent it -- as
messages, never flattened into one prompt. Requests about anything else (a
judge's prompt, a PRM's scoring prompt) pass through unchanged. The system
prompt travels separately as ``RunContext.system_prompt``, which every
strategy sends as the request's ``system``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from testtime.budget import Usage
from testtime.models.base import Capabilities, Generation, GenerationRequest, Model, StreamItem


class ConversationModel(Model):
    """``inner`` with ``history`` (the turns before ``question``) prepended to requests about ``question``.

    It owns nothing: :meth:`aclose` leaves the shared backend open.
    """

    def __init__(self, inner: Model, *, question: str, history: tuple[dict[str, Any], ...]) -> None:
        # No Model.__init__: price, name and limits are the inner backend's own.
        self.inner = inner
        self.question = question
        self.history = tuple(dict(m) for m in history)
        self.name = inner.name
        self.backend = inner.backend  # type: ignore[misc]  # an instance attribute shadows the ClassVar
        self.price = inner.price
        self.price_source = getattr(inner, "price_source", "none")
        self.max_concurrency = inner.max_concurrency
        self.retry_policy = inner.retry_policy

    def __getattr__(self, name: str) -> Any:
        # Anything else a strategy or verifier asks of the backend (server_kind, tokenizer...).
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def rewrite(self, request: GenerationRequest) -> GenerationRequest:
        """The request with the earlier turns in front, when it is about the question."""
        if not self.history:
            return request
        if request.prompt is not None and request.prompt == self.question and not request.messages:
            return request.with_(prompt=None,
                                 messages=(*self.history, {"role": "user", "content": self.question}))
        msgs = request.messages
        if (request.prompt is None and msgs and msgs[0].get("role") == "user"
                and msgs[0].get("content") == self.question):
            return request.with_(messages=(*self.history, *msgs))
        return request

    @property
    def capabilities(self) -> Capabilities:
        return self.inner.capabilities

    def count_tokens(self, text: str) -> int | None:
        return self.inner.count_tokens(text)

    def fit_size(self, request: GenerationRequest) -> int:
        return self.inner.fit_size(self.rewrite(request))

    def resized(self, request: GenerationRequest, size: int) -> GenerationRequest:
        return self.inner.resized(request, size)

    def input_upper_bound(self, request: GenerationRequest) -> int:
        return self.inner.input_upper_bound(self.rewrite(request))

    def worst_case(self, request: GenerationRequest) -> Usage:
        return self.inner.worst_case(self.rewrite(request))

    async def generate(self, request: GenerationRequest) -> list[Generation]:
        return await self.inner.generate(self.rewrite(request))

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        # aclosing: cancelling this stream must close the backend's (and its HTTP request).
        async with aclosing(self.inner.stream(self.rewrite(request))) as inner:
            async for item in inner:
                yield item

    async def aclose(self) -> None:
        """The inner backend is shared by every request: it stays open."""

    def __repr__(self) -> str:
        return f"<ConversationModel {self.inner!r} +{len(self.history)} turns>"
