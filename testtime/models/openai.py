"""``openai:MODEL`` -- OpenAI Chat Completions and OpenAI-compatible servers.

Works against the official API and any OpenAI-compatible server (vLLM
serve, SGLang, llama.cpp's ``llama-server``, llama-cpp-python's
``llama_cpp.server``) given ``base_url`` / ``OPENAI_BASE_URL``.

Servers differ in two ways that matter to search strategies, so the backend
probes ``GET /models`` once at load time (custom base URLs only) and picks:

* **n > 1**: native on the official API, vLLM and SGLang; fanned out as
  concurrent single-sample calls elsewhere (llama.cpp servers ignore or
  reject ``n``). A server that returns fewer choices than asked is topped up.
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

Options: ``base_url``, ``api_key``, ``timeout`` (s, default 120),
``max_retries`` (attempts, default 4), ``prefix_mode``, ``native_n``,
``chat_template``, ``probe`` (default True), ``max_concurrency``, ``price``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any
from urllib.parse import urlparse

from testtime.errors import MissingDependency, ModelAPIError, UserError
from testtime.models.base import Capabilities, Generation, GenerationRequest, Model, TokenLogprob
from testtime.models.prices import Price
from testtime.models.retry import RetryPolicy, translate_error, with_retries

PREFIX_MODES = ("continue", "assistant", "completions", "instruct")
#: Tokens added to the reservation for self-hosted servers' template text.
TEMPLATE_OVERHEAD = 64
_KNOWN_OPTIONS = {"base_url", "api_key", "timeout", "max_retries", "prefix_mode", "native_n",
                  "chat_template", "probe", "max_concurrency", "price"}
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


def probe_server(base_url: str, api_key: str | None, timeout: float = 3.0) -> str | None:
    """``owned_by`` of the first model a server lists (None if it does not say).

    Raises:
        UserError: the server cannot be reached.
    """
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = base_url.rstrip("/") + "/models"
    try:
        resp = httpx.get(url, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise UserError(
            f"cannot reach the OpenAI-compatible server at {base_url} ({type(exc).__name__}); "
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


#: Independent connection pools per model (see ``OpenAIModel._client``).
POOL_SHARDS = 8


class OpenAIModel(Model):
    """A chat model behind the OpenAI API or a compatible server."""

    backend = "openai"

    def __init__(
        self,
        name: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        policy: RetryPolicy | None = None,
        prefix_mode: str = "instruct",
        native_n: bool = True,
        chat_template: str = "chatml",
        server_kind: str = "openai",
        price: Price | None = None,
        max_concurrency: int = 64,
    ) -> None:
        super().__init__(name, price=price, max_concurrency=max_concurrency)
        self.base_url = base_url
        self._api_key = api_key
        self.timeout = timeout
        self.policy = policy or RetryPolicy()
        self.prefix_mode = prefix_mode
        self.native_n = native_n
        self.chat_template = chat_template
        self.server_kind = server_kind
        self._official = _is_official(base_url)
        self._clients: list[Any] = []
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._next_client = 0

    def __repr__(self) -> str:  # never show the key
        return f"<OpenAIModel {self.spec} server={self.server_kind} base_url={self.base_url!r}>"

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(native_n=self.native_n, logprobs=True, prefix=True,
                            prefix_cache=self.server_kind in ("vllm", "sglang", "openai"))

    def input_upper_bound(self, request: GenerationRequest) -> int:
        bound = super().input_upper_bound(request)
        if request.prefix and self.prefix_mode == "instruct":
            bound += len(_INSTRUCT.encode())
        if not self._official:
            # Self-hosted chat templates may inject a default system prompt
            # (SmolLM2's adds ~15 tokens) that the request never shows.
            bound += TEMPLATE_OVERHEAD
        return bound

    # ------------------------------------------------------------ plumbing
    def _client(self) -> Any:
        # An httpx pool belongs to the event loop that opened it.
        loop = asyncio.get_running_loop()
        if not self._clients or self._client_loop is not loop:
            from openai import AsyncOpenAI

            self._clients = [
                AsyncOpenAI(api_key=self._api_key or "not-needed", base_url=self.base_url,
                            timeout=self.timeout, max_retries=0)
                for _ in range(POOL_SHARDS)
            ]
            self._client_loop = loop
        # httpcore scans every pooled connection for every queued request, so
        # one pool costs O(N^2) CPU for N concurrent calls (~5 ms per call at
        # N=100 here). Round-robin over a few pools divides that by their count.
        self._next_client = (self._next_client + 1) % len(self._clients)
        return self._clients[self._next_client]

    def _translate(self, exc: BaseException) -> ModelAPIError | None:
        return translate_error(exc, backend="openai", model=self.name,
                               key_env=None if not self._official else "OPENAI_API_KEY",
                               base_url=self.base_url, secrets=[self._api_key])

    async def _call(self, fn: Any, **kwargs: Any) -> Any:
        return await with_retries(lambda: fn(**kwargs), policy=self.policy, model=self.spec,
                                  translate=self._translate)

    async def aclose(self) -> None:
        clients, self._clients = self._clients, []
        for client in clients:
            try:
                await client.close()
            except RuntimeError:  # its loop is gone; nothing left to close
                pass

    # ---------------------------------------------------------- generation
    async def generate(self, request: GenerationRequest) -> list[Generation]:
        if not self.native_n or request.n == 1:
            if request.n == 1:
                return await self._one_call(request, 1)
            return await super().generate(request)
        gens = await self._one_call(request, request.n)
        if len(gens) < request.n:
            # The server ignored n: remember, and top up with single calls.
            self.native_n = False
            missing = request.n - len(gens)
            base = request.seed
            extra = await asyncio.gather(*(
                self._limited(request.with_(n=1, seed=None if base is None else base + len(gens) + i))
                for i in range(missing)))
            gens.extend(extra)
        return gens[: request.n]

    async def _generate_one(self, request: GenerationRequest) -> Generation:
        return (await self._one_call(request, 1))[0]

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

    async def _one_call(self, request: GenerationRequest, n: int) -> list[Generation]:
        client = self._client()
        kw = self._common(request, n)
        if request.prefix and self.prefix_mode == "completions":
            prompt = _render_template(self.chat_template, request.chat_messages()) + request.prefix
            kw["max_tokens"] = request.max_tokens
            if request.logprobs:
                kw["logprobs"] = max(request.top_logprobs, 0)
            resp = await self._call(client.completions.create, prompt=prompt, **kw)
            choices = [(c.text or "", c.finish_reason, _completion_logprobs(c.logprobs), c)
                       for c in resp.choices]
        else:
            msgs, extra = self._messages(request)
            # The official API wants max_completion_tokens (o-series reject
            # max_tokens); compatible servers know max_tokens.
            kw["max_completion_tokens" if self._official else "max_tokens"] = request.max_tokens
            if request.logprobs:
                kw["logprobs"] = True
                # llama-cpp-python returns no logprobs unless top_logprobs is set.
                kw["top_logprobs"] = max(request.top_logprobs, 0)
            if extra:
                kw["extra_body"] = extra
            resp = await self._call(client.chat.completions.create, messages=msgs, **kw)
            choices = [((c.message.content or "") if c.message else "", c.finish_reason,
                        _chat_logprobs(c.logprobs), c) for c in resp.choices]
        if not choices:
            raise ModelAPIError(f"{self.spec}: the server returned no choices", backend="openai")
        return self._to_generations(request, resp, choices)

    def _to_generations(self, request: GenerationRequest, resp: Any,
                        choices: list[tuple[str, str | None, tuple[TokenLogprob, ...] | None, Any]]
                        ) -> list[Generation]:
        usage = getattr(resp, "usage", None)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        details = getattr(usage, "prompt_tokens_details", None)
        cached = int(getattr(details, "cached_tokens", 0) or 0)
        shares = _split(completion_tokens, [len(lp) if lp else len(t) + 1 for t, _, lp, _ in choices])
        gens = []
        for i, (text, finish, lps, raw) in enumerate(choices):
            if request.prefix and self.prefix_mode == "instruct" and text.startswith(request.prefix):
                text = text[len(request.prefix):]
            gens.append(Generation(
                text=text,
                finish_reason=_finish_reason(finish, raw, request),
                logprobs=lps if request.logprobs else None,
                usage=self.usage(prompt_tokens if i == 0 else 0, shares[i],
                                 cached if i == 0 else 0, calls=1 if i == 0 else 0),
                model=self.name,
                raw=raw,
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
    if not content:
        return None
    return tuple(
        TokenLogprob(t.token, float(t.logprob),
                     tuple((a.token, float(a.logprob)) for a in (t.top_logprobs or ())))
        for t in content
    )


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
        MissingDependency: the openai package is missing.
    """
    unknown = set(options) - _KNOWN_OPTIONS
    if unknown:
        raise UserError(f"openai backend: unknown option(s) {sorted(unknown)}; known: {sorted(_KNOWN_OPTIONS)}")
    try:
        import openai  # noqa: F401
    except ImportError:
        raise MissingDependency("openai", "openai") from None
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
        native_n = bool(options["native_n"])
    try:
        timeout = float(options.get("timeout", 120.0))
    except (TypeError, ValueError):
        raise UserError(f"timeout must be a number of seconds, got {options.get('timeout')!r}") from None
    return OpenAIModel(
        name, base_url=base_url, api_key=api_key, timeout=timeout,
        policy=RetryPolicy.from_options(options), prefix_mode=mode, native_n=native_n,
        chat_template=options.get("chat_template") or "chatml", server_kind=kind,
        price=options.get("price"), max_concurrency=int(options.get("max_concurrency", 64)),
    )
