"""``openai:MODEL`` -- OpenAI Chat Completions and OpenAI-compatible servers.

Works against the official API and any OpenAI-compatible server (vLLM
serve, SGLang, llama.cpp's ``llama-server``, llama-cpp-python's
``llama_cpp.server``) given ``base_url`` / ``OPENAI_BASE_URL``.

Servers differ in two ways that matter to search strategies, so the backend
probes ``GET /models`` once at load time (custom base URLs only) and picks:

* **n > 1**: native on the official API, vLLM and SGLang; fanned out as
  concurrent single-sample calls elsewhere (llama.cpp servers ignore or
  reject ``n``). A server that returns fewer choices than asked gets
  them returned as they are (the spend path tops up through the ledger,
  reserving each extra call) and later reservations assume a fan-out.
* **prefix continuation** (``request.prefix``, step-level search), option
  ``prefix_mode``:

  - ``continue``: trailing assistant message + ``continue_final_message``
    (vLLM, SGLang).
  - ``assistant``: trailing assistant message, which the server treats as a
    prefill (llama.cpp ``llama-server``).
  - ``completions``: render the chat template on the client (option
    ``chat_template``: ``"chatml"`` (default) or a Jinja template string) and
    call ``/completions`` with the prefix appended (llama-cpp-python).
  - ``instruct``: the official API has no prefill; the prefix is put in the
    last user turn with an instruction to continue it. Approximate.

Every attempt streams (``stream=True`` with ``stream_options.include_usage``)
so the usage comes from the final chunk and a cut or cancelled call still
shows what it received; option ``stream=False`` sends plain requests for
servers that cannot stream usage (the default for llama-cpp-python's
server, whose streams carry no usage).

Options: ``base_url``, ``api_key``, ``idle_timeout`` (s without a byte from
the server before a request fails, default 60; ``timeout`` is an alias --
with ``stream=False`` it bounds the wait for the whole reply),
``max_retries`` (retries after the first attempt, as in the SDKs: default 2,
so 3 attempts), ``max_retry_after`` (longest Retry-After honoured, s,
default 600), ``stream`` (default True), ``prefix_mode``, ``native_n``,
``chat_template``, ``probe`` (default True), ``max_concurrency``, ``price``,
``reasoning`` (the model reasons server-side and takes ``reasoning_effort``;
default: official o-series / gpt-5 / gpt-oss names). A reasoning model given
``thinking_budget`` gets ``max_completion_tokens`` = answer + thinking and a
``reasoning_effort``; its reasoning tokens come from the usage.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import replace
from typing import Any
from urllib.parse import urlparse

from testtime.budget import Usage
from testtime.errors import MissingDependency, ModelAPIError, UserError
from testtime.models.base import (
    Capabilities,
    Generation,
    GenerationRequest,
    Model,
    StreamDelta,
    StreamEnd,
    StreamItem,
    TokenLogprob,
)
from testtime.models.prices import Price
from testtime.models.retry import RetryPolicy, translate_error, with_retries
from testtime.models.streaming import (
    CONNECT_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    WRITE_TIMEOUT,
    collect,
    fan_out,
    idle_timeout_option,
    semaphore,
)
from testtime.trace.events import emit_current

PREFIX_MODES = ("continue", "assistant", "completions", "instruct")
#: Tokens added to the reservation for self-hosted servers' template text.
TEMPLATE_OVERHEAD = 64
_KNOWN_OPTIONS = {"base_url", "api_key", "timeout", "idle_timeout", "max_retries", "max_retry_after",
                  "prefix_mode", "native_n", "chat_template", "probe", "stream", "max_concurrency", "price",
                  "reasoning"}
#: Official models that reason server-side (take reasoning_effort, bill reasoning tokens).
_REASONING_NAME = re.compile(r"^(o\d|gpt-5|gpt-oss)")
_OFFICIAL_HOST = "api.openai.com"
_INSTRUCT = ("\n\nYour answer so far is below. Continue it from exactly where it stops, "
             "without repeating it:\n\n")

# owned_by reported by GET /models -> (server kind, native n, prefix mode)
_SERVER_KINDS: dict[str, tuple[str, bool, str]] = {
    "vllm": ("vllm", True, "continue"),
    "sglang": ("sglang", True, "continue"),
    "llamacpp": ("llama-server", False, "assistant"),
    "me": ("llama-cpp-python", False, "completions"),
}


def _is_official(base_url: str | None) -> bool:
    return not base_url or (urlparse(base_url).hostname or "") == _OFFICIAL_HOST


def probe_server(base_url: str, api_key: str | None, timeout: float = 10.0, *,
                 attempts: int = 4) -> str | None:
    """``owned_by`` of the first model a server lists (None if it does not say).

    Retried like a call: up to ``attempts`` tries, with 0.25/0.5/1 s backoff,
    on timeouts, connection errors and 408/429/5xx replies -- a server still
    busy with a killed run's request answers a moment later.

    Raises:
        UserError: the server cannot be reached.
    """
    import time

    import httpx

    from testtime.models.openai_http import tls_verify

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = base_url.rstrip("/") + "/models"
    try:
        for attempt in range(1, max(attempts, 1) + 1):
            try:
                resp = httpx.get(url, headers=headers, timeout=timeout, verify=tls_verify(url))
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError):
                if attempt >= attempts:
                    raise
            else:
                if not (resp.status_code in (408, 429) or resp.status_code >= 500) or attempt >= attempts:
                    break
            time.sleep(0.25 * 2 ** (attempt - 1))
    except httpx.HTTPError as exc:
        from testtime.trace.events import redact_url

        raise UserError(
            f"cannot reach the OpenAI-compatible server at {redact_url(base_url)} ({type(exc).__name__}); "
            "start it or fix --base-url / OPENAI_BASE_URL"
        ) from None
    if resp.status_code != 200:
        return None
    try:
        data = resp.json().get("data") or []
        return str(data[0].get("owned_by")) if data else None
    except (ValueError, AttributeError, IndexError, TypeError):
        return None


def render_chatml(messages: list[dict[str, str]]) -> str:
    """ChatML with the generation prompt (SmolLM2, Qwen and many others use it)."""
    parts = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    return "".join(parts) + "<|im_start|>assistant\n"


def _render_template(template: str, messages: list[dict[str, str]]) -> str:
    if template == "chatml":
        return render_chatml(messages)
    try:
        import jinja2.sandbox
    except ImportError:
        raise MissingDependency("jinja2", "local", "custom chat templates") from None
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=True,
                                            bos_token="", eos_token="")


#: Where requests go when no base URL is given.
OFFICIAL_BASE_URL = "https://api.openai.com/v1"


def _get(obj: Any, key: str) -> Any:
    """``obj.key`` or ``obj[key]`` (SDK objects and error-body dicts alike)."""
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def _reasoning_of(obj: Any) -> str:
    """Reasoning text a server sent beside the answer (``reasoning_content`` or ``reasoning``)."""
    for key in ("reasoning_content", "reasoning"):
        v = _get(obj, key)
        if isinstance(v, str) and v:
            return v
    return ""


class _Choice:
    """One choice being assembled from stream chunks."""

    __slots__ = ("text", "thinking", "tokens", "thinking_tokens", "logprobs", "finish", "raw")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.thinking: list[str] = []
        self.tokens = 0
        self.thinking_tokens = 0
        self.logprobs: list[Any] = []
        self.finish: str | None = None
        self.raw: Any = None


class OpenAIModel(Model):
    """A chat model behind the OpenAI API or a compatible server.

    :meth:`stream` is one attempt (one HTTP request, or one per sample when
    ``n`` fans out); :meth:`generate` retries whole attempts under
    :attr:`retry_policy` for direct callers. The HTTP read timeout is an
    *idle* timeout (no bytes for ``idle_timeout`` seconds), not a limit on
    the whole call: a long reasoning call that keeps streaming never times
    out; the run's deadline is the spend path's to enforce.
    """

    backend = "openai"

    def __init__(
        self,
        name: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        timeout: float | None = None,
        policy: RetryPolicy | None = None,
        prefix_mode: str = "instruct",
        native_n: bool = True,
        chat_template: str = "chatml",
        server_kind: str = "openai",
        stream: bool = True,
        reasoning: bool | None = None,
        price: Price | None = None,
        max_concurrency: int = 64,
    ) -> None:
        super().__init__(name, price=price, max_concurrency=max_concurrency)
        self.base_url = base_url
        self._api_key = api_key
        #: Seconds without a byte from the server before a request fails (``timeout`` is an alias).
        self.idle_timeout = float(timeout if timeout is not None else idle_timeout)
        self.retry_policy = policy or RetryPolicy()
        self.prefix_mode = prefix_mode
        #: Send ``n`` to the server (the configured/probed setting; never changed at run time).
        self.native_n = native_n
        #: Set once a server answered a native-n request with fewer choices. It only
        #: changes what later reservations assume (``capabilities.native_n`` turns False,
        #: so worst_case counts one request per sample): requests keep being sent as
        #: configured, so a call reserved before the flag flipped still sends exactly
        #: what it reserved for. The spend path tops up the missing choices.
        self._n_ignored = False
        self.chat_template = chat_template
        self.server_kind = server_kind
        #: Stream responses (``stream=True`` + ``stream_options.include_usage``); False for
        #: servers that cannot, then each attempt is one plain request.
        self.use_stream = stream
        #: Option ``reasoning`` (None: decided from the name on the official API).
        self.reasoning_option = reasoning
        self._official = _is_official(base_url)
        self._clients: list[Any] = []
        self._client_loop: asyncio.AbstractEventLoop | None = None
        #: Rendered prompt (hash) -> the most prompt_tokens the server reported for it:
        #: the exact input bound of later identical requests (self-consistency repeats one).
        self._prompt_seen: dict[str, int] = {}
        self._key_memo: dict[tuple[int, int, str], tuple[GenerationRequest, str]] = {}

    def __repr__(self) -> str:  # never show the key
        from testtime.trace.events import redact_url  # nor a password in the URL

        return f"<OpenAIModel {self.spec} server={self.server_kind} base_url={redact_url(repr(self.base_url))}>"

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(native_n=self.native_n and not self._n_ignored, logprobs=True, prefix=True,
                            prefix_cache=self.server_kind in ("vllm", "sglang", "openai"),
                            thinking=self.reasoning)

    @property
    def reasoning(self) -> bool:
        """Whether the model reasons server-side: option ``reasoning``, else an official o-series/gpt-5 name."""
        if self.reasoning_option is not None:
            return self.reasoning_option
        return self._official and bool(_REASONING_NAME.match(self.name))

    def input_upper_bound(self, request: GenerationRequest) -> int:
        seen = self._prompt_seen.get(self._prompt_key(request, request.n if self.native_n else 1))
        if seen is not None:
            return seen  # what the server billed for this very prompt (the most it ever did)
        bound = super().input_upper_bound(request)
        if request.prefix and self.prefix_mode == "instruct":
            bound += len(_INSTRUCT.encode())
        if not self._official:
            # Self-hosted chat templates may inject a default system prompt
            # (SmolLM2's adds ~15 tokens) that the request never shows.
            bound += TEMPLATE_OVERHEAD
        return bound

    def _prompt_key(self, request: GenerationRequest, n: int) -> str:
        """A hash of what one request sends as its prompt (messages or rendered text,
        prefix mode, model, n): equal keys are billed the same prompt tokens.

        Kept for the last requests seen, by identity: the spend path asks
        for one request's bound several times (fit, reserve, settle), and
        building its body to hash it each time was most of that cost.
        """
        memo = self._key_memo.get((id(request), n, self.prefix_mode))
        if memo is not None and memo[0] is request:
            return memo[1]
        completions, kw = self._request_args(request, n)
        fields = [self.name, self.prefix_mode, completions, n, kw.get("messages"), kw.get("prompt"),
                  kw.get("extra_body")]
        key = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()
        if len(self._key_memo) >= 256:
            self._key_memo.clear()
        # The request itself is kept with its key, so its id cannot be reused meanwhile.
        self._key_memo[(id(request), n, self.prefix_mode)] = (request, key)
        return key

    def _remember_prompt(self, request: GenerationRequest, n: int, usage: Usage | None) -> None:
        """Keep the server-reported prompt tokens of one request (never lowering a kept count)."""
        if usage is None or usage.input_tokens <= 0:
            return
        key = self._prompt_key(request, n)
        if len(self._prompt_seen) >= 4096 and key not in self._prompt_seen:
            self._prompt_seen.clear()
        self._prompt_seen[key] = max(self._prompt_seen.get(key, 0), usage.input_tokens)

    # ------------------------------------------------------------ plumbing
    def _client(self) -> Any:
        # One pool per model, sized for its concurrency; an httpx pool belongs
        # to the event loop that opened it.
        loop = asyncio.get_running_loop()
        if not self._clients or self._client_loop is not loop:
            from testtime.models.openai_http import LeanClient

            self._clients = [LeanClient(self.base_url or OFFICIAL_BASE_URL, self._api_key or "not-needed",
                                        connect=CONNECT_TIMEOUT, read=self.idle_timeout, write=WRITE_TIMEOUT,
                                        max_connections=max(self.max_concurrency, 1))]
            self._client_loop = loop
        return self._clients[0]

    def _translate(self, exc: BaseException) -> ModelAPIError | None:
        return translate_error(exc, backend="openai", model=self.name,
                               key_env=None if not self._official else "OPENAI_API_KEY",
                               base_url=self.base_url, secrets=[self._api_key],
                               usage_parser=self._usage_from)

    def _usage_from(self, u: Any) -> Usage | None:
        """Priced usage from a ``usage`` object or dict (None when it has no counts)."""
        if u is None:
            return None
        prompt, completion = _get(u, "prompt_tokens"), _get(u, "completion_tokens")
        if prompt is None and completion is None:
            return None
        cached = _get(_get(u, "prompt_tokens_details"), "cached_tokens") or 0
        reasoning = _get(_get(u, "completion_tokens_details"), "reasoning_tokens") or 0
        usage = self.usage(int(prompt or 0), int(completion or 0), int(cached), calls=1)
        # Reasoning is part of the completion: a server claiming more is not believed.
        return replace(usage, reasoning_tokens=max(min(int(reasoning), int(completion or 0)), 0))

    async def aclose(self) -> None:
        clients, self._clients = self._clients, []
        for client in clients:
            try:
                await client.aclose()
            except RuntimeError:  # its loop is gone; nothing left to close
                pass

    # ---------------------------------------------------------- generation
    async def generate(self, request: GenerationRequest) -> list[Generation]:
        """Sample for direct (ledger-less) callers, retrying whole attempts.

        Returns what the server gave: fewer than ``request.n`` generations
        when a server ignored ``n`` (later calls then fan out).
        """
        if request.n > 1 and not self.capabilities.native_n:
            base = request.seed
            singles = [request.with_(n=1, seed=None if base is None else base + i) for i in range(request.n)]
            parts = await asyncio.gather(*(self._with_retries(r) for r in singles))
            return [g for part in parts for g in part]
        return await self._with_retries(request)

    async def _with_retries(self, request: GenerationRequest) -> list[Generation]:
        async def attempt() -> list[Generation]:
            return (await collect(self.stream(request), backend="openai")).generations

        return await with_retries(attempt, policy=self.retry_policy, model=self.spec, translate=self._translate)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        """One attempt: deltas as they arrive, then a :class:`StreamEnd`.

        ``n > 1`` is one request when :attr:`native_n` (the server may return
        fewer choices: they are returned as they are, nothing is topped up
        here), else ``n`` concurrent single-sample requests merged (see
        :mod:`testtime.models.streaming`). ``StreamEnd.usage`` comes from the
        final usage chunk (None when the server sent none). A stream that
        ends before every choice finished raises a retryable ModelAPIError.
        """
        if request.n > 1 and not self.native_n:
            base = request.seed
            singles = [request.with_(n=1, seed=None if base is None else base + i) for i in range(request.n)]
            async with aclosing(fan_out(self, singles, lambda r: self._request_stream(r, 1))) as merged:
                async for item in merged:
                    yield item
            return
        async with aclosing(self._request_stream(request, request.n)) as one:
            async for item in one:
                yield item

    def _messages(self, request: GenerationRequest) -> tuple[list[dict[str, str]], dict[str, Any]]:
        msgs = request.chat_messages()
        extra: dict[str, Any] = {}
        if not request.prefix:
            return msgs, extra
        if self.prefix_mode == "continue":
            msgs.append({"role": "assistant", "content": request.prefix})
            extra = {"continue_final_message": True, "add_generation_prompt": False}
        elif self.prefix_mode == "assistant":
            msgs.append({"role": "assistant", "content": request.prefix})
        else:  # instruct
            if msgs and msgs[-1]["role"] == "user":
                msgs[-1] = {"role": "user", "content": msgs[-1]["content"] + _INSTRUCT + request.prefix}
            else:
                msgs.append({"role": "user", "content": _INSTRUCT.strip() + "\n\n" + request.prefix})
        return msgs, extra

    def _common(self, request: GenerationRequest, n: int) -> dict[str, Any]:
        kw: dict[str, Any] = {"model": self.name, "temperature": request.temperature,
                              "top_p": request.top_p}
        if n > 1:
            kw["n"] = n
        if request.stop:
            kw["stop"] = list(request.stop)
        if request.seed is not None:
            kw["seed"] = request.seed
        return kw

    def _request_args(self, request: GenerationRequest, n: int) -> tuple[bool, dict[str, Any]]:
        """(``True`` for /completions, keyword arguments) of one request."""
        kw = self._common(request, n)
        if request.prefix and self.prefix_mode == "completions":
            kw["prompt"] = _render_template(self.chat_template, request.chat_messages()) + request.prefix
            kw["max_tokens"] = request.max_tokens
            if request.logprobs:
                kw["logprobs"] = max(request.top_logprobs, 0)
            return True, kw
        msgs, extra = self._messages(request)
        kw["messages"] = msgs
        # The official API wants max_completion_tokens (o-series reject
        # max_tokens); compatible servers know max_tokens.
        kw["max_completion_tokens" if self._official else "max_tokens"] = request.max_tokens
        if request.thinking_budget and self.reasoning:
            from testtime.thinking import effort_for

            # Reasoning tokens count toward the completion limit: thinking + answer.
            kw["max_completion_tokens" if self._official else "max_tokens"] = (
                request.max_tokens + request.thinking_budget)
            kw["reasoning_effort"] = request.reasoning_effort or effort_for(request.thinking_budget)
            kw.pop("temperature", None)  # reasoning models take only the default sampling
            kw.pop("top_p", None)
        if request.logprobs:
            kw["logprobs"] = True
            # llama-cpp-python returns no logprobs unless top_logprobs is set.
            kw["top_logprobs"] = max(request.top_logprobs, 0)
        if extra:
            kw["extra_body"] = extra
        return False, kw

    async def _request_stream(self, request: GenerationRequest, n: int) -> AsyncIterator[StreamItem]:
        """Exactly one HTTP request for ``n`` choices, as a stream (errors translated)."""
        async with semaphore(self):
            completions, kw = self._request_args(request, n)
            client = self._client()
            path = "completions" if completions else "chat/completions"
            body = client.body(kw)
            try:
                if not self.use_stream:
                    resp = await client.post(path, body)
                    yield self._plain_end(request, n, completions, resp)
                    return
                body.update(stream=True, stream_options={"include_usage": True})
                states: dict[int, _Choice] = {}
                usage_obj: Any = None
                async with aclosing(client.stream(path, body)) as chunks:
                    async for chunk in chunks:
                        if chunk.usage is not None:
                            usage_obj = chunk.usage
                        for ch in chunk.choices or ():
                            delta = self._absorb(states, ch, completions)
                            if delta is not None:
                                yield delta
                yield self._stream_end(request, n, states, usage_obj)
            except ModelAPIError:
                raise
            except Exception as exc:
                mapped = self._translate(exc)
                if mapped is None:
                    raise
                raise mapped from None  # drop the SDK chain: it may echo request headers

    def _absorb(self, states: dict[int, _Choice], ch: Any, completions: bool) -> StreamDelta | None:
        """Fold one chunk choice into its state; the delta to yield (None: nothing new)."""
        idx = int(getattr(ch, "index", 0) or 0)
        st = states.get(idx)
        if st is None:
            st = states[idx] = _Choice()
        lp = getattr(ch, "logprobs", None)
        tokens = 0
        if completions:
            text = getattr(ch, "text", None) or ""
            thinking = ""
            if lp is not None and getattr(lp, "tokens", None):
                st.logprobs.append(lp)
                tokens = len(lp.tokens)
        else:
            delta = getattr(ch, "delta", None)
            text = _get(delta, "content") or ""
            thinking = _reasoning_of(delta)
            content = getattr(lp, "content", None) if lp is not None else None
            if content:
                st.logprobs.extend(content)
                tokens = len(content)
        if getattr(ch, "finish_reason", None):
            st.finish = ch.finish_reason
            st.raw = ch
        if not (text or thinking or tokens):
            return None
        tokens = tokens or 1
        st.text.append(text)
        st.thinking.append(thinking)
        st.tokens += tokens
        if thinking and not text:
            st.thinking_tokens += tokens
        return StreamDelta(index=idx, text=text, thinking=thinking, tokens=tokens)

    def _stream_end(self, request: GenerationRequest, n: int, states: dict[int, _Choice],
                    usage_obj: Any) -> StreamEnd:
        usage = self._usage_from(usage_obj)
        if not states:
            # A usage chunk means the server finished and really gave no choice.
            raise ModelAPIError(f"{self.spec}: the server returned no choices"
                                + ("" if usage is not None else " (the stream ended before any; if this "
                                   "server cannot stream, set the model option stream=false)"),
                                retryable=usage is None, backend="openai", billed=usage)
        cut = sorted(i for i, st in states.items() if st.finish is None)
        if cut:
            raise ModelAPIError(f"{self.spec}: stream cut: the stream ended before choice(s) {cut} finished "
                                f"(server{f' at {self.base_url}' if self.base_url else ''})",
                                retryable=True, backend="openai", billed=None)
        self._note_choices(request, n, len(states))
        self._remember_prompt(request, n, usage)
        order = sorted(states)
        choices = []
        for i in order:
            st = states[i]
            if st.logprobs and getattr(st.logprobs[0], "tokens", None) is not None:
                lps = _merge_completion_logprobs(st.logprobs)
            else:
                lps = _chat_logprobs_list(st.logprobs)
            choices.append(("".join(st.text), "".join(st.thinking), st.finish, lps, st.raw, st.tokens,
                            st.thinking_tokens))
        return StreamEnd(generations=self._to_generations(request, usage, choices), usage=usage)

    def _plain_end(self, request: GenerationRequest, n: int, completions: bool, resp: Any) -> StreamEnd:
        """A non-streamed response as a stream's end."""
        usage = self._usage_from(getattr(resp, "usage", None))
        if completions:
            choices = [(c.text or "", "", c.finish_reason, _completion_logprobs(c.logprobs), c, 0, 0)
                       for c in resp.choices or ()]
        else:
            choices = [((c.message.content or "") if c.message else "", _reasoning_of(c.message),
                        c.finish_reason, _chat_logprobs(c.logprobs), c, 0, 0) for c in resp.choices or ()]
        if not choices:
            raise ModelAPIError(f"{self.spec}: the server returned no choices", backend="openai", billed=usage)
        self._note_choices(request, n, len(choices))
        self._remember_prompt(request, n, usage)
        return StreamEnd(generations=self._to_generations(request, usage, choices), usage=usage)

    def _note_choices(self, request: GenerationRequest, n: int, got: int) -> None:
        if n > 1 and got < n and not self._n_ignored:
            self._n_ignored = True
            emit_current("note", message=f"{self.spec}: asked for n={n}, the server returned {got} "
                         "choice(s); later calls reserve and send one request per sample")

    def _to_generations(self, request: GenerationRequest, usage: Usage | None,
                        choices: list[tuple[str, str, str | None, tuple[TokenLogprob, ...] | None, Any, int, int]]
                        ) -> list[Generation]:
        """Generations of one response; ``usage`` (the call's) is shared out, prompt on the first."""
        weights = [tok or (len(lp) if lp else len(t) + 1) for t, _, _, lp, _, tok, _ in choices]
        if usage is not None:
            out_shares = _split(usage.output_tokens, weights)
            think_w = [tt for *_, tt in choices]
            think_shares = _split(usage.reasoning_tokens, think_w if sum(think_w) else weights)
        else:  # nothing reported: what the deltas carried, prompt unknown
            out_shares = [c[5] for c in choices]
            think_shares = [c[6] for c in choices]
        gens = []
        for i, (text, thinking, finish, lps, raw, _, _) in enumerate(choices):
            if request.prefix and self.prefix_mode == "instruct" and text.startswith(request.prefix):
                text = text[len(request.prefix):]
            first = i == 0
            if usage is not None:
                u = self.usage(usage.input_tokens if first else 0, out_shares[i],
                               usage.cached_tokens if first else 0, calls=1 if first else 0)
            else:
                u = self.usage(0, out_shares[i], 0, calls=1 if first else 0)
            gens.append(Generation(
                text=text,
                finish_reason=_finish_reason(finish, raw, request),
                logprobs=lps if request.logprobs else None,
                usage=replace(u, reasoning_tokens=think_shares[i]),
                model=self.name,
                raw=raw,
                thinking=thinking,
            ))
        return gens


def _split(total: int, weights: list[int]) -> list[int]:
    """Share ``total`` output tokens among choices in proportion to weights (sums exactly)."""
    if len(weights) == 1:
        return [total]
    if sum(weights) <= 0:
        weights = [1] * len(weights)
    wsum = sum(weights)
    shares = [total * w // wsum for w in weights]
    shares[0] += total - sum(shares)
    return shares


def _finish_reason(finish: str | None, raw: Any, request: GenerationRequest) -> str:
    if finish == "length":
        return "length"
    if finish != "stop":
        return finish or "eos"
    # vLLM/SGLang say which stop string matched (None / a token id = natural end).
    extra = getattr(raw, "model_extra", None) or {}
    if "stop_reason" in extra:
        return "stop" if isinstance(extra["stop_reason"], str) else "eos"
    # Without stop sequences a "stop" can only be the model ending on its own.
    return "stop" if request.stop else "eos"


def _chat_logprobs(lp: Any) -> tuple[TokenLogprob, ...] | None:
    content = getattr(lp, "content", None) if lp is not None else None
    return _chat_logprobs_list(content or [])


def _chat_logprobs_list(content: list[Any]) -> tuple[TokenLogprob, ...] | None:
    """Chat logprobs gathered from stream chunks."""
    if not content:
        return None
    return tuple(
        TokenLogprob(t.token, float(t.logprob),
                     tuple((a.token, float(a.logprob)) for a in (t.top_logprobs or ())))
        for t in content
    )


def _merge_completion_logprobs(parts: list[Any]) -> tuple[TokenLogprob, ...] | None:
    """/completions logprobs gathered from stream chunks."""
    out: list[TokenLogprob] = []
    for lp in parts:
        got = _completion_logprobs(lp)
        if got:
            out.extend(got)
    return tuple(out) or None


def _completion_logprobs(lp: Any) -> tuple[TokenLogprob, ...] | None:
    if lp is None or not getattr(lp, "tokens", None):
        return None
    tops = lp.top_logprobs or [None] * len(lp.tokens)
    out = []
    for tok, val, top in zip(lp.tokens, lp.token_logprobs or [], tops, strict=False):
        if val is None:
            continue
        alts = tuple((k, float(v)) for k, v in (top or {}).items())
        out.append(TokenLogprob(tok, float(val), alts))
    return tuple(out) or None


def load(name: str, **options: Any) -> OpenAIModel:
    """Build an ``openai:MODEL`` backend.

    Raises:
        UserError: unknown option, bad prefix_mode, missing OPENAI_API_KEY for
            the official API, or an unreachable custom server.
    """
    unknown = set(options) - _KNOWN_OPTIONS
    if unknown:
        raise UserError(f"openai backend: unknown option(s) {sorted(unknown)}; known: {sorted(_KNOWN_OPTIONS)}")
    base_url = options.get("base_url") or os.environ.get("OPENAI_BASE_URL") or None
    api_key = options.get("api_key") or os.environ.get("OPENAI_API_KEY") or None
    official = _is_official(base_url)
    if official and not api_key:
        raise UserError(f"openai:{name} needs an API key: set OPENAI_API_KEY "
                        "(or use --base-url / OPENAI_BASE_URL for an OpenAI-compatible server)")
    kind, native_n, prefix_mode = ("openai", True, "instruct") if official else ("unknown", False, "instruct")
    if not official and options.get("probe", True):
        owner = probe_server(base_url, api_key)  # type: ignore[arg-type]
        if owner in _SERVER_KINDS:
            kind, native_n, prefix_mode = _SERVER_KINDS[owner]
    mode = options.get("prefix_mode") or prefix_mode
    if mode not in PREFIX_MODES:
        raise UserError(f"prefix_mode must be one of {', '.join(PREFIX_MODES)}, got {mode!r}")
    if options.get("native_n") is not None:
        native_n = _flag(options["native_n"], "native_n")
    stream = options.get("stream")
    if stream is None:
        stream = kind != "llama-cpp-python"  # its streams carry no usage
    return OpenAIModel(
        name, base_url=base_url, api_key=api_key, idle_timeout=idle_timeout_option(options),
        policy=RetryPolicy.from_options(options), prefix_mode=mode, native_n=native_n,
        chat_template=options.get("chat_template") or "chatml", server_kind=kind, stream=_flag(stream, "stream"),
        price=options.get("price"), max_concurrency=int(options.get("max_concurrency", 64)),
        reasoning=None if options.get("reasoning") is None else _flag(options["reasoning"], "reasoning"),
    )


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
        return value.lower() in ("true", "1", "yes", "on")
    raise UserError(f"{name} must be true or false, got {value!r}")
