"""``genrm:MODEL`` -- a generative verifier (GenRM, LLM-as-a-judge).

The verifier model reads the question and the candidate, writes a short
verification rationale, and ends with ``Verdict: Yes`` or ``Verdict: No``.
With ``m`` samples per candidate the score is

* the mean P(Yes) read from the verdict token's log-probabilities, when the
  backend returns them: P(Yes) / (P(Yes) + P(No)) over the token's top
  alternatives, or exp(logprob) of the chosen token when no alternatives
  came back (1 - exp(logprob) if it chose No);
* else the fraction of parseable samples whose verdict is Yes.

A sample whose verdict cannot be read is left out; when none can be read
the score is a neutral 0.5, the verdict does not pass, and a ``note`` trace
event records the raw output. Every call goes through ``ctx.generate`` with
``role="verify"``, so the verifier's spend shows up under
``usage.by_role["verify"]``.

Spec: ``genrm:MODEL_SPEC[?m=4&max_tokens=256&temperature=0.7&threshold=0.5]``;
``MODEL_SPEC`` is any model spec (``openai:gpt-4o-mini``, ``local``...) or
``policy`` to let the solving model verify itself.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from testtime.errors import UserError
from testtime.models.base import Generation, GenerationRequest, Model
from testtime.verifiers.base import Verdict, Verifier

if TYPE_CHECKING:
    from testtime.context import RunContext
    from testtime.search.base import Problem

SYSTEM = ("You are a meticulous verifier of solutions. You check each step and the final answer "
          "and you never solve the problem from scratch unless needed to check it.")

TEMPLATE = (
    "Question:\n{question}\n\nProposed solution:\n{candidate}\n\n"
    "Verify the proposed solution step by step. Then, on the last line, write exactly "
    "'Verdict: Yes' if the solution and its final answer are correct, or 'Verdict: No' if not."
)

_VERDICT = re.compile(r"verdict\s*(?:is)?\s*[:\-=]?\s*[\*\"'`\[\(]*\s*(yes|no|correct|incorrect)\b", re.I)
_LAST_LINE_WORD = re.compile(r"\b(yes|no)\b", re.I)
_YES_WORDS = {"yes", "correct", "true"}
_NO_WORDS = {"no", "incorrect", "false"}


@dataclass(frozen=True, slots=True)
class Judgement:
    """One sampled verification.

    Attributes:
        said: ``"yes"``, ``"no"`` or None (unparseable).
        p_yes: P(Yes) of this sample (from logprobs, else 1.0/0.0); None if unparseable.
        source: ``"logprobs"`` or ``"text"`` (how ``p_yes`` was obtained).
        text: the raw output.
    """

    said: str | None
    p_yes: float | None
    source: str
    text: str


def parse_verdict(text: str) -> str | None:
    """``"yes"``/``"no"`` from a verification, or None.

    The last ``Verdict: X`` wins; failing that, a last line that says exactly
    one of yes / no.
    """
    found = _VERDICT.findall(text or "")
    if found:
        word = found[-1].lower()
        return "yes" if word in _YES_WORDS else "no"
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    if lines:
        words = {w.lower() for w in _LAST_LINE_WORD.findall(lines[-1])}
        if len(words) == 1:
            return words.pop()
    return None


def _norm_token(tok: str) -> str:
    return tok.strip().strip("*:.,!\"'`()[]").lower()


def _p_yes_from_logprobs(gen: Generation, said: str) -> float | None:
    """P(Yes) at the verdict token, or None when no such token is found."""
    if not gen.logprobs:
        return None
    targets = _YES_WORDS if said == "yes" else _NO_WORDS
    for tl in reversed(gen.logprobs):
        if _norm_token(tl.token) not in targets:
            continue
        yes = no = 0.0
        for tok, lp in tl.top:
            word = _norm_token(tok)
            if word in _YES_WORDS:
                yes += math.exp(lp)
            elif word in _NO_WORDS:
                no += math.exp(lp)
        if yes + no > 0 and tl.top:
            return yes / (yes + no)
        p = math.exp(min(0.0, tl.logprob))
        return p if said == "yes" else 1.0 - p
    return None


def judge(gen: Generation, *, use_logprobs: bool = True) -> Judgement:
    """Read one verification sample."""
    said = parse_verdict(gen.text)
    if said is None:
        return Judgement(None, None, "text", gen.text)
    if use_logprobs:
        p = _p_yes_from_logprobs(gen, said)
        if p is not None:
            return Judgement(said, min(1.0, max(0.0, p)), "logprobs", gen.text)
    return Judgement(said, 1.0 if said == "yes" else 0.0, "text", gen.text)


def summarize(judgements: Sequence[Judgement], *, threshold: float) -> tuple[float, bool, dict[str, Any]]:
    """Score, pass/fail and data of a set of judgements (neutral 0.5 if none parse)."""
    parsed = [j for j in judgements if j.p_yes is not None]
    yes = sum(1 for j in parsed if j.said == "yes")
    data: dict[str, Any] = {"yes": yes, "no": len(parsed) - yes,
                            "unparsed": len(judgements) - len(parsed),
                            "source": parsed[0].source if parsed else None}
    rejecting = [j for j in parsed if j.said == "no"]
    if rejecting:
        data["feedback"] = min(rejecting, key=lambda j: j.p_yes or 0.0).text[-1500:]
    if not parsed:
        return 0.5, False, data
    score = sum(j.p_yes for j in parsed) / len(parsed)  # type: ignore[misc]
    return score, score >= threshold, data


def note_unparsed(ctx: RunContext, verifier: str, judgements: Sequence[Judgement]) -> None:
    """A trace note for each sample whose verdict could not be read."""
    for j in judgements:
        if j.said is None:
            ctx.tracer.emit("note", message=f"{verifier}: unparseable verification output (neutral score)",
                            verifier=verifier, output=j.text[-300:])


def verify_request(problem: Problem, candidate: str, *, template: str, n: int, max_tokens: int,
                   temperature: float, logprobs: bool, top_logprobs: int, seed: int | None) -> GenerationRequest:
    return GenerationRequest(
        prompt=template.format(question=problem.question, candidate=candidate),
        system=SYSTEM, n=n, max_tokens=max_tokens, temperature=temperature, seed=seed,
        logprobs=logprobs, top_logprobs=top_logprobs if logprobs else 0,
        metadata={"problem_id": problem.id, "purpose": "verify"},
    )


class GenRM(Verifier):
    """Generative verifier: rationale + Yes/No verdict, scored by P(Yes).

    Args:
        model: the verifier model; None verifies with the policy (``ctx.model``).
        m: verification samples per candidate.
        max_tokens: tokens per verification.
        temperature: sampling temperature of the verifications.
        threshold: a candidate passes when its score >= threshold.
        logprobs: ``"auto"`` (use them when the backend has them), True, False.
        top_logprobs: alternatives requested per token (for P(Yes) vs P(No)).
        template: the verification prompt (``{question}``, ``{candidate}``).
    """

    name = "genrm"

    def __init__(self, model: Model | None = None, *, m: int = 1, max_tokens: int = 256,
                 temperature: float = 0.7, threshold: float = 0.5, logprobs: bool | str = "auto",
                 top_logprobs: int = 5, template: str = TEMPLATE) -> None:
        if m < 1 or max_tokens < 1:
            raise UserError(f"genrm needs m >= 1 and max_tokens >= 1, got m={m}, max_tokens={max_tokens}")
        if not 0.0 <= threshold <= 1.0:
            raise UserError(f"genrm threshold must be in [0, 1], got {threshold}")
        self.model = model
        self.m = m
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.threshold = threshold
        self.logprobs = logprobs
        self.top_logprobs = top_logprobs
        self.template = template

    def _use_logprobs(self, model: Model) -> bool:
        if self.logprobs == "auto":
            return model.capabilities.logprobs
        return bool(self.logprobs)

    async def sample(self, problem: Problem, candidate: str, ctx: RunContext, *, n: int,
                     max_tokens: int, template: str | None = None) -> list[Judgement]:
        """Draw ``n`` verifications (one budgeted call, role ``verify``) and read them."""
        model = self.model or ctx.model
        use_lp = self._use_logprobs(model)
        request = verify_request(problem, candidate, template=template or self.template, n=n,
                                 max_tokens=max_tokens, temperature=self.temperature, logprobs=use_lp,
                                 top_logprobs=self.top_logprobs, seed=ctx.next_seed())
        gens = await ctx.generate(request, role="verify", model=model)
        judgements = [judge(g, use_logprobs=use_lp) for g in gens]
        note_unparsed(ctx, self.name, judgements)
        return judgements

    async def verify(self, problem: Problem, candidate: str, ctx: RunContext) -> Verdict:
        judgements = await self.sample(problem, candidate, ctx, n=self.m, max_tokens=self.max_tokens)
        score, passed, data = summarize(judgements, threshold=self.threshold)
        detail = (f"{data['yes']}/{data['yes'] + data['no']} say Yes, P(yes)={score:.2f}"
                  if data["yes"] + data["no"] else "unparseable verifier output; neutral score")
        verdict = Verdict(score=score, passed=passed, detail=detail, data=data)
        ctx.tracer.emit("verdict", verifier=self.name, score=score, passed=passed, detail=detail)
        return verdict


__all__ = ["GenRM", "Judgement", "judge", "parse_verdict", "summarize"]
