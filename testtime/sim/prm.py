"""Simulated process reward models (``--prm sim`` / ``sim:NAME``).

A :class:`SimPRM` knows, for each step of a simulator solution, whether the
solution is still correct after that step: it rebuilds the task from the
question and checks the running total each step states (the same text any
grader would read). Its score is a noisy, *calibrated* posterior:

    z = (+mu if correct else -mu) + Normal(0, sigma)
    score = sigmoid(gain * 2 * mu * z / sigma**2)

With ``gain = 1`` this is exactly P(correct | z) under a 50% prior, so scores
are calibrated; ``sigma`` sets how informative they are. Variants
(:data:`PRMS`):

* ``calibrated`` -- informative and calibrated at every step;
* ``noisy`` -- calibrated but weak (large sigma);
* ``overconfident`` -- later steps like ``calibrated``, but the first
  ``early_steps`` are both noisier and pushed toward 0/1 (``gain > 1``): the
  overconfident-early failure that makes particle filters collapse onto a few
  trajectories, which entropic particle filtering targets. Mild: early AUROC
  ~0.82, ~13% of wrong early steps score > 0.9;
* ``overconfident_strong`` -- the same failure, harsh: early scores nearly
  uninformative (AUROC ~0.70) but extreme, so about 3 in 10 early steps get a
  *confidently wrong* score (> 0.9 when wrong, < 0.1 when right) and PF
  weights at step 1-2 put almost all mass on an essentially arbitrary
  particle;
* ``biased`` -- noisier (sigma 1.0) and with both systematic errors below:
  a favoured wrong answer on 40% of problems and a length bias.

Two *systematic* errors can be switched on (every real PRM has some; the
``biased`` variant has both):

* a **favoured wrong answer**: on a fraction ``favoured_rate`` of the
  problems (chosen by the PRM seed) the PRM is fooled by one wrong
  trajectory -- the one that slips onto the task's least popular distractor
  (``favoured_rank=-1``) -- and scores its steps like right steps, with mean
  ``favoured_mu * mu`` (> 1: *above* right ones). Such an answer is rare in
  samples but top-scored when it appears, so best-of-N gets *worse* as N
  grows (it finds it), while Best-of-Majority's frequency filter drops it:
  the regime Best-of-Majority was designed for;
* a **length bias**: ``length_bias`` is added to the evidence ``z`` per 100%
  of extra length of a step over ``length_ref`` words, so long (padded)
  steps look better regardless of correctness.

Scores are deterministic for a given (PRM seed, question, step texts): scoring
the same prefix twice gives the same numbers, as a real PRM would.

Scoring costs budget: each call goes through ``ctx.generate`` (role
``"verify"``) to a :class:`SimPRMModel`, billed ``ceil(token_scale x tokens
read)`` input tokens (question + steps) and one output token per step.
``token_scale`` (default 0.25) models a PRM cheaper per token than the policy
(e.g. a 1.5B PRM next to a 7B policy); set it to 1 to bill it like the policy.
"""

from __future__ import annotations

import math
import random
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from testtime.errors import UserError
from testtime.models.base import Capabilities, Generation, GenerationRequest, Model
from testtime.models.prices import Price
from testtime.sim.policy import count_words
from testtime.sim.tasks import SimTask, task_from_question
from testtime.verifiers.answer import extract_answer, normalize_answer
from testtime.verifiers.base import AGGREGATIONS, ProcessRewardModel

if TYPE_CHECKING:
    from testtime.context import RunContext
    from testtime.search.base import Problem

_VALUE = re.compile(r"Step (\d+): .*? to get (-?\d+)")


@dataclass(frozen=True, slots=True, kw_only=True)
class PRMConfig:
    """Behaviour of a simulated PRM (see the module docstring).

    Attributes:
        mu: signal strength (half the distance between the two score clusters).
        sigma: noise of later steps.
        early_steps: how many first steps use ``early_sigma`` and ``early_gain``.
        early_sigma: noise of the early steps.
        early_gain: logit multiplier of the early steps (> 1: overconfident).
        token_scale: fraction of the tokens read that is billed.
        price: USD per million tokens.
        seed: selects the noise draw (a different seed is a different PRM).
        favoured_rate: fraction of problems with a favoured wrong answer.
        favoured_mu: signal of steps on the favoured wrong trajectory, in
            units of ``mu`` (1: like right steps; 1.5: better than right).
        favoured_rank: which distractor is favoured (index into the task's
            distractors, most popular first; -1: the least popular).
        length_bias: evidence added per 100% of extra step length.
        length_ref: the step length (words) with no length bonus.
    """

    mu: float = 1.0
    sigma: float = 0.8
    early_steps: int = 0
    early_sigma: float = 0.8
    early_gain: float = 1.0
    token_scale: float = 0.25
    price: Price = Price(0.1, 0.1)
    seed: int = 0
    favoured_rate: float = 0.0
    favoured_mu: float = 1.5
    favoured_rank: int = -1
    length_bias: float = 0.0
    length_ref: int = 45


#: Named PRM variants for ``sim:NAME`` (plain ``sim`` is ``calibrated``).
PRMS: dict[str, PRMConfig] = {
    "calibrated": PRMConfig(),
    "noisy": PRMConfig(sigma=1.6, early_sigma=1.6),
    "overconfident": PRMConfig(early_steps=2, early_sigma=1.6, early_gain=4.0),
    # Confidently wrong early: on the first two steps the signal is mostly
    # noise (sigma 3: AUROC ~0.70 vs ~0.96 later) yet scores are pushed to the
    # extremes (gain 16), so ~28% of wrong early steps score > 0.9 and ~29% of
    # right ones < 0.1. Steps 3+ (every final-answer step in the suites) are
    # calibrated, so the damage is confined to early resampling decisions.
    "overconfident_strong": PRMConfig(early_steps=2, early_sigma=3.0, early_gain=16.0),
    # Systematic errors: on 40% of problems one rare wrong answer scores
    # above the right one; long steps get a bonus; noisier overall.
    "biased": PRMConfig(sigma=1.0, early_sigma=1.0, favoured_rate=0.4, favoured_mu=1.5, length_bias=0.5),
}


def step_correctness(task: SimTask, steps: Sequence[str]) -> list[bool]:
    """Whether the solution is still correct after each step.

    A step that states a running total is correct when the total is right
    (and every earlier step was); a step stating none inherits the previous
    status; a stated final answer must equal the task's answer.
    """
    out: list[bool] = []
    ok = True
    for text in steps:
        ok = ok and _step_ok(task, text)
        out.append(ok)
    return out


def _step_ok(task: SimTask, text: str) -> bool:
    """Whether one step is right, given that the steps before it were."""
    m = _VALUE.search(text)
    if m is not None:
        j = int(m.group(1))
        totals = task.totals
        if not (1 <= j <= len(totals) and int(m.group(2)) == totals[j - 1]):
            return False
    if "answer" in text.lower():
        return normalize_answer(extract_answer(text)) == str(task.answer)
    return True


def _step_offset(task: SimTask, text: str) -> int | None:
    """How far the total (or final answer) a step states is from the right one; None: states none."""
    m = _VALUE.search(text)
    if m is not None:
        j = int(m.group(1))
        if 1 <= j <= task.n_steps:
            return int(m.group(2)) - task.totals[j - 1]
        return None
    if "answer" in text.lower():
        ans = normalize_answer(extract_answer(text))
        try:
            return int(ans) - task.answer if ans is not None else None
        except ValueError:
            return None
    return None


def favoured_offset(config: PRMConfig, task: SimTask) -> int | None:
    """The wrong-answer offset this PRM favours on ``task`` (None: none on this task)."""
    if config.favoured_rate <= 0:
        return None
    u = zlib.crc32(f"sim-prm-favoured:{config.seed}:{task.id}".encode()) / 2**32
    if u >= config.favoured_rate:
        return None
    return task.distractors[config.favoured_rank]


def favoured_answer(config: PRMConfig, task: SimTask) -> str | None:
    """The favoured wrong final answer as text (for analysis and tests)."""
    off = favoured_offset(config, task)
    return None if off is None else str(task.answer + off)


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


class SimPRMModel(Model):
    """The 'model' behind a :class:`SimPRM`: returns step scores in ``raw``.

    It reads the steps from ``request.metadata["steps"]`` (the PRM passes
    them; the prefix holds the same text for billing).
    """

    backend = "sim"

    def __init__(self, name: str, config: PRMConfig) -> None:
        super().__init__(f"prm-{name}", price=config.price)
        self.config = config
        self._memo: dict[tuple[int, int], tuple[bool, float]] = {}

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(native_n=True, exact_token_count=True)

    def count_tokens(self, text: str) -> int:
        return count_words(text)

    def billed_input(self, request: GenerationRequest) -> int:
        read = sum(count_words(m.get("content", "")) for m in request.chat_messages())
        read += count_words(request.prefix)
        return math.ceil(self.config.token_scale * read)

    def input_upper_bound(self, request: GenerationRequest) -> int:
        return self.billed_input(request)

    async def generate(self, request: GenerationRequest) -> list[Generation]:
        steps = list(request.metadata.get("steps", ()))
        task = task_from_question(request.prompt or "")
        scores = self.scores(task, steps)
        text = " ".join(f"{s:.4f}" for s in scores)
        usage = self.usage(self.billed_input(request), min(len(scores), request.max_tokens))
        return [Generation(text=text, finish_reason="eos", usage=usage, model=self.name, raw=scores)]

    def scores(self, task: SimTask, steps: Sequence[str]) -> list[float]:
        """Noisy scores, deterministic in (seed, task, step texts)."""
        cfg = self.config
        out = []
        state = "ok"  # "ok": still right; "fav": on the favoured wrong trajectory; "bad"
        fav = favoured_offset(cfg, task)
        crc = zlib.crc32(task.id.encode())
        for i, text in enumerate(steps):
            crc = zlib.crc32(text.encode(), crc)
            # Search re-scores the same prefixes over and over; the memo
            # (keyed by the whole prefix through its CRC chain) saves the work.
            hit = self._memo.get((crc, i))
            if hit is None:
                state = _next_state(task, text, state, fav)
                early = i < cfg.early_steps
                sigma = cfg.early_sigma if early else cfg.sigma
                gain = cfg.early_gain if early else 1.0
                mean = {"ok": cfg.mu, "fav": cfg.favoured_mu * cfg.mu, "bad": -cfg.mu}[state]
                z = mean + random.Random(hash((cfg.seed, crc))).gauss(0.0, sigma)
                if cfg.length_bias:
                    z += cfg.length_bias * (count_words(text) / cfg.length_ref - 1.0)
                hit = (state, _sigmoid(gain * 2.0 * cfg.mu * z / (sigma * sigma)))
                if len(self._memo) > 200_000:
                    self._memo.clear()
                self._memo[(crc, i)] = hit
            state = hit[0]
            out.append(hit[1])
        return out


def _next_state(task: SimTask, text: str, state: str, fav: int | None) -> str:
    """The trajectory's state after one more step."""
    if state == "bad":
        return "bad"
    if state == "ok" and _step_ok(task, text):
        return "ok"
    if fav is None:
        return "bad"
    off = _step_offset(task, text)
    if off is None:
        return state if state == "fav" else "bad"
    return "fav" if off == fav else "bad"


class SimPRM(ProcessRewardModel):
    """A simulated PRM that spends through the ledger (role ``"verify"``).

    Args:
        name: the variant (a key of :data:`PRMS`) or a label.
        config: its behaviour; defaults to ``PRMS[name]``.
        aggregation: how :meth:`score` folds step scores.
    """

    name = "sim"

    def __init__(self, name: str = "calibrated", config: PRMConfig | None = None,
                 *, aggregation: str = "min") -> None:
        cfg = config or PRMS.get(name)
        if cfg is None:
            raise UserError(f"unknown simulated PRM {name!r}; choose one of {', '.join(PRMS)}")
        if aggregation not in AGGREGATIONS:
            raise UserError(f"unknown PRM aggregation {aggregation!r}; choose one of {', '.join(AGGREGATIONS)}")
        self.variant = name
        self.config = cfg
        self.aggregation = aggregation
        self.model = SimPRMModel(name, cfg)

    @property
    def spec(self) -> str:
        return f"sim:{self.variant}"

    async def score_steps(self, problem: Problem, steps: Sequence[str], ctx: RunContext) -> list[float]:
        if not steps:
            return []
        request = GenerationRequest(prompt=problem.question, prefix="\n\n".join(steps),
                                    max_tokens=len(steps), temperature=0.0,
                                    metadata={"steps": tuple(steps)})
        gens = await ctx.generate(request, role="verify", model=self.model)
        scores = list(gens[0].raw)
        ctx.tracer.emit("prm_scores", prm=self.spec, scores=[round(s, 4) for s in scores],
                        aggregate=None)
        return scores


def load(name: str = "", **options: Any) -> SimPRM:
    """Registry loader for ``--prm sim`` / ``sim:NAME``.

    Options: ``aggregation`` (min/last/product/mean) and any
    :class:`PRMConfig` field (``sigma``, ``early_gain``, ``token_scale``,
    ``seed``...). ``ctx`` is accepted and ignored.
    """
    name = name or "calibrated"
    base = PRMS.get(name)
    if base is None:
        raise UserError(f"unknown simulated PRM {name!r}; choose one of {', '.join(PRMS)}")
    options = dict(options)
    options.pop("ctx", None)
    aggregation = str(options.pop("aggregation", "min"))
    fields = {"mu", "sigma", "early_steps", "early_sigma", "early_gain", "token_scale", "seed",
              "favoured_rate", "favoured_mu", "favoured_rank", "length_bias", "length_ref"}
    unknown = set(options) - fields
    if unknown:
        raise UserError(f"unknown option(s) for PRM sim:{name}: {', '.join(sorted(unknown))}; "
                        f"known: aggregation, {', '.join(sorted(fields))}")
    changes = {k: type(getattr(base, k))(v) for k, v in options.items() if v is not None}
    cfg = replace(base, **changes) if changes else base
    if cfg.sigma <= 0 or cfg.early_sigma <= 0 or cfg.token_scale < 0:
        raise UserError("sim PRM needs sigma > 0, early_sigma > 0 and token_scale >= 0")
    if not 0.0 <= cfg.favoured_rate <= 1.0 or cfg.length_ref < 1:
        raise UserError("sim PRM needs favoured_rate in [0, 1] and length_ref >= 1")
    return SimPRM(name, cfg, aggregation=aggregation)
