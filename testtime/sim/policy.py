"""The simulated policy model (``sim`` / ``sim:NAME`` model specs).

:class:`SimModel` is an ordinary :class:`~testtime.models.base.Model`: it is
called through ``ctx.generate`` and the real ledger, sees only the
:class:`~testtime.models.base.GenerationRequest`, and reports honest usage. It
rebuilds the task from the question (:func:`testtime.sim.tasks.task_from_question`)
and the state of the partial solution from ``request.prefix`` (the running
total stated by its last step), then writes the next step(s):

* each step is correct with probability
  ``sigmoid(6 * (strength - difficulty) + 1.4)``; once a step slips, the
  trajectory stays wrong (its running total is off by one of the task's
  distractor offsets, so wrong answers concentrate on a few values);
* a step reads ``"Step j: add X to A to get B."`` padded with filler prose to
  about ``step_tokens`` tokens; the last step ends with ``"The answer is B."``;
* steps are separated by a blank line. With a stop sequence (step-level
  search passes the step delimiter) the reply ends where the stop matches
  (``finish_reason="stop"``); the final step ends with ``"eos"``; without one
  the rest of the solution is written. ``max_tokens`` truncates
  (``"length"``);
* tokens are whitespace-separated words (:meth:`SimModel.count_tokens`); the
  prompt is billed once per call (``native_n``), each sample bills its output;
* sample ``i`` of a request with ``seed=s`` is a pure function of
  ``(s + i, question, prefix)``; ``temperature=0`` gives the same sample for
  every seed (greedy). Without a seed, samples are random;
* ``logprobs=True`` returns synthetic per-token log-probabilities: the token
  of a slipped step is less likely than that of a correct one, so a
  confidence PRM has (noisy) signal.

Named policies (:data:`POLICIES`) differ in strength, step length and price.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import zlib
from dataclasses import dataclass, replace
from typing import Any

from testtime.errors import UserError
from testtime.models.base import Capabilities, Generation, GenerationRequest, Model, TokenLogprob
from testtime.models.prices import Price
from testtime.sim.tasks import DISTRACTOR_WEIGHTS, SimTask, is_sim_question, task_from_question

_STEP_VALUE = re.compile(r"Step (\d+): \S+ -?\d+ \S+ (-?\d+) to get (-?\d+)")
_FILLER = (
    "Let me keep track of the running total carefully.",
    "This follows directly from the previous line.",
    "I will write the intermediate value down before moving on.",
    "Checking the arithmetic once more keeps mistakes out.",
    "The operation in the question is applied exactly as written.",
    "Nothing else changes at this point of the computation.",
    "So the new running total is the one stated here.",
    "We carry this value forward to the next operation.",
)
_FILLER_WORDS = tuple(tuple(s.split()) for s in _FILLER)


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyConfig:
    """How a simulated policy behaves.

    Attributes:
        strength: skill in [0, 1]; per-step accuracy rises with it.
        step_tokens: mean tokens per step (each step's length varies +-40%).
        price: USD per million tokens.
        slip_logprob: mean |logprob| of the tokens of a slipped step.
        ok_logprob: mean |logprob| of the tokens of a correct step.
        latency: seconds to await per call (0: none; the simulator is CPU only).
    """

    strength: float = 0.55
    step_tokens: int = 45
    price: Price = Price(0.5, 1.5)
    slip_logprob: float = 0.9
    ok_logprob: float = 0.2
    latency: float = 0.0


#: Named policies for ``sim:NAME``; plain ``sim`` is ``default``.
POLICIES: dict[str, PolicyConfig] = {
    "weak": PolicyConfig(strength=0.35, step_tokens=30, price=Price(0.1, 0.4)),
    "default": PolicyConfig(),
    "strong": PolicyConfig(strength=0.75, step_tokens=60, price=Price(3.0, 12.0)),
}


def step_accuracy(strength: float, difficulty: float) -> float:
    """Probability that one step is correct for a policy strength and task difficulty."""
    return 1.0 / (1.0 + math.exp(-(6.0 * (strength - difficulty) + 1.4)))


def count_words(text: str) -> int:
    """The simulator's tokenizer: one token per whitespace-separated word."""
    return len(text.split())


def parse_state(task: SimTask, prefix: str) -> tuple[int, int]:
    """``(steps_done, offset)`` of a partial solution: offset 0 means still correct.

    The state is read from the last parseable step; text that is not a
    simulator step leaves the state at the start.
    """
    matches = _STEP_VALUE.findall(prefix)
    if not matches:
        return 0, 0
    j, _, value = matches[-1]
    done = min(int(j), task.n_steps)
    if done < 1:
        return 0, 0
    return done, int(value) - task.totals[done - 1]


def step_text(task: SimTask, j: int, offset: int, length: int, rng: random.Random) -> str:
    """The text of step ``j`` (1-based) of a trajectory whose total is off by ``offset``."""
    op = task.ops[j - 1]
    before = (task.totals[j - 2] if j > 1 else task.start) + offset
    after = task.totals[j - 1] + offset
    # A slip on this step shows as a wrong result from a right "before".
    core = (f"Step {j}: {'add' if op >= 0 else 'subtract'} {abs(op)} "
            f"{'to' if op >= 0 else 'from'} {before} to get {after}.")
    words = core.split()
    # Pad with filler prose to a realistic, varying step length.
    target = max(len(words), int(length * rng.uniform(0.6, 1.4)))
    while len(words) < target:
        words.extend(_FILLER_WORDS[rng.randrange(len(_FILLER_WORDS))])
    words = words[:target]
    text = " ".join(words)
    if j == task.n_steps:
        text += f" The answer is {after}."
    return text


class SimModel(Model):
    """A seeded simulated policy (see the module docstring).

    Args:
        name: the policy name (a key of :data:`POLICIES` or a custom label).
        config: its behaviour; defaults to ``POLICIES[name]``.
    """

    backend = "sim"

    def __init__(self, name: str = "default", config: PolicyConfig | None = None) -> None:
        cfg = config or POLICIES.get(name)
        if cfg is None:
            raise UserError(f"unknown simulated policy {name!r}; choose one of {', '.join(POLICIES)}")
        super().__init__(name, price=cfg.price)
        self.config = cfg
        self._fallback_rng = random.Random()
        self.calls = 0

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(native_n=True, logprobs=True, prefix=True, exact_token_count=True)

    # ----------------------------------------------------------- accounting
    def count_tokens(self, text: str) -> int:
        return count_words(text)

    def billed_input(self, request: GenerationRequest) -> int:
        """Prompt tokens one call bills: every message, the prefix, 4 per message."""
        msgs = request.chat_messages()
        return sum(count_words(m.get("content", "")) + 4 for m in msgs) + count_words(request.prefix)

    def input_upper_bound(self, request: GenerationRequest) -> int:
        # Counted piece by piece: joining texts first could merge two words.
        return self.billed_input(request) + 8

    # ----------------------------------------------------------- generation
    async def generate(self, request: GenerationRequest) -> list[Generation]:
        self.calls += 1
        if self.config.latency:
            await asyncio.sleep(self.config.latency)
        question = _question_of(request)
        task = task_from_question(question)
        done, offset = parse_state(task, request.prefix)
        key = zlib.crc32(request.prefix.encode(), zlib.crc32(question.encode()))
        gens = []
        for i in range(request.n):
            if request.temperature == 0:
                seed: Any = key
            elif request.seed is None:
                seed = self._fallback_rng.getrandbits(64)
            else:
                seed = hash((request.seed + i, key))
            text, finish, lps = self._sample(task, done, offset, request, random.Random(seed))
            inp = self.billed_input(request) if i == 0 else 0
            gens.append(Generation(text=text, finish_reason=finish, logprobs=lps,
                                   usage=self.usage(inp, count_words(text)), model=self.name))
        return gens

    def _sample(self, task: SimTask, done: int, offset: int, request: GenerationRequest,
                rng: random.Random) -> tuple[str, str, tuple[TokenLogprob, ...] | None]:
        """One continuation: text, finish reason, logprobs."""
        p_ok = step_accuracy(self.config.strength, task.difficulty)
        pieces: list[tuple[str, float]] = []  # (text, mean |logprob|)
        text = ""
        finish = "eos"
        for j in range(done + 1, task.n_steps + 1):
            slipped = False
            if offset == 0 and rng.random() >= p_ok:
                offset = rng.choices(task.distractors, weights=DISTRACTOR_WEIGHTS)[0]
                slipped = True
            step = step_text(task, j, offset, self.config.step_tokens, rng)
            conf = (self.config.slip_logprob if slipped
                    else self.config.ok_logprob * (1.6 if offset else 1.0))
            piece = step if not text else "\n\n" + step
            text += piece
            pieces.append((piece, conf))
            cut = _first_stop(text + ("\n\n" if j < task.n_steps else ""), request.stop)
            if cut is not None:
                text = text[:cut]
                finish = "stop"
                break
        text, finish = _truncate(text, request.max_tokens, finish)
        lps = _logprobs(text, pieces, rng) if request.logprobs else None
        return text, finish, lps


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    best = None
    for s in stops:
        if s:
            i = text.find(s)
            if i >= 0 and (best is None or i < best):
                best = i
    return best


def _truncate(text: str, max_tokens: int, finish: str) -> tuple[str, str]:
    if count_words(text) <= max_tokens:
        return text, finish
    # Keep the step structure: cut inside the step where the limit falls.
    out, used = [], 0
    for block in text.split("\n\n"):
        words = block.split()
        if used + len(words) > max_tokens:
            if max_tokens - used > 0:
                out.append(" ".join(words[: max_tokens - used]))
            break
        out.append(block)
        used += len(words)
    return "\n\n".join(out), "length"


def _logprobs(text: str, pieces: list[tuple[str, float]], rng: random.Random) -> tuple[TokenLogprob, ...]:
    out: list[TokenLogprob] = []
    budget = count_words(text)
    for piece, conf in pieces:
        for w in piece.split():
            if len(out) >= budget:
                return tuple(out)
            out.append(TokenLogprob(w, -rng.expovariate(1.0 / conf)))
    return tuple(out)


def load(name: str = "", **options: Any) -> SimModel:
    """Registry loader for ``sim`` / ``sim:NAME``.

    Options override the named policy's fields: ``strength``, ``step_tokens``,
    ``latency``, ``price_input``/``price_output`` (USD per 1M tokens).
    """
    name = name or "default"
    base = POLICIES.get(name)
    if base is None:
        raise UserError(f"unknown simulated policy {name!r}; choose one of {', '.join(POLICIES)}")
    changes: dict[str, Any] = {}
    for key in ("strength", "step_tokens", "latency", "slip_logprob", "ok_logprob"):
        if key in options and options[key] is not None:
            changes[key] = type(getattr(base, key))(options[key])
    if "price_input" in options or "price_output" in options:
        changes["price"] = Price(float(options.get("price_input", base.price.input)),
                                 float(options.get("price_output", base.price.output)))
    unknown = set(options) - {"strength", "step_tokens", "latency", "slip_logprob", "ok_logprob",
                              "price_input", "price_output", "base_url"}
    if unknown:
        raise UserError(f"unknown option(s) for sim:{name}: {', '.join(sorted(unknown))}")
    cfg = replace(base, **changes) if changes else base
    if not 0.0 <= cfg.strength <= 1.0:
        raise UserError(f"sim policy strength must be in [0, 1], got {cfg.strength}")
    if cfg.step_tokens < 8:
        raise UserError(f"sim policy step_tokens must be >= 8, got {cfg.step_tokens}")
    return SimModel(name, cfg)


def _question_of(request: GenerationRequest) -> str:
    """The task's question: the user turn carrying a simulator tag.

    Multi-turn requests (a revision after verifier feedback) end with a user
    turn that is feedback, not the task; the tagged question comes first.
    """
    users = [m.get("content", "") for m in request.chat_messages() if m.get("role") == "user"]
    for text in users:
        if is_sim_question(text):
            return text
    if request.prompt is not None:
        return request.prompt
    return users[-1] if users else ""
