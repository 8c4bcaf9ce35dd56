"""Thinking budgets for reasoning models: the generation-level budget policy.

A :class:`ThinkingPolicy` splits one generation into a thinking phase and an
answer, each with its own token budget, and works on every backend:

* **native** -- backends that budget thinking themselves. Anthropic gets
  extended thinking ``budget_tokens`` = the thinking budget and ``max_tokens``
  = thinking + answer; OpenAI reasoning models get ``reasoning_effort`` (from
  the budget, or the policy's) and ``max_completion_tokens`` = thinking +
  answer. Reasoning tokens come back in the usage and are shown apart.
* **tags** -- open models that think between ``<think>`` and ``</think>``
  (local, llama.cpp, vLLM, OpenAI-compatible servers, the simulator). The
  thinking is generated in segments through the spend path, each segment's
  ``max_tokens`` the thinking budget left and its stop sequence the closing
  tag. When thinking hits its budget it is ended -- the closing tag and the
  answer cue are appended to the prefix exactly where the budget ended -- and
  the answer is generated with its own budget (Elastic Reasoning's split;
  s1's budget forcing). With ``min_thinking``, a premature end is replaced by
  ``"Wait"`` and thinking continues, at most ``max_forcing`` times (s1). With
  ``notice_every``, a remaining-budget notice is written into the thinking
  every that many tokens (BudgetThinker, at the prompt level).

Every segment is one ordinary call of :meth:`testtime.context.RunContext.call`:
reserved at its worst case, streamed, settled at what the backend reported,
journaled and retried like any call. Before the first thinking segment the
answer's worst case is *held* on the ledger, so the reservation standing for a
generation always covers thinking + answer: thinking can never spend the
budget its answer needs, and a generation that cannot afford an answer does
not start. Thinking segments are shrunk to what fits (they never wait for
budget while the hold is in place, which could deadlock).

The returned :class:`~testtime.models.base.Generation` keeps the thinking in
``thinking`` and only the answer in ``text``, so answer extraction never reads
the thinking; thinking segments are settled with ``reasoning_tokens`` equal
to their output tokens, so ``usage.reasoning_tokens`` (total and ``by_role``)
is the thinking part of ``output_tokens``.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from testtime.budget import Usage
from testtime.errors import BudgetExhausted, SearchStop, UserError
from testtime.models.base import Capabilities, Generation, GenerationRequest, Model

if TYPE_CHECKING:
    from testtime.context import RunContext

MODES = ("auto", "tags", "native")
#: Request metadata key marking a thinking segment (its output is settled as reasoning tokens).
THINKING_SEGMENT = "thinking_segment"
#: Policy option names accepted by :meth:`ThinkingPolicy.from_options` (CLI ``-o`` style, task files).
OPTION_NAMES = ("thinking_budget", "answer_budget", "min_thinking", "max_forcing", "notice_every",
                "answer_cue", "wait_cue", "open_tag", "close_tag", "mode", "reasoning_effort")
_EFFORTS = ("minimal", "low", "medium", "high")


@dataclass(frozen=True, slots=True, kw_only=True)
class ThinkingPolicy:
    """How much a generation may think, and what happens at the limits.

    Attributes:
        thinking_budget: tokens of thinking per generation (None: the
            request's ``max_tokens``).
        answer_budget: tokens of the answer after thinking (None: the
            request's ``max_tokens``).
        min_thinking: thinking shorter than this is extended with
            ``wait_cue`` (budget forcing); 0: never.
        max_forcing: at most this many ``wait_cue`` continuations.
        notice_every: write a remaining-budget notice into the thinking every
            this many tokens (tags mode; native backends get one notice in the
            system prompt); None: no notices.
        tags: the opening and closing thinking delimiters.
        answer_cue: text appended after the closing tag before the answer
            (s1 uses ``"Final Answer:"``); its non-blank part starts ``text``.
        wait_cue: the continuation cue replacing a premature end.
        mode: ``auto`` (native when the backend budgets thinking itself,
            else tags), ``tags`` or ``native``.
        reasoning_effort: OpenAI ``reasoning_effort``; None: from the budget.
    """

    thinking_budget: int | None = None
    answer_budget: int | None = None
    min_thinking: int = 0
    max_forcing: int = 2
    notice_every: int | None = None
    tags: tuple[str, str] = ("<think>", "</think>")
    answer_cue: str = "\n\n"
    wait_cue: str = "Wait,"
    mode: str = "auto"
    reasoning_effort: str | None = None

    def __post_init__(self) -> None:
        for name in ("thinking_budget", "answer_budget", "notice_every"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise UserError(f"thinking policy: {name} must be a whole number >= 1, got {v!r}")
        for name in ("min_thinking", "max_forcing"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise UserError(f"thinking policy: {name} must be a whole number >= 0, got {v!r}")
        if (self.thinking_budget is not None and self.min_thinking > self.thinking_budget):
            raise UserError(f"thinking policy: min_thinking ({self.min_thinking}) is above "
                            f"thinking_budget ({self.thinking_budget})")
        if self.mode not in MODES:
            raise UserError(f"thinking policy: mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if (not isinstance(self.tags, tuple) or len(self.tags) != 2
                or not all(isinstance(t, str) and t for t in self.tags)):
            raise UserError(f"thinking policy: tags must be two non-empty strings, got {self.tags!r}")
        if self.reasoning_effort is not None and self.reasoning_effort not in _EFFORTS:
            raise UserError(f"thinking policy: reasoning_effort must be one of {', '.join(_EFFORTS)}, "
                            f"got {self.reasoning_effort!r}")

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> ThinkingPolicy | None:
        """A policy from ``{"thinking_budget": 2000, ...}`` (None when no option is set).

        Accepts :data:`OPTION_NAMES` (``open_tag``/``close_tag`` set ``tags``);
        anything else is a UserError naming it.
        """
        given = {k: v for k, v in options.items() if v is not None}
        if not given:
            return None
        unknown = sorted(set(given) - set(OPTION_NAMES))
        if unknown:
            raise UserError(f"unknown thinking option(s) {unknown}; known: {', '.join(OPTION_NAMES)}")
        kw: dict[str, Any] = {}
        for key, value in given.items():
            if key in ("open_tag", "close_tag"):
                continue
            if key in ("thinking_budget", "answer_budget", "notice_every", "min_thinking", "max_forcing"):
                value = _whole(key, value)
            kw[key] = value
        if "open_tag" in given or "close_tag" in given:
            kw["tags"] = (str(given.get("open_tag", "<think>")), str(given.get("close_tag", "</think>")))
        return cls(**kw)

    @property
    def open_tag(self) -> str:
        return self.tags[0]

    @property
    def close_tag(self) -> str:
        return self.tags[1]

    def thinking_for(self, request: GenerationRequest) -> int:
        """The thinking budget of one generation of ``request``."""
        return self.thinking_budget or request.thinking_budget or request.max_tokens

    def answer_for(self, request: GenerationRequest) -> int:
        """The answer budget of one generation of ``request``."""
        return self.answer_budget or request.max_tokens

    def to_dict(self) -> dict[str, Any]:
        return {"thinking_budget": self.thinking_budget, "answer_budget": self.answer_budget,
                "min_thinking": self.min_thinking, "max_forcing": self.max_forcing,
                "notice_every": self.notice_every, "tags": list(self.tags), "mode": self.mode}


def _whole(key: str, value: Any) -> int:
    if isinstance(value, str):
        text = value.strip().lower()
        scale = 1000 if text.endswith("k") else 1
        try:
            value = float(text[:-1] if scale > 1 else text) * scale
        except ValueError:
            raise UserError(f"thinking option {key} must be a whole number, got {value!r}") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"thinking option {key} must be a whole number, got {value!r}")
    return value


def notice_text(left: int) -> str:
    """The BudgetThinker remaining-budget notice written into the thinking."""
    return f"\n[{left} thinking tokens left]\n"


_NOTICE = re.compile(r"\n\[\d+ thinking tokens left\]\n")


def split_thinking(text: str, tags: tuple[str, str] = ("<think>", "</think>")) -> tuple[str, str]:
    """``(thinking, answer)`` of a reply that thinks inline between ``tags``.

    Only a reply that starts (after blanks) with the opening tag, or that
    contains a closing tag with no opening one (the template opened it), is
    split; anything else is all answer.
    """
    open_, close = tags
    stripped = text.lstrip()
    if stripped.startswith(open_):
        body = stripped[len(open_):]
        thinking, sep, answer = body.partition(close)
        if not sep:  # never closed: all thinking, no answer
            return thinking.strip("\n"), ""
        return thinking.strip("\n"), answer.lstrip("\n")
    if close in text and open_ not in text:
        thinking, _, answer = text.partition(close)
        return thinking.strip("\n"), answer.lstrip("\n")
    return "", text


def effort_for(thinking_budget: int) -> str:
    """An OpenAI ``reasoning_effort`` for a thinking budget (low < 2k <= medium < 8k <= high)."""
    if thinking_budget < 2048:
        return "low"
    if thinking_budget < 8192:
        return "medium"
    return "high"


def resolve_mode(policy: ThinkingPolicy, model: Model) -> str:
    """``native`` or ``tags`` for this policy on this backend."""
    if policy.mode != "auto":
        return policy.mode
    return "native" if model.capabilities.thinking else "tags"


def _budget_note(policy: ThinkingPolicy, request: GenerationRequest) -> str:
    note = (f"You have a thinking budget of {policy.thinking_for(request)} tokens and an answer "
            f"budget of {policy.answer_for(request)} tokens.")
    if policy.min_thinking:
        note += f" Think for at least {policy.min_thinking} tokens."
    return note


def native_request(request: GenerationRequest, policy: ThinkingPolicy) -> GenerationRequest:
    """``request`` for a backend that budgets thinking itself (Anthropic, OpenAI reasoning)."""
    changes: dict[str, Any] = {"thinking": None, "thinking_budget": policy.thinking_for(request),
                               "max_tokens": policy.answer_for(request)}
    if policy.reasoning_effort is not None:
        changes["reasoning_effort"] = policy.reasoning_effort
    if policy.notice_every or policy.min_thinking:
        # BudgetThinker at the prompt level: the API gives no way in mid-call.
        note = _budget_note(policy, request)
        changes["system"] = f"{request.system}\n\n{note}" if request.system else note
    return request.with_(**changes)


def _thinking_prefix(policy: ThinkingPolicy, request: GenerationRequest) -> str | None:
    """The prefix thinking continues from (None: the prefix already closed its thinking)."""
    base = request.prefix
    open_, close = policy.tags
    at = base.rfind(open_)
    if at >= 0:
        return None if close in base[at:] else base
    if close in base:
        return None
    return base + open_ + "\n"


def _answer_estimate(policy: ThinkingPolicy, request: GenerationRequest, head: str,
                     thinking: int | None = None) -> GenerationRequest:
    # What the answer request will look like once thinking used ``thinking`` tokens
    # (default its whole budget): 5 bytes and 1 word per thinking token (real
    # text averages ~4 bytes/token).
    filler = "xxxx " * (policy.thinking_for(request) if thinking is None else thinking)
    return _segment(request, head + filler + policy.close_tag + policy.answer_cue,
                    policy.answer_for(request), request.stop, thinking=False)


def _segment(request: GenerationRequest, prefix: str, max_tokens: int, stop: tuple[str, ...], *,
             thinking: bool) -> GenerationRequest:
    meta = dict(request.metadata)
    if thinking:
        meta[THINKING_SEGMENT] = True
    else:
        meta.pop(THINKING_SEGMENT, None)
    return request.with_(prefix=prefix, max_tokens=max(int(max_tokens), 1), stop=tuple(stop), n=1,
                         thinking=None, thinking_budget=None, logprobs=request.logprobs and not thinking,
                         metadata=meta)


def worst_case(model: Model, request: GenerationRequest, policy: ThinkingPolicy) -> Usage:
    """A planning estimate of one thinking generation's cost (times ``request.n``).

    Native mode is exact (the backend's own bound); tags mode counts the first
    thinking segment and the answer after a full-budget thinking phase. It is
    what strategies size their sample counts by; each segment is still
    reserved at its own exact worst case when it is sent.
    """
    if resolve_mode(policy, model) == "native":
        return model.worst_case(native_request(request, policy))
    head = _thinking_prefix(policy, request)
    if head is None:
        return model.worst_case(request.with_(thinking=None, max_tokens=policy.answer_for(request)))
    one = request.with_(n=1)
    think = model.worst_case(_segment(one, head, policy.thinking_for(one), (policy.close_tag,), thinking=True))
    answer = model.worst_case(_answer_estimate(policy, one, head))
    total = think + answer
    n = request.n
    return Usage(input_tokens=total.input_tokens * n, output_tokens=total.output_tokens * n,
                 calls=total.calls * n, usd=total.usd * n)


def _affordable_thinking(ctx: RunContext, model: Model, policy: ThinkingPolicy, request: GenerationRequest,
                         head: str) -> int:
    """The thinking budget this generation gets: the policy's, or (Elastic) as much
    of it as fits together with the answer after it (0: not even the answer fits now)."""
    def cost(k: int) -> Usage:
        think = _segment(request, head, max(k, 1), (policy.close_tag,), thinking=True)
        answer = model.worst_case(_answer_estimate(policy, request, head, k))
        return answer + model.worst_case(think) if k > 0 else answer

    full = policy.thinking_for(request)
    lo = ctx.ledger.largest_fit(cost, full)
    if lo == 0 and ctx.ledger.in_flight() > 0:
        return full  # calls in flight may return slack: reserve() waits for it
    return lo


def _fit(ctx: RunContext, model: Model, request: GenerationRequest, *, minimum: int = 1) -> GenerationRequest | None:
    """``request`` with max_tokens shrunk until its worst case fits now (None: not ``minimum``)."""
    lo = ctx.ledger.largest_fit(lambda k: model.worst_case(request.with_(max_tokens=max(k, 1))),
                                request.max_tokens)
    if lo == request.max_tokens:
        return request
    if lo < max(minimum, 1):
        return None
    return request.with_(max_tokens=lo)


@dataclass(slots=True)
class _Run:
    """The state of one tags-mode generation."""

    thinking: str = ""
    tokens: int = 0
    forced: int = 0
    notices: int = 0
    segments: int = 0
    ended: str = "budget"
    usage: list[Usage] = field(default_factory=list)


async def generate(ctx: RunContext, request: GenerationRequest, policy: ThinkingPolicy, *,
                   role: str = "solve", model: Model | None = None) -> list[Generation]:
    """Generate under ``policy`` through ``ctx``'s spend path (what ``ctx.generate`` calls).

    Raises what :meth:`RunContext.generate` raises (budget refusals, failed
    calls) when not even the first sample could be drawn.
    """
    model = model or ctx.model
    if isinstance(model, ThinkingModel):
        model = model.inner
    if resolve_mode(policy, model) == "native":
        return await ctx.generate(native_request(request, policy), role=role, model=model)
    if request.n == 1:
        return [await _drive(ctx, request, policy, role, model)]
    base = request.seed
    parts = [request.with_(n=1, seed=None if base is None else base + i) for i in range(request.n)]
    results = await asyncio.gather(*(_drive(ctx, p, policy, role, model) for p in parts),
                                   return_exceptions=True)
    gens = [r for r in results if isinstance(r, Generation)]
    errors = [r for r in results if isinstance(r, BaseException)]
    hard = [e for e in errors if not isinstance(e, SearchStop)]
    if hard:
        raise hard[0]
    if not gens and errors:
        raise errors[0]
    return gens


async def _drive(ctx: RunContext, request: GenerationRequest, policy: ThinkingPolicy, role: str,
                 model: Model) -> Generation:
    """One sample: thinking segments, then the answer with its own budget."""
    head = _thinking_prefix(policy, request)
    if head is None:  # the prefix already closed thinking: an ordinary answer call
        plain = request.with_(thinking=None, max_tokens=policy.answer_for(request))
        return (await ctx.call(plain, role=role, model=model))[0]
    budget = _affordable_thinking(ctx, model, policy, request, head)
    hold = await ctx.reserve(model.worst_case(_answer_estimate(policy, request, head, budget)),
                             role=role, model=model)
    st = _Run()
    try:
        await _think(ctx, request, policy, role, model, head, budget, st)
    except BaseException:
        hold.release()
        raise
    if st.ended == "budget" and budget < policy.thinking_for(request):
        st.ended = "budget_left"  # Elastic: thinking got what the run had left beside the answer
    answer_prefix = head + st.thinking + policy.close_tag + policy.answer_cue
    answer_req = _segment(request, answer_prefix, policy.answer_for(request), request.stop, thinking=False)
    # Hand the hold over to the answer's own reservation with no await in
    # between, so no other call can take the budget held for it.
    hold.release()
    fitted = _fit(ctx, model, answer_req)
    if fitted is None:
        ctx.tracer.emit("budget_refused", role=role, model=model.spec, dimension="answer",
                        requested=answer_req.max_tokens, remaining=0)
        answer = Generation(text="", finish_reason="length", model=model.name)
    else:
        answer = (await ctx.call(fitted, role=role, model=model))[0]
        st.usage.append(answer.usage)
        st.segments += 1
    return _result(ctx, policy, request, role, model, st, answer)


async def _think(ctx: RunContext, request: GenerationRequest, policy: ThinkingPolicy, role: str,
                 model: Model, head: str, budget: int, st: _Run) -> None:
    close = policy.close_tag
    while st.tokens < budget:
        room = budget - st.tokens
        if policy.notice_every:
            room = min(room, policy.notice_every - st.tokens % policy.notice_every)
        seg = _segment(request, head + st.thinking, room, (close,), thinking=True)
        # Never wait for budget while holding the answer's share: shrink instead.
        fitted = _fit(ctx, model, seg)
        if fitted is None:
            st.ended = "budget_left"
            return
        try:
            # held=1: a retried segment that no longer fits must not wait for the
            # answer's hold, which this generation itself keeps open.
            gen = (await ctx.call(fitted, role=role, model=model, held=1))[0]
        except BudgetExhausted:
            st.ended = "budget_left"
            return
        st.segments += 1
        st.usage.append(gen.usage)
        out = gen.thinking + gen.text
        closed = close in out
        if closed:  # a server that ignores stop sequences
            out = out[: out.index(close)]
        used = gen.usage.output_tokens or (model.count_tokens(out) or len(out.split()))
        st.tokens += used
        st.thinking += out
        natural = closed or gen.finish_reason != "length"
        if natural:
            if st.tokens < policy.min_thinking and st.forced < policy.max_forcing and st.tokens < budget:
                # Budget forcing: the model stopped too early; make it go on.
                sep = "" if not st.thinking or st.thinking[-1].isspace() else " "
                st.thinking += sep + policy.wait_cue
                st.forced += 1
                continue
            st.ended = "model"
            return
        if fitted.max_tokens < seg.max_tokens:
            st.ended = "budget_left"  # shrunk to what the run had left
            return
        if st.tokens >= budget:
            break
        if policy.notice_every and used:
            st.thinking += notice_text(budget - st.tokens)
            st.notices += 1
    st.ended = "budget"


def _result(ctx: RunContext, policy: ThinkingPolicy, request: GenerationRequest, role: str, model: Model,
            st: _Run, answer: Generation) -> Generation:
    total = Usage()
    for u in st.usage:
        total = total + u
    cue = policy.answer_cue.strip()
    text = (cue + (" " if answer.text and not answer.text[:1].isspace() else "") + answer.text) if cue else answer.text
    thinking = _NOTICE.sub("\n", st.thinking).strip("\n")
    info = {"thinking_tokens": st.tokens, "answer_tokens": answer.usage.output_tokens,
            "forced": st.forced, "notices": st.notices, "segments": st.segments, "ended": st.ended}
    if ctx.tracer.sinks:
        ctx.tracer.emit("thinking", model=model.spec, role=role, **info,
                        budget={"thinking": policy.thinking_for(request), "answer": policy.answer_for(request)},
                        thinking=thinking[:2000])
    return Generation(text=text, finish_reason=answer.finish_reason, logprobs=answer.logprobs,
                      usage=replace(total, reasoning_tokens=min(st.tokens, total.output_tokens)),
                      model=answer.model or model.name, raw={"thinking": info}, thinking=thinking)


class ThinkingModel(Model):
    """A backend whose every generation runs under a :class:`ThinkingPolicy`.

    Wrap the run's model with it (``testtime run --thinking-budget``, or
    ``with_thinking(model, thinking_budget=...)`` in Python) and every
    strategy and stage thinks within the policy: ``ctx.generate`` unwraps it
    and drives the segments on the inner backend, and :meth:`worst_case`
    covers thinking + answer, so strategies size their sample counts right.
    """

    def __init__(self, inner: Model, policy: ThinkingPolicy) -> None:
        super().__init__(inner.name, price=inner.price, max_concurrency=inner.max_concurrency)
        self.inner = inner
        self.policy = policy
        # The inner backend's identity, price provenance and retries.
        self.backend = inner.backend  # type: ignore[misc]
        self.price_source = inner.price_source
        self.retry_policy = inner.retry_policy

    @property
    def capabilities(self) -> Capabilities:
        return self.inner.capabilities

    def count_tokens(self, text: str) -> int | None:
        return self.inner.count_tokens(text)

    def input_upper_bound(self, request: GenerationRequest) -> int:
        return self.inner.input_upper_bound(request)

    def worst_case(self, request: GenerationRequest) -> Usage:
        return worst_case(self.inner, request, request.thinking or self.policy)

    def fit_size(self, request: GenerationRequest) -> int:
        """Budget fitting shortens the thinking; the answer keeps its own budget."""
        return (request.thinking or self.policy).thinking_for(request)

    def resized(self, request: GenerationRequest, size: int) -> GenerationRequest:
        policy = request.thinking or self.policy
        size = max(int(size), 1)
        return request.with_(thinking=replace(policy, thinking_budget=size,
                                              min_thinking=min(policy.min_thinking, size)))

    async def generate(self, request: GenerationRequest) -> list[Generation]:
        """For callers without a run: the policy applied under an unlimited ledger."""
        from testtime.context import RunContext

        return await generate(RunContext(model=self.inner), request, request.thinking or self.policy)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __repr__(self) -> str:
        return f"<ThinkingModel {self.inner!r} {self.policy.to_dict()}>"


def with_thinking(model: Model, policy: ThinkingPolicy | None = None, **options: Any) -> Model:
    """``model`` under a thinking policy (``options`` as :meth:`ThinkingPolicy.from_options`).

    Returns ``model`` itself when neither a policy nor any option is given.
    """
    if policy is None:
        policy = ThinkingPolicy.from_options(options)
    elif options:
        raise UserError("give a ThinkingPolicy or policy options, not both")
    if policy is None:
        return model
    if isinstance(model, ThinkingModel):
        model = model.inner
    return ThinkingModel(model, policy)


def split_inline_thinking(generations: list[Generation],
                          tags: tuple[str, str] = ("<think>", "</think>")) -> list[Generation]:
    """Generations whose text thinks inline (see :func:`split_thinking`) with the thinking moved out.

    The spend path applies it to every reply, so a think-tag model run without
    a policy still never has its thinking read as its answer.
    """
    close = tags[1]
    for g in generations:  # a plain loop: this runs on every reply, and most hold no tag
        if close in g.text:
            break
    else:
        return generations
    out = []
    for g in generations:
        thinking, answer = split_thinking(g.text, tags) if close in g.text else ("", g.text)
        if not thinking:
            out.append(g)
            continue
        joined = f"{g.thinking}\n{thinking}" if g.thinking else thinking
        out.append(replace(g, text=answer, thinking=joined))
    return out
