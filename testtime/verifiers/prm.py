"""Process reward models: ``prm:llm:MODEL``, ``prm:vllm:MODEL_OR_URL``, ``prm:confidence``.

* :class:`LLMJudgePRM` (``prm:llm:MODEL``) -- a generative step judge. By
  default one call shows all steps and asks for a ``Step i: score`` line per
  step; ``per_step=true`` asks one call per step (is the last step right,
  given the ones before). Scores are read leniently (``0.8``, ``80%``,
  ``4/5``, ``8/10``, ``correct``/``incorrect``...); a step whose score cannot
  be read gets a neutral 0.5 and a ``note`` trace event.
* :class:`VLLMPRM` (``prm:vllm:...``) -- a discriminative PRM such as
  Qwen2.5-Math-PRM served by vLLM. Steps are joined with the separator
  token (``<extra_0>``, also appended after the last step) inside the chat
  template, and the server's ``/pooling`` endpoint returns one
  ``[P(negative), P(positive)]`` pair per separator; the step score is the
  positive-class probability. ``endpoint=classify`` instead sends one input
  per step prefix to ``/classify`` and reads ``probs[positive]``. A spec
  that is not an ``http(s)://`` URL loads the model in-process with vLLM
  (GPU; extra ``vllm``).
* :class:`ConfidencePRM` (``prm:confidence``) -- no extra model: the
  policy's own token log-probabilities. Chat APIs cannot score *given* text,
  so a step is scored from logprobs in one of two ways: (1) logprobs
  recorded when the step was generated, handed over with :meth:`record`
  (free); else (2) the confidence of the policy's continuation from that
  point: a short greedy generation (``probe_tokens`` tokens, with logprobs)
  after the prefix ending in the step, scored as ``exp(mean logprob)``
  (``metric=prob``) or as self-certainty ``1 - H/log k`` over the top-k
  alternatives (``metric=certainty``). A policy that is confident about
  what follows a step rates the state it leads to highly. Scores are cached
  per (question, prefix), so re-scoring a growing path pays only for new
  steps.

Every model call goes through ``ctx.generate(..., role="verify")``.
Aggregations (``min``, ``last``, ``product``, ``mean``) are chosen with
``?aggregation=...``.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from testtime.errors import MissingDependency, ModelAPIError, UserError
from testtime.models.base import Capabilities, Generation, GenerationRequest, Model, TokenLogprob
from testtime.models.prices import Price
from testtime.verifiers.base import AGGREGATIONS, ProcessRewardModel

if TYPE_CHECKING:
    from testtime.context import RunContext
    from testtime.search.base import Problem


def _check_aggregation(aggregation: str) -> str:
    if aggregation not in AGGREGATIONS:
        raise UserError(f"unknown PRM aggregation {aggregation!r}; choose one of {', '.join(AGGREGATIONS)}")
    return aggregation


def _emit(ctx: RunContext, prm: ProcessRewardModel, label: str, scores: list[float]) -> None:
    from testtime.verifiers.base import aggregate

    ctx.tracer.emit("prm_scores", prm=label, scores=[round(s, 4) for s in scores],
                    aggregate=round(aggregate(scores, prm.aggregation), 4) if scores else None)


# ======================================================== generative judge
JUDGE_SYSTEM = "You grade each step of a solution for correctness. You are strict and concise."

JUDGE_ALL = (
    "Question:\n{question}\n\nSolution steps:\n{steps}\n\n"
    "For each step, judge whether it is correct and useful given the steps before it. "
    "Reply with exactly one line per step, in order, of the form 'Step N: S' where S is a "
    "number between 0 (wrong) and 1 (certainly correct). Write nothing else."
)

JUDGE_ONE = (
    "Question:\n{question}\n\nSolution so far:\n{steps}\n\n"
    "Is the last step (Step {n}) correct given the steps before it? Reply with one line "
    "'Score: S' where S is a number between 0 (wrong) and 1 (certainly correct)."
)

_STEP_LINE = re.compile(r"step\s*(\d+)\**\s*[:\-=.)\]]*\s*(.*?)(?=\bstep\s*\d+|\n|$)", re.I)
_WORDS = {"correct": 1.0, "right": 1.0, "yes": 1.0, "good": 1.0, "valid": 1.0, "true": 1.0,
          "incorrect": 0.0, "wrong": 0.0, "no": 0.0, "bad": 0.0, "invalid": 0.0, "false": 0.0,
          "✓": 1.0, "✔": 1.0, "✗": 0.0, "✘": 0.0, "+": 1.0, "-": 0.0}


def parse_score(text: str) -> float | None:
    """A score in [0, 1] from a judge's words: ``0.8``, ``80%``, ``4/5``, ``8/10``, ``correct``..."""
    t = (text or "").strip().strip("*`").lower()
    if not t:
        return None
    m = re.search(r"(-?\d+(?:\.\d+)?)\s*(%|/\s*(\d+(?:\.\d+)?))?", t)
    if m:
        value = float(m.group(1))
        if m.group(2) == "%":
            value /= 100.0
        elif m.group(3):
            den = float(m.group(3))
            value = value / den if den else math.nan
        elif value > 1.0 and value <= 10.0:
            value /= 10.0  # a 0-10 scale
        if 0.0 <= value <= 1.0:
            return value
        return None
    first = re.split(r"[\s,.;:()]+", t)
    for word in first:
        if word in _WORDS:
            return _WORDS[word]
    for sym in ("✓", "✔", "✗", "✘"):
        if sym in t:
            return _WORDS[sym]
    return None


def parse_step_scores(text: str, n_steps: int) -> list[float | None]:
    """One score (or None) per step from a judge's ``Step i: S`` lines.

    Lines naming a step number outside 1..n are ignored; when no such line
    exists but the reply holds exactly ``n_steps`` readable scores (one per
    line), they are taken in order.
    """
    out: list[float | None] = [None] * n_steps
    found = False
    for m in _STEP_LINE.finditer(text or ""):
        i = int(m.group(1)) - 1
        if 0 <= i < n_steps:
            score = parse_score(m.group(2))
            if score is not None:
                out[i] = score
                found = True
    if not found:
        values = [s for ln in (text or "").splitlines() if (s := parse_score(ln)) is not None]
        if len(values) == n_steps:
            return list(values)
    return out


def _numbered(steps: Sequence[str]) -> str:
    return "\n".join(f"Step {i + 1}: {s.strip()}" for i, s in enumerate(steps))


class LLMJudgePRM(ProcessRewardModel):
    """A generative step judge (see the module docstring).

    Args:
        model: the judge; None judges with the policy (``ctx.model``).
        per_step: one call per step instead of one call for all steps.
        max_tokens: output budget of a call (default: 12 per step + 24, or 24 per step call).
        temperature: sampling temperature (default 0: the judge should be stable).
        aggregation: how :meth:`score` folds step scores.
    """

    name = "prm:llm"

    def __init__(self, model: Model | None = None, *, per_step: bool = False, max_tokens: int | None = None,
                 temperature: float = 0.0, aggregation: str = "min") -> None:
        self.model = model
        self.per_step = per_step
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.aggregation = _check_aggregation(aggregation)

    def _request(self, prompt: str, max_tokens: int, ctx: RunContext) -> GenerationRequest:
        return GenerationRequest(prompt=prompt, system=JUDGE_SYSTEM, max_tokens=max_tokens,
                                 temperature=self.temperature, seed=ctx.next_seed(),
                                 metadata={"purpose": "prm"})

    async def score_steps(self, problem: Problem, steps: Sequence[str], ctx: RunContext) -> list[float]:
        if not steps:
            return []
        model = self.model or ctx.model
        if self.per_step:
            scores = await self._per_step(problem, steps, ctx, model)
        else:
            prompt = JUDGE_ALL.format(question=problem.question, steps=_numbered(steps))
            gens = await ctx.generate(self._request(prompt, self.max_tokens or 12 * len(steps) + 24, ctx),
                                      role="verify", model=model)
            scores = parse_step_scores(gens[0].text, len(steps))
            missing = [i + 1 for i, s in enumerate(scores) if s is None]
            if missing:
                ctx.tracer.emit("note", message=f"prm:llm could not read scores for steps {missing}; "
                                "using 0.5", output=gens[0].text[-300:])
        final = [0.5 if s is None else s for s in scores]
        _emit(ctx, self, f"prm:llm:{model.spec}", final)
        return final

    async def _per_step(self, problem: Problem, steps: Sequence[str], ctx: RunContext,
                        model: Model) -> list[float | None]:
        async def one(i: int) -> float | None:
            prompt = JUDGE_ONE.format(question=problem.question, steps=_numbered(steps[: i + 1]), n=i + 1)
            gens = await ctx.generate(self._request(prompt, self.max_tokens or 24, ctx),
                                      role="verify", model=model)
            text = gens[0].text
            m = re.search(r"score\s*[:=]?\s*(.*)", text, re.I)
            score = parse_score(m.group(1) if m else text)
            if score is None:
                ctx.tracer.emit("note", message=f"prm:llm could not read the score of step {i + 1}; "
                                "using 0.5", output=text[-300:])
            return score

        return list(await asyncio.gather(*(one(i) for i in range(len(steps)))))


# =============================================== discriminative (vLLM) PRM
QWEN_PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


def qwen_prm_prompt(question: str, steps: Sequence[str], *, sep: str = "<extra_0>",
                    system: str = QWEN_PRM_SYSTEM) -> str:
    """The Qwen2.5-Math-PRM input: chat template, steps each followed by ``sep``."""
    answer = "".join(s.strip() + sep for s in steps)
    return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
            f"<|im_start|>assistant\n{answer}<|im_end|><|endoftext|>")


def plain_prm_prompt(question: str, steps: Sequence[str], *, sep: str = "<extra_0>",
                     system: str = "") -> str:
    """A template-free input: question, newline, steps each followed by ``sep``."""
    return question.strip() + "\n" + "".join(s.strip() + sep for s in steps)


TEMPLATES = {"qwen": qwen_prm_prompt, "plain": plain_prm_prompt}


def positive_probs(rows: Any, positive: int) -> list[float]:
    """Per-step positive-class probabilities from a pooling payload.

    Accepts ``[[p_neg, p_pos], ...]`` (one pair per step), a flat list of
    scalars (already one score per step), or a 1-row nested list. Scalars
    outside [0, 1] are treated as logits (sigmoid).
    """
    if isinstance(rows, dict):
        rows = rows.get("data", rows.get("probs"))
    if not isinstance(rows, list):
        raise ModelAPIError(f"PRM server returned an unexpected payload: {str(rows)[:200]}", backend="vllm-prm")
    out = []
    for r in rows:
        if isinstance(r, list):
            if len(r) == 1:
                v = float(r[0])
            elif positive < len(r):
                v = float(r[positive])
            else:
                raise ModelAPIError(f"PRM row {r[:4]} has no class {positive}", backend="vllm-prm")
        else:
            v = float(r)
        if not 0.0 <= v <= 1.0:
            v = 1.0 / (1.0 + math.exp(-v))
        out.append(v)
    return out


class PRMServerModel(Model):
    """The budgeted 'model' behind :class:`VLLMPRM`: one HTTP call -> step scores in ``raw``.

    It reads the prepared inputs from ``request.metadata["inputs"]`` (the
    request's prompt holds the same text, so the reservation covers it) and
    returns one Generation whose ``raw`` is the list of per-step scores.
    """

    backend = "vllm-prm"

    def __init__(self, base_url: str, *, model: str | None = None, endpoint: str = "pooling",
                 positive: int = 1, api_key: str | None = None, timeout: float = 120.0,
                 price: Price | None = None) -> None:
        super().__init__(model or "prm", price=price or Price(0.0, 0.0))
        self.base_url = base_url.rstrip("/")
        if self.base_url.endswith("/v1"):
            self.base_url = self.base_url[:-3]
        self.served = model
        self.endpoint = endpoint.strip("/")
        self.positive = positive
        self.api_key = api_key
        self.timeout = timeout
        self._client: Any = None

    @property
    def spec(self) -> str:
        return f"vllm-prm:{self.base_url}"

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(native_n=True)

    def _http(self) -> Any:
        import httpx

        if self._client is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._client = httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout, headers=headers)
        return self._client

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        try:
            resp = await self._http().post(path, json=body)
        except httpx.HTTPError as exc:
            raise ModelAPIError(f"PRM server {self.base_url}: {type(exc).__name__}: {exc}", retryable=True,
                                backend=self.backend) from None
        if resp.status_code >= 400:
            raise ModelAPIError(f"PRM server {self.base_url}{path} answered {resp.status_code}: "
                                f"{resp.text[:300]}", status=resp.status_code,
                                retryable=resp.status_code in (408, 429) or resp.status_code >= 500,
                                backend=self.backend)
        return resp.json()

    async def served_model(self) -> str:
        if self.served is None:
            data = await self._post_get("/v1/models")
            try:
                self.served = str(data["data"][0]["id"])
            except (KeyError, IndexError, TypeError):
                raise ModelAPIError(f"PRM server {self.base_url} lists no model; pass ?model=NAME",
                                    backend=self.backend) from None
        return self.served

    async def _post_get(self, path: str) -> dict[str, Any]:
        import httpx

        try:
            resp = await self._http().get(path)
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            raise ModelAPIError(f"PRM server {self.base_url}{path}: {exc}", retryable=True,
                                backend=self.backend) from None
        return resp.json()

    async def generate(self, request: GenerationRequest) -> list[Generation]:
        inputs: list[str] = list(request.metadata["inputs"])
        model = await self.served_model()
        if self.endpoint == "classify":
            data = await self._post("/classify", {"model": model, "input": inputs})
            scores = [positive_probs([item.get("probs") or item.get("data")], self.positive)[0]
                      for item in data.get("data", [])]
        else:
            data = await self._post(f"/{self.endpoint}", {"model": model, "input": inputs[0]})
            items = data.get("data") or []
            if not items:
                raise ModelAPIError(f"PRM server returned no data: {str(data)[:200]}", backend=self.backend)
            scores = positive_probs(items[0].get("data"), self.positive)
        prompt_tokens = int((data.get("usage") or {}).get("prompt_tokens") or 0)
        return [Generation(text=" ".join(f"{s:.4f}" for s in scores), finish_reason="stop",
                           usage=self.usage(prompt_tokens, 0), model=model, raw=scores)]

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class InProcessPRMModel(Model):
    """vLLM in-process (``vllm.LLM(runner="pooling")``); loaded on first use."""

    backend = "vllm-prm"

    def __init__(self, name: str, *, positive: int = 1, engine_options: dict[str, Any] | None = None) -> None:
        super().__init__(name, price=Price(0.0, 0.0))
        self.positive = positive
        self.engine_options = dict(engine_options or {})
        self._llm: Any = None

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(native_n=True)

    def _engine(self) -> Any:
        if self._llm is None:
            try:
                import vllm
            except ImportError:
                raise MissingDependency("vllm", "vllm", "prm:vllm in-process") from None
            opts = {"runner": "pooling", "trust_remote_code": True, **self.engine_options}
            self._llm = vllm.LLM(model=self.name, **opts)
        return self._llm

    def _score_sync(self, text: str) -> tuple[list[float], int]:
        llm = self._engine()
        # vLLM renamed this API across releases: reward() where it exists, else encode().
        outputs = llm.reward([text]) if hasattr(llm, "reward") else llm.encode([text])
        out = outputs[0]
        data = out.outputs.data
        rows = data.tolist() if hasattr(data, "tolist") else list(data)
        return positive_probs(rows, self.positive), len(getattr(out, "prompt_token_ids", []) or [])

    async def generate(self, request: GenerationRequest) -> list[Generation]:
        scores, tokens = await asyncio.to_thread(self._score_sync, request.metadata["inputs"][0])
        return [Generation(text=" ".join(f"{s:.4f}" for s in scores), finish_reason="stop",
                           usage=self.usage(tokens, 0), model=self.name, raw=scores)]


class VLLMPRM(ProcessRewardModel):
    """A discriminative PRM served by vLLM (HTTP) or run in-process.

    Args:
        model: a :class:`PRMServerModel` or :class:`InProcessPRMModel`.
        template: ``qwen`` (Qwen2.5-Math-PRM chat format) or ``plain``.
        sep: the step separator token.
        system: the system prompt of the ``qwen`` template.
        aggregation: how :meth:`score` folds step scores.
    """

    name = "prm:vllm"

    def __init__(self, model: Model, *, template: str = "qwen", sep: str = "<extra_0>",
                 system: str = QWEN_PRM_SYSTEM, aggregation: str = "min") -> None:
        if template not in TEMPLATES:
            raise UserError(f"unknown PRM template {template!r}; choose one of {', '.join(TEMPLATES)}")
        self.model = model
        self.template = template
        self.sep = sep
        self.system = system
        self.aggregation = _check_aggregation(aggregation)

    def _inputs(self, problem: Problem, steps: Sequence[str]) -> list[str]:
        fmt = TEMPLATES[self.template]
        if getattr(self.model, "endpoint", "pooling") == "classify":
            return [fmt(problem.question, steps[: i + 1], sep=self.sep, system=self.system)
                    for i in range(len(steps))]
        return [fmt(problem.question, steps, sep=self.sep, system=self.system)]

    async def score_steps(self, problem: Problem, steps: Sequence[str], ctx: RunContext) -> list[float]:
        if not steps:
            return []
        inputs = self._inputs(problem, steps)
        request = GenerationRequest(prompt="\n".join(inputs), max_tokens=1, temperature=0.0,
                                    metadata={"inputs": tuple(inputs), "purpose": "prm"})
        gens = await ctx.generate(request, role="verify", model=self.model)
        scores = list(gens[0].raw)
        if len(scores) != len(steps):
            ctx.tracer.emit("note", message=f"prm:vllm returned {len(scores)} scores for {len(steps)} steps "
                            "(is the separator token right?); missing steps get 0.5")
            scores = (scores + [0.5] * len(steps))[: len(steps)]
        _emit(ctx, self, f"prm:vllm:{self.model.name}", scores)
        return scores


# ======================================================== confidence PRM
def confidence(logprobs: Sequence[TokenLogprob], metric: str = "prob") -> float | None:
    """Confidence in [0, 1] of a token sequence.

    ``prob``: exp(mean logprob) (the geometric-mean token probability).
    ``certainty``: mean over tokens of ``1 - H(p)/log k`` where ``p`` is the
    token's top-k alternatives renormalised (self-certainty; falls back to
    ``prob`` for tokens without alternatives).
    """
    if not logprobs:
        return None
    if metric == "prob":
        return math.exp(min(0.0, sum(t.logprob for t in logprobs) / len(logprobs)))
    if metric != "certainty":
        raise UserError(f"unknown confidence metric {metric!r}; choose prob or certainty")
    vals = []
    for t in logprobs:
        if len(t.top) >= 2:
            ps = [math.exp(lp) for _, lp in t.top]
            z = sum(ps)
            ent = -sum((p / z) * math.log(p / z) for p in ps if p > 0)
            vals.append(1.0 - ent / math.log(len(ps)))
        else:
            vals.append(math.exp(min(0.0, t.logprob)))
    return min(1.0, max(0.0, sum(vals) / len(vals)))


class ConfidencePRM(ProcessRewardModel):
    """Step scores from the policy's own token log-probabilities (no extra model).

    Args:
        metric: ``prob`` (exp mean logprob) or ``certainty`` (top-k self-certainty).
        probe_tokens: tokens of the continuation probe when a step has no
            recorded logprobs.
        top_logprobs: alternatives requested per probe token (for ``certainty``).
        aggregation: how :meth:`score` folds step scores.
    """

    name = "prm:confidence"
    #: Step requests ask for logprobs when this PRM is in use, and
    #: RunContext.generate hands them to :meth:`record`, so steps generated
    #: during the search are scored without probe calls.
    wants_logprobs = True

    def __init__(self, *, metric: str = "prob", probe_tokens: int = 8, top_logprobs: int = 5,
                 aggregation: str = "min", cache_size: int = 4096) -> None:
        if metric not in ("prob", "certainty"):
            raise UserError(f"unknown confidence metric {metric!r}; choose prob or certainty")
        if probe_tokens < 1:
            raise UserError(f"probe_tokens must be >= 1, got {probe_tokens}")
        self.metric = metric
        self.probe_tokens = probe_tokens
        self.top_logprobs = top_logprobs
        self.aggregation = _check_aggregation(aggregation)
        self.cache_size = cache_size
        self._recorded: dict[str, float] = {}
        self._probed: dict[tuple[str, str], float] = {}
        self._solutions: list[tuple[str, tuple[TokenLogprob, ...]]] = []

    def record(self, step_text: str, logprobs: Sequence[TokenLogprob] | None) -> None:
        """Remember the logprobs a step (or a whole solution) was generated with.

        A single step is scored for free later. A full solution is kept too
        and split into its steps when :meth:`score_steps` knows the step
        delimiter, each step scored from the tokens that fall inside it, so
        best-of-N / weighted SC samples drawn with logprobs need no probe
        requests either.
        """
        lps = tuple(logprobs or ())
        c = confidence(lps, self.metric)
        if c is not None:
            self._remember(step_text.strip(), c)
            if len(self._solutions) >= 256:
                self._solutions.pop(0)
            self._solutions.append((step_text, lps))

    def _remember(self, key: str, value: float) -> None:
        if len(self._recorded) >= self.cache_size:
            self._recorded.pop(next(iter(self._recorded)))
        self._recorded[key] = value

    def _split_recorded(self, delimiter: str) -> None:
        """Per-step confidences of the full solutions recorded since the last call."""
        pending, self._solutions = self._solutions, []
        for text, lps in pending:
            if delimiter not in text.strip():
                continue
            # Where each token starts in the text (tokens are found in order;
            # one that cannot be found keeps the last position).
            starts, pos = [], 0
            for t in lps:
                at = text.find(t.token, pos) if t.token else -1
                if at >= 0:
                    pos = at
                starts.append(pos)
                if at >= 0:
                    pos = at + len(t.token)
            offset = 0
            for piece in text.split(delimiter):
                end = offset + len(piece)
                step = piece.strip("\n")
                if step.strip():
                    inside = [t for t, st in zip(lps, starts, strict=True) if offset <= st < end]
                    c = confidence(inside, self.metric)
                    if c is not None:
                        self._remember(step.strip(), c)
                offset = end + len(delimiter)

    async def score_steps(self, problem: Problem, steps: Sequence[str], ctx: RunContext) -> list[float]:
        if not steps:
            return []
        if not ctx.model.capabilities.logprobs:
            from testtime.errors import CapabilityError

            raise CapabilityError(f"prm:confidence needs a policy with token logprobs; {ctx.model.spec} has none")
        delim = ctx.step_delimiter
        if self._solutions:
            self._split_recorded(delim)

        async def one(i: int) -> float:
            recorded = self._recorded.get(steps[i].strip())
            if recorded is not None:
                return recorded
            prefix = delim.join(s.strip("\n") for s in steps[: i + 1]) + delim
            key = (problem.question, prefix)
            if key in self._probed:
                return self._probed[key]
            from testtime.search.base import DEFAULT_SYSTEM

            request = GenerationRequest(prompt=problem.question, system=ctx.system_prompt or DEFAULT_SYSTEM,
                                        prefix=prefix, max_tokens=self.probe_tokens, temperature=0.0,
                                        logprobs=True, top_logprobs=self.top_logprobs,
                                        seed=ctx.next_seed(), metadata={"purpose": "prm"})
            gens = await ctx.generate(request, role="verify")
            c = confidence(gens[0].logprobs or (), self.metric)
            if c is None:  # the policy ended right there: as sure as it gets
                c = 1.0 if gens[0].finish_reason == "eos" else 0.5
            if len(self._probed) >= self.cache_size:
                self._probed.pop(next(iter(self._probed)))
            self._probed[key] = c
            return c

        # Sequential keeps prefix-cache reuse on local backends and is cheap with the cache.
        scores = [await one(i) for i in range(len(steps))]
        _emit(ctx, self, "prm:confidence", scores)
        return scores


# ================================================================= loader
def load(rest: str, options: dict[str, Any], ctx: RunContext | None = None, *,
         model: Model | None = None) -> ProcessRewardModel:
    """Registry loader for ``prm:llm:MODEL``, ``prm:vllm:X`` and ``prm:confidence``."""
    from testtime.verifiers.registry import model_for, pop_option

    kind, _, target = rest.partition(":")
    kind = kind.strip().lower()
    aggregation = str(pop_option(options, "aggregation", "min", str))
    if kind == "confidence":
        prm: ProcessRewardModel = ConfidencePRM(
            metric=pop_option(options, "metric", "prob", str),
            probe_tokens=pop_option(options, "probe_tokens", 8, int),
            top_logprobs=pop_option(options, "top_logprobs", 5, int), aggregation=aggregation)
    elif kind == "llm":
        per_step = pop_option(options, "per_step", False, bool)
        max_tokens = pop_option(options, "max_tokens", None, int)
        temperature = pop_option(options, "temperature", 0.0, float)
        prm = LLMJudgePRM(model_for(target, options, "prm:llm", ctx=ctx, model=model), per_step=per_step, max_tokens=max_tokens,
                          temperature=temperature, aggregation=aggregation)
    elif kind == "vllm":
        if not target:
            raise UserError("prm:vllm needs a model or a server URL: prm:vllm:http://127.0.0.1:8000 "
                            "or prm:vllm:Qwen/Qwen2.5-Math-PRM-7B")
        positive = pop_option(options, "positive", 1, int)
        template = pop_option(options, "template", "qwen", str)
        sep = pop_option(options, "sep", "<extra_0>", str)
        if target.startswith(("http://", "https://")):
            server: Model = PRMServerModel(target, model=pop_option(options, "model", None, str),
                                          endpoint=pop_option(options, "endpoint", "pooling", str),
                                          positive=positive, api_key=pop_option(options, "api_key", None, str),
                                          timeout=pop_option(options, "timeout", 120.0, float))
        else:
            engine = {k: options.pop(k) for k in list(options) if k in ("gpu_memory_utilization",
                                                                         "max_model_len", "dtype")}
            server = InProcessPRMModel(target, positive=positive, engine_options=engine)
        prm = VLLMPRM(server, template=template, sep=sep, aggregation=aggregation)
    else:
        raise UserError(f"unknown PRM kind {kind!r}: use prm:llm:MODEL, prm:vllm:MODEL_OR_URL or prm:confidence")
    if options:
        raise UserError(f"unknown option(s) for prm:{kind}: {', '.join(sorted(options))}")
    return prm


__all__ = ["ConfidencePRM", "LLMJudgePRM", "PRMServerModel", "VLLMPRM", "confidence", "parse_score",
           "parse_step_scores", "positive_probs", "qwen_prm_prompt"]
