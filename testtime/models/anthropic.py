"""``anthropic:MODEL`` -- the Anthropic Messages API.

* ``n > 1`` fans out as concurrent calls (the API samples one reply per call).
* ``request.prefix`` becomes an assistant prefill: the reply continues it.
* ``request.thinking_budget`` turns on extended thinking with that budget.
* ``temperature`` / ``top_p`` are sent when the installed SDK still accepts
  them (recent SDKs removed them; the API's defaults apply then).
* No logprobs: :attr:`Capabilities.logprobs` is False and a request asking
  for them raises :class:`~testtime.errors.CapabilityError`.

Options: ``base_url`` (or ``ANTHROPIC_BASE_URL``), ``api_key`` (or
``ANTHROPIC_API_KEY``), ``timeout`` (s, default 120), ``max_retries``
(attempts, default 4), ``max_concurrency``, ``price``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
from typing import Any

from testtime.errors import CapabilityError, MissingDependency, ModelAPIError, UserError
from testtime.models.base import Capabilities, Generation, GenerationRequest, Model
from testtime.models.prices import Price
from testtime.models.retry import RetryPolicy, translate_error, with_retries

_KNOWN_OPTIONS = {"base_url", "api_key", "timeout", "max_retries", "max_concurrency", "price"}
_FINISH = {"end_turn": "eos", "stop_sequence": "stop", "max_tokens": "length"}
#: The API's smallest extended-thinking budget.
MIN_THINKING_BUDGET = 1024


@functools.cache
def _sdk_takes_sampling() -> bool:
    """Whether the installed SDK still has ``temperature`` on messages.create.

    Recent SDKs dropped the sampling parameters; with those we leave the
    API's defaults rather than smuggle fields the API may reject.
    """
    from anthropic.resources.messages import AsyncMessages

    return "temperature" in inspect.signature(AsyncMessages.create).parameters


class AnthropicModel(Model):
    """A Claude model over the Messages API."""

    backend = "anthropic"

    def __init__(self, name: str, *, api_key: str, base_url: str | None = None, timeout: float = 120.0,
                 policy: RetryPolicy | None = None, price: Price | None = None,
                 max_concurrency: int = 16) -> None:
        super().__init__(name, price=price, max_concurrency=max_concurrency)
        self._api_key = api_key
        self.base_url = base_url
        self.timeout = timeout
        self.policy = policy or RetryPolicy()
        self._client_obj: Any = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:  # never show the key
        return f"<AnthropicModel {self.spec} base_url={self.base_url!r}>"

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(native_n=False, logprobs=False, prefix=True, prefix_cache=True, thinking=True)

    def _client(self) -> Any:
        # An httpx pool belongs to the event loop that opened it.
        loop = asyncio.get_running_loop()
        if self._client_obj is None or self._client_loop is not loop:
            from anthropic import AsyncAnthropic

            self._client_obj = AsyncAnthropic(api_key=self._api_key, base_url=self.base_url,
                                              timeout=self.timeout, max_retries=0)
            self._client_loop = loop
        return self._client_obj

    async def aclose(self) -> None:
        client, self._client_obj = self._client_obj, None
        if client is not None:
            try:
                await client.close()
            except RuntimeError:  # its loop is gone
                pass

    async def generate(self, request: GenerationRequest) -> list[Generation]:
        if request.logprobs:
            raise CapabilityError(
                f"{self.spec} cannot return token logprobs (the Messages API has none); "
                "use a strategy/PRM that does not need logprobs, or an openai:/local/vllm: model"
            )
        if request.prefix and request.thinking_budget:
            raise CapabilityError(f"{self.spec}: extended thinking cannot continue an assistant prefix; "
                                  "drop thinking_budget for step-level search")
        return await super().generate(request)

    def _params(self, request: GenerationRequest) -> tuple[dict[str, Any], str]:
        system_parts = [request.system] if request.system else []
        messages: list[dict[str, str]] = []
        for m in request.messages or ():
            if m.get("role") == "system":
                system_parts.append(m.get("content", ""))
            else:
                messages.append({"role": m["role"], "content": m.get("content", "")})
        if request.prompt is not None:
            messages.append({"role": "user", "content": request.prompt})
        # The API rejects a prefill ending in whitespace; send it trimmed and
        # drop the same whitespace from the front of the reply.
        trimmed = request.prefix.rstrip()
        dropped = request.prefix[len(trimmed):]
        if trimmed:
            messages.append({"role": "assistant", "content": trimmed})
        params: dict[str, Any] = {"model": self.name, "messages": messages, "max_tokens": request.max_tokens}
        if system_parts:
            params["system"] = "\n\n".join(system_parts)
        if request.stop:
            params["stop_sequences"] = list(request.stop)
        if request.thinking_budget:
            if request.thinking_budget < MIN_THINKING_BUDGET:
                raise UserError(f"{self.spec}: thinking_budget must be >= {MIN_THINKING_BUDGET} tokens, "
                                f"got {request.thinking_budget}")
            # Thinking tokens count toward max_tokens, and temperature must stay at its default.
            params["thinking"] = {"type": "enabled", "budget_tokens": request.thinking_budget}
            params["max_tokens"] = request.max_tokens + request.thinking_budget
        elif _sdk_takes_sampling():
            params["temperature"] = request.temperature
            if request.top_p < 1.0:
                params["top_p"] = request.top_p
        return params, dropped

    async def _generate_one(self, request: GenerationRequest) -> Generation:
        params, dropped = self._params(request)
        client = self._client()
        resp = await with_retries(lambda: client.messages.create(**params), policy=self.policy,
                                  model=self.spec, translate=self._translate)
        text = "".join(getattr(b, "text", "") for b in (resp.content or ()) if getattr(b, "type", "") == "text")
        if dropped and text.startswith(dropped):
            text = text[len(dropped):]
        elif dropped and text[:1].isspace():
            text = text.lstrip()
        u = resp.usage
        cached = int(getattr(u, "cache_read_input_tokens", 0) or 0)
        created = int(getattr(u, "cache_creation_input_tokens", 0) or 0)
        # input_tokens excludes cache reads and writes; the ledger wants all prompt tokens.
        inp = int(u.input_tokens or 0) + cached + created
        return Generation(
            text=text,
            finish_reason=_FINISH.get(resp.stop_reason or "", resp.stop_reason or "eos"),
            usage=self.usage(inp, int(u.output_tokens or 0), cached),
            model=self.name,
            raw=resp,
        )

    def _translate(self, exc: BaseException) -> ModelAPIError | None:
        return translate_error(exc, backend="anthropic", model=self.name, key_env="ANTHROPIC_API_KEY",
                               base_url=self.base_url, secrets=[self._api_key])


def load(name: str, **options: Any) -> AnthropicModel:
    """Build an ``anthropic:MODEL`` backend.

    Raises:
        UserError: unknown option or no API key (checked before any call).
        MissingDependency: the anthropic package is missing.
    """
    unknown = set(options) - _KNOWN_OPTIONS
    if unknown:
        raise UserError(f"anthropic backend: unknown option(s) {sorted(unknown)}; known: {sorted(_KNOWN_OPTIONS)}")
    try:
        import anthropic  # noqa: F401
    except ImportError:
        raise MissingDependency("anthropic", "anthropic") from None
    api_key = options.get("api_key") or os.environ.get("ANTHROPIC_API_KEY")
    if not api_key:
        raise UserError(f"anthropic:{name} needs an API key: set ANTHROPIC_API_KEY")
    base_url = options.get("base_url") or os.environ.get("ANTHROPIC_BASE_URL") or None
    try:
        timeout = float(options.get("timeout", 120.0))
    except (TypeError, ValueError):
        raise UserError(f"timeout must be a number of seconds, got {options.get('timeout')!r}") from None
    return AnthropicModel(name, api_key=api_key, base_url=base_url, timeout=timeout,
                          policy=RetryPolicy.from_options(options), price=options.get("price"),
                          max_concurrency=int(options.get("max_concurrency", 16)))
