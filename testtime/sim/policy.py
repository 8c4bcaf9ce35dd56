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
* ``logprobs=True`` returns synthetic per-token log-probabilities whose
  signal strength is a knob, ``logprob_auroc`` (default 0.65, about what
  token confidence achieves on real reasoning models): each step draws a
  latent mean |logprob| ``m`` with ``log m ~ Normal(log ok_logprob + D *
  slipped, logprob_spread)``, ``D = sqrt(2) * logprob_spread *
  Phi^-1(logprob_auroc)``, and its tokens get ``-m * e_i / mean(e)``
  (``e_i ~ Exp(1)``), so the step's mean logprob is exactly ``-m``. The AUROC
  of "mean logprob of the step" between slipped steps (the step where the
  trajectory goes wrong) and correct steps is then ``logprob_auroc``
  (``tests/sim/test_honest_sim.py`` measures it back). Steps after a slip are
  drawn like correct ones: the model continues its wrong trajectory just as
  confidently;
* hesitation markers: with probability ``hesitation_rate`` a step contains
  one ("Wait, let me double-check this step."); on the final step the
  marker comes *after* the stated answer and opens a re-check passage of
  about ``recheck_tokens`` tokens ending in "Yes, the answer is B." -- the
  self-verification tail that Solve-Detect-Verify's detector cuts off;
* a prefix that ends mid-step (a chunked solver, a cut at ``max_tokens``)
  is continued: the step is completed word for word from where it stopped
  (the rest of its text, its answer sentence) and the next steps follow
  after the blank-line separator. A prefix ending in foreign text gets the
  separator before the next step.

Named policies (:data:`POLICIES`) differ in strength, step length and price.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import zlib
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import Any

from testtime.errors import UserError
from testtime.models.base import Capabilities, Generation, GenerationRequest, Model, TokenLogprob
from testtime.models.prices import Price
from testtime.sim.tasks import DISTRACTOR_WEIGHTS, SimTask, is_sim_question, task_from_question

_STEP_VALUE = re.compile(r"Step (\d+): \S+ -?\d+ \S+ (-?\d+) to get (-?\d+)")
_ANSWER_STATED = re.compile(r"answer is (-?\d+)\.")
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
    """How a simulated policy behaves (every field is a ``sim`` model option).

    Attributes:
        strength: skill in [0, 1]; per-step accuracy rises with it.
        step_tokens: mean tokens per step (each step's length varies +-40%).
        price: USD per million tokens.
        logprob_auroc: AUROC of a step's mean token logprob between slipped
            and correct steps (0.5: no signal; 0.65 default: realistic token
            confidence; 0.99: a near-oracle, what the simulator used to be).
        ok_logprob: median mean |logprob| of a correct step's tokens.
        logprob_spread: standard deviation of log(mean |logprob|) per step.
        hesitation_rate: probability that a step contains a hesitation marker
            ("Wait, ..."); on the last step it follows the answer and opens a
            re-check passage.
        recheck_tokens: mean length of that re-check passage.
        latency: seconds to await per call (0: none; the simulator is CPU only).
    """

    strength: float = 0.55
    step_tokens: int = 45
    price: Price = Price(0.5, 1.5)
    logprob_auroc: float = 0.65
    ok_logprob: float = 0.3
    logprob_spread: float = 0.5
    hesitation_rate: float = 0.15
    recheck_tokens: int = 40
    latency: float = 0.0

    @property
    def logprob_shift(self) -> float:
        """``D``: how much larger log(mean |logprob|) is on a slipped step."""
        a = min(max(self.logprob_auroc, 0.5), 0.9999)
        return math.sqrt(2.0) * self.logprob_spread * NormalDist().inv_cdf(a)


#: Named policies for ``sim:NAME``; plain ``sim`` is ``default``.
POLICIES: dict[str, PolicyConfig] = {
    "weak": PolicyConfig(strength=0.35, step_tokens=30, price=Price(0.1, 0.4)),
    "default": PolicyConfig(),
    "strong": PolicyConfig(strength=0.75, step_tokens=60, price=Price(3.0, 12.0)),
}

#: Options :func:`load` accepts (PolicyConfig fields plus prices).
_OPTION_FIELDS = ("strength", "step_tokens", "latency", "logprob_auroc", "ok_logprob", "logprob_spread",
                  "hesitation_rate", "recheck_tokens")
#: Marker sentences (each starts with a marker of solve_detect_verify.DEFAULT_MARKERS).
HESITATIONS = ("Wait, let me double-check this step.", "Hmm, let me check that again.",
               "Wait, is that right? Yes, it is.")
_RECHECK_OPEN = "Wait, let me double-check the running total from the start."


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


def _filler(rng: random.Random, n: int) -> list[str]:
    words: list[str] = []
    while len(words) < n:
        words.extend(_FILLER_WORDS[rng.randrange(len(_FILLER_WORDS))])
    return words[:n]


def step_words(task: SimTask, j: int, before: int, after: int, length: int, rng: random.Random, *,
               hesitation_rate: float = 0.0, recheck_tokens: int = 40) -> list[str]:
    """The words of step ``j`` (1-based): core, optional hesitation, filler, answer, re-check.

    ``before`` / ``after`` are the trajectory's offsets from the right running
    total before and after the step (they differ on the step that slips).
    """
    op = task.ops[j - 1]
    value_before = (task.totals[j - 2] if j > 1 else task.start) + before
    value_after = task.totals[j - 1] + after
    core = (f"Step {j}: {'add' if op >= 0 else 'subtract'} {abs(op)} "
            f"{'to' if op >= 0 else 'from'} {value_before} to get {value_after}.").split()
    hesitate = hesitation_rate > 0 and rng.random() < hesitation_rate
    words = list(core)
    last = j == task.n_steps
    if hesitate and not last:
        words.extend(HESITATIONS[rng.randrange(len(HESITATIONS))].split())
    # Pad with filler prose to a realistic, varying step length.
    target = max(len(words), int(length * rng.uniform(0.6, 1.4)))
    words.extend(_filler(rng, target - len(words)))
    if last:
        words.extend(_answer_words(value_after))
        if hesitate:
            words.extend(_recheck_words(value_after, recheck_tokens, rng))
    return words


def _answer_words(value: int) -> list[str]:
    return ["The", "answer", "is", f"{value}."]


def _recheck_words(value: int, tokens: int, rng: random.Random) -> list[str]:
    opening = _RECHECK_OPEN.split()
    closing = ["Yes,", "the", "answer", "is", f"{value}."]
    body = max(0, int(tokens * rng.uniform(0.6, 1.4)) - len(opening) - len(closing))
    return opening + _filler(rng, body) + closing


def step_text(task: SimTask, j: int, offset: int, length: int, rng: random.Random) -> str:
    """The text of step ``j`` (1-based) of a trajectory whose total is off by ``offset``
    (no hesitation; kept for callers that build solutions by hand)."""
    before = offset if j > 1 else 0
    return " ".join(step_words(task, j, before, offset, length, rng))


def _tail_overlap(words: list[str], tail: list[str]) -> int:
    """The longest ``m`` with ``words[-m:] == tail[:m]`` (0: none)."""
    for m in range(min(len(words), len(tail)), 0, -1):
        if words[-m:] == tail[:m]:
            return m
    return 0


def _states(task: SimTask, prefix: str) -> list[tuple[int, int, int]]:
    """``(step, offset before, offset after)`` of each parseable step in ``prefix``."""
    out = []
    for j, before, value in _STEP_VALUE.findall(prefix):
        j = int(j)
        if not 1 <= j <= task.n_steps:
            continue
        start = task.totals[j - 2] if j > 1 else task.start
        out.append((j, int(before) - start, int(value) - task.totals[j - 1]))
    return out


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
        key = zlib.crc32(request.prefix.encode(), zlib.crc32(question.encode()))
        gens = []
        for i in range(request.n):
            if request.temperature == 0:
                seed: Any = key
            elif request.seed is None:
                seed = self._fallback_rng.getrandbits(64)
            else:
                seed = hash((request.seed + i, key))
            text, finish, lps = self._sample(task, request, random.Random(seed))
            inp = self.billed_input(request) if i == 0 else 0
            gens.append(Generation(text=text, finish_reason=finish, logprobs=lps,
                                   usage=self.usage(inp, count_words(text)), model=self.name))
        return gens

    def _latent(self, slipped: bool, rng: random.Random) -> float:
        """A step's mean |logprob| (see the module docstring)."""
        cfg = self.config
        mu = math.log(cfg.ok_logprob) + (cfg.logprob_shift if slipped else 0.0)
        return math.exp(rng.gauss(mu, cfg.logprob_spread))

    def _step(self, task: SimTask, j: int, offset: int, rng: random.Random) -> tuple[list[str], int, bool]:
        """A fresh step ``j`` after a trajectory at ``offset``: (words, offset after, slipped)."""
        slipped = False
        after = offset
        if offset == 0 and rng.random() >= step_accuracy(self.config.strength, task.difficulty):
            after = rng.choices(task.distractors, weights=DISTRACTOR_WEIGHTS)[0]
            slipped = True
        words = step_words(task, j, offset, after, self.config.step_tokens, rng,
                           hesitation_rate=self.config.hesitation_rate,
                           recheck_tokens=self.config.recheck_tokens)
        return words, after, slipped

    def _finish_step(self, task: SimTask, j: int, offset: int, block: list[str],
                     rng: random.Random) -> list[str]:
        """The rest of step ``j`` whose core (and result) ``block`` already states."""
        cfg = self.config
        value = task.totals[j - 1] + offset
        target = int(cfg.step_tokens * rng.uniform(0.6, 1.4))
        if j < task.n_steps:
            return _filler(rng, max(0, target - len(block)))
        text = " ".join(block)
        stated = _ANSWER_STATED.findall(text)
        if not stated:
            ans = _answer_words(value)
            m = _tail_overlap(block, ans)
            rest = ([] if m else _filler(rng, max(0, target - len(block)))) + ans[m:]
            if cfg.hesitation_rate > 0 and rng.random() < cfg.hesitation_rate:
                rest += _recheck_words(value, cfg.recheck_tokens, rng)
            return rest
        after_answer = text[text.find("answer is"):]
        if len(stated) == 1 and "Wait," in after_answer:
            closing = ["Yes,", "the", "answer", "is", f"{value}."]
            m = _tail_overlap(block, closing)
            return ([] if m else _filler(rng, rng.randint(0, 8))) + closing[m:]
        return []

    def _sample(self, task: SimTask, request: GenerationRequest,
                rng: random.Random) -> tuple[str, str, tuple[TokenLogprob, ...] | None]:
        """One continuation of ``request.prefix``: text, finish reason, logprobs."""
        prefix = request.prefix
        states = _states(task, prefix)
        done, offset = (states[-1][0], states[-1][2]) if states else (0, 0)
        pieces: list[tuple[str, float]] = []  # (text, mean |logprob| of its tokens)
        text = ""
        finish = "eos"

        def emit(piece: str, latent: float, j: int) -> bool:
            nonlocal text, finish
            text += piece
            pieces.append((piece, latent))
            cut = _first_stop(text + ("\n\n" if j < task.n_steps else ""), request.stop)
            if cut is not None:
                text = text[:cut]
                finish = "stop"
                return True
            return False

        block = prefix.rsplit("\n\n", 1)[-1] if prefix and not prefix.endswith("\n\n") else ""
        words = block.split()
        lead = "" if not prefix or prefix[-1].isspace() else " "
        stopped = False
        if words and states and _STEP_VALUE.search(block) and int(_STEP_VALUE.search(block).group(1)) == done:
            # Mid-step, result stated: finish this step, then go on.
            rest = self._finish_step(task, done, offset, words, rng)
            if rest:
                slipped = offset != 0 and states[-1][1] == 0
                stopped = emit(lead + " ".join(rest), self._latent(slipped, rng), done)
            sep = "\n\n"
        elif words and done < task.n_steps and words[0] == "Step":
            # Mid-step, inside the step's core: complete it word for word.
            full, after, slipped = self._step(task, done + 1, offset, rng)
            if full[:len(words)] == words:
                done += 1
                offset = after
                stopped = emit(lead + " ".join(full[len(words):]), self._latent(slipped, rng), done)
                sep = "\n\n"
            else:
                sep = "\n\n"
        else:
            sep = "" if not prefix or prefix.endswith("\n\n") else ("\n" if prefix.endswith("\n") else "\n\n")
        j = done + 1
        while not stopped and j <= task.n_steps:
            step, offset2, slipped = self._step(task, j, offset, rng)
            offset = offset2
            stopped = emit(sep + " ".join(step), self._latent(slipped, rng), j)
            sep = "\n\n"
            j += 1
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
    # Cut right after the max_tokens-th word, keeping the text as written
    # (spaces, separators), so a continuation of the cut text reads on.
    if max_tokens <= 0:
        return "", "length"
    for i, m in enumerate(re.finditer(r"\S+", text), start=1):
        if i == max_tokens:
            return text[: m.end()], "length"
    return text, "length"


def _logprobs(text: str, pieces: list[tuple[str, float]], rng: random.Random) -> tuple[TokenLogprob, ...]:
    """Per-token logprobs; each piece's tokens average exactly ``-latent``."""
    out: list[TokenLogprob] = []
    budget = count_words(text)
    for piece, latent in pieces:
        words = piece.split()
        if not words:
            continue
        e = [rng.expovariate(1.0) for _ in words]
        scale = latent * len(e) / sum(e)
        for w, x in zip(words, e, strict=True):
            if len(out) >= budget:
                return tuple(out)
            out.append(TokenLogprob(w, -x * scale))
    return tuple(out)


def load(name: str = "", **options: Any) -> SimModel:
    """Registry loader for ``sim`` / ``sim:NAME``.

    Options override the named policy's fields (any :class:`PolicyConfig`
    field: ``strength``, ``step_tokens``, ``logprob_auroc``, ``ok_logprob``,
    ``logprob_spread``, ``hesitation_rate``, ``recheck_tokens``, ``latency``)
    and ``price_input``/``price_output`` (USD per 1M tokens).
    """
    name = name or "default"
    base = POLICIES.get(name)
    if base is None:
        raise UserError(f"unknown simulated policy {name!r}; choose one of {', '.join(POLICIES)}")
    changes: dict[str, Any] = {}
    for key in _OPTION_FIELDS:
        if key in options and options[key] is not None:
            changes[key] = type(getattr(base, key))(options[key])
    if "price_input" in options or "price_output" in options:
        changes["price"] = Price(float(options.get("price_input", base.price.input)),
                                 float(options.get("price_output", base.price.output)))
    unknown = set(options) - {*_OPTION_FIELDS, "price_input", "price_output", "base_url"}
    if unknown:
        raise UserError(f"unknown option(s) for sim:{name}: {', '.join(sorted(unknown))}")
    cfg = replace(base, **changes) if changes else base
    if not 0.0 <= cfg.strength <= 1.0:
        raise UserError(f"sim policy strength must be in [0, 1], got {cfg.strength}")
    if cfg.step_tokens < 8:
        raise UserError(f"sim policy step_tokens must be >= 8, got {cfg.step_tokens}")
    if not 0.5 <= cfg.logprob_auroc < 1.0:
        raise UserError(f"sim policy logprob_auroc must be in [0.5, 1), got {cfg.logprob_auroc}")
    if cfg.ok_logprob <= 0 or cfg.logprob_spread <= 0:
        raise UserError("sim policy needs ok_logprob > 0 and logprob_spread > 0")
    if not 0.0 <= cfg.hesitation_rate <= 1.0:
        raise UserError(f"sim policy hesitation_rate must be in [0, 1], got {cfg.hesitation_rate}")
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
