"""Simulated outcome verifier (``--verifier sim`` / ``sim:NAME``).

:class:`SimVerifier` extracts the candidate's final answer, compares it with
the task's answer (rebuilt from the question), and errs at set rates: a wrong
answer passes with probability ``fpr`` (false positive), a right one fails
with probability ``fnr`` (false negative). Its score is in [0.6, 1] when it
passes and in [0, 0.4] when it fails, so scores rank candidates too. Verdicts
are deterministic for a given (seed, question, candidate text).

Each verification goes through ``ctx.generate`` (role ``"verify"``) to a
:class:`SimVerifierModel`, billed ``ceil(token_scale x tokens read)`` input
tokens and one output token, like :mod:`testtime.sim.prm`.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from testtime.errors import UserError
from testtime.models.base import Capabilities, Generation, GenerationRequest, Model
from testtime.models.prices import Price
from testtime.sim.policy import count_words
from testtime.sim.tasks import task_from_question
from testtime.verifiers.answer import extract_answer, normalize_answer
from testtime.verifiers.base import Verdict, Verifier

if TYPE_CHECKING:
    from testtime.context import RunContext
    from testtime.search.base import Problem


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifierConfig:
    """Error rates and cost of a simulated verifier."""

    fpr: float = 0.05
    fnr: float = 0.05
    token_scale: float = 0.25
    price: Price = Price(0.1, 0.1)
    seed: int = 0


#: Named verifiers for ``sim:NAME`` (plain ``sim`` is ``default``).
VERIFIERS: dict[str, VerifierConfig] = {
    "default": VerifierConfig(),
    "noisy": VerifierConfig(fpr=0.2, fnr=0.2),
    "strict": VerifierConfig(fpr=0.01, fnr=0.2),
    "lenient": VerifierConfig(fpr=0.25, fnr=0.02),
}


class SimVerifierModel(Model):
    """The 'model' behind :class:`SimVerifier`; the verdict comes back in ``raw``."""

    backend = "sim"

    def __init__(self, name: str, config: VerifierConfig) -> None:
        super().__init__(f"verifier-{name}", price=config.price)
        self.config = config

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(native_n=True, exact_token_count=True)

    def count_tokens(self, text: str) -> int:
        return count_words(text)

    def input_upper_bound(self, request: GenerationRequest) -> int:
        read = sum(count_words(m.get("content", "")) for m in request.chat_messages())
        return math.ceil(self.config.token_scale * (read + count_words(request.prefix)))

    async def generate(self, request: GenerationRequest) -> list[Generation]:
        question = request.prompt or ""
        candidate = request.prefix
        task = task_from_question(question)
        correct = normalize_answer(extract_answer(candidate)) == str(task.answer)
        rng = random.Random(hash((self.config.seed,
                                  zlib.crc32(candidate.encode(), zlib.crc32(question.encode())))))
        u, v = rng.random(), rng.random()
        passed = (u >= self.config.fnr) if correct else (u < self.config.fpr)
        score = 0.6 + 0.4 * v if passed else 0.4 * v
        usage = self.usage(self.input_upper_bound(request), 1)
        return [Generation(text="PASS" if passed else "FAIL", finish_reason="eos", usage=usage,
                           model=self.name, raw=(score, passed, correct))]


class SimVerifier(Verifier):
    """A simulated outcome verifier with false-positive/negative rates."""

    name = "sim"

    def __init__(self, name: str = "default", config: VerifierConfig | None = None) -> None:
        cfg = config or VERIFIERS.get(name)
        if cfg is None:
            raise UserError(f"unknown simulated verifier {name!r}; choose one of {', '.join(VERIFIERS)}")
        self.variant = name
        self.config = cfg
        self.model = SimVerifierModel(name, cfg)

    @property
    def spec(self) -> str:
        return f"sim:{self.variant}"

    async def verify(self, problem: Problem, candidate: str, ctx: RunContext) -> Verdict:
        request = GenerationRequest(prompt=problem.question, prefix=candidate, max_tokens=1,
                                    temperature=0.0)
        gens = await ctx.generate(request, role="verify", model=self.model)
        score, passed, _ = gens[0].raw
        verdict = Verdict(score=score, passed=passed, detail="sim verifier")
        ctx.tracer.emit("verdict", verifier=self.spec, score=round(score, 4), passed=passed,
                        detail=verdict.detail)
        return verdict


def load(name: str = "", **options: Any) -> SimVerifier:
    """Registry loader for ``--verifier sim`` / ``sim:NAME``.

    Options: ``fpr``, ``fnr``, ``token_scale``, ``seed``; ``ctx`` is ignored.
    """
    name = name or "default"
    base = VERIFIERS.get(name)
    if base is None:
        raise UserError(f"unknown simulated verifier {name!r}; choose one of {', '.join(VERIFIERS)}")
    options = dict(options)
    options.pop("ctx", None)
    fields = {"fpr", "fnr", "token_scale", "seed"}
    unknown = set(options) - fields
    if unknown:
        raise UserError(f"unknown option(s) for verifier sim:{name}: {', '.join(sorted(unknown))}; "
                        f"known: {', '.join(sorted(fields))}")
    changes = {k: type(getattr(base, k))(v) for k, v in options.items() if v is not None}
    cfg = replace(base, **changes) if changes else base
    if not (0 <= cfg.fpr <= 1 and 0 <= cfg.fnr <= 1):
        raise UserError(f"sim verifier rates must be in [0, 1], got fpr={cfg.fpr}, fnr={cfg.fnr}")
    return SimVerifier(name, cfg)
