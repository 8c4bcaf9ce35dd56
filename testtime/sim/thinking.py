"""A simulated thinking model (``sim:thinking``) and the thinking-split benchmark.

:class:`SimThinkingModel` is a ``<think>``-tag model over the simulator's
tasks (:mod:`testtime.sim.tasks`), run through the ordinary spend path:

* Asked for a reply, it thinks (between ``<think>`` and ``</think>``) for a
  natural length ``L`` of words -- drawn per sample, about
  ``overthink x tau(d)``: it overthinks, as reasoning models do -- then writes a
  short answer ``"... The answer is X."``. A stop sequence ends the reply
  where it matches (a thinking policy stops thinking at ``</think>``);
  ``max_tokens`` truncates (``"length"``).
* A request whose prefix holds the open thinking (``<think>`` with no
  ``</think>`` after it) continues that thinking; each ``Wait`` in it (budget
  forcing) lengthens the natural thinking by half.
* A request whose prefix closed the thinking writes the answer. The answer is
  correct with probability ``p(t) = p0 + (p_max(d) - p0) * (1 - exp(-t / tau(d)))``
  for ``t`` thinking words in the prefix: accuracy rises with thinking length
  and saturates; ``p_max`` falls with difficulty, ``tau`` grows with it.
  Correctness is coupled across lengths (one uniform draw per sample): the
  same sample with longer thinking is never less correct. A wrong answer is
  the task's distractor (weighted), so wrong votes concentrate as in
  :mod:`testtime.sim.policy`.
* Tokens are whitespace-separated words; the prompt (messages + prefix) is
  billed on every call, and sample ``i`` with ``seed=s`` is a pure function of
  ``(s + i, question)`` -- the same for every segment of one generation.

:func:`run_split_bench` compares thinking shares at matched total budgets:
for total budget ``B`` and share ``f`` each sample may think ``f x B`` tokens
(then answer with ``answer_budget``), and self-consistency draws as many
samples as the rest of ``B`` pays for. ``python -m testtime.sim.thinking``
prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import re
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from testtime.errors import UserError
from testtime.models.base import Capabilities, Generation, GenerationRequest, Model
from testtime.models.prices import Price
from testtime.sim.tasks import DISTRACTOR_WEIGHTS, SimTask, task_from_question
from testtime.thinking import ThinkingPolicy, with_thinking

OPEN, CLOSE = "<think>", "</think>"
_THOUGHTS = (
    "Let me work through the operations one at a time.",
    "I should double check the running total before going on.",
    "Hmm, adding and subtracting in order keeps this straight.",
    "If I group the additions first the arithmetic is easier.",
    "That matches what I had before, so I can move on.",
    "Let me recompute that last value to be sure of it.",
)
_THOUGHT_WORDS = tuple(w for s in _THOUGHTS for w in s.split())
_NOTICE = re.compile(r"\[\d+ thinking tokens left\]")


@dataclass(frozen=True, slots=True, kw_only=True)
class ThinkingConfig:
    """How the simulated thinking model behaves.

    Attributes:
        strength: skill in [0, 1]; ``p_max(d) = sigmoid(6 (strength - d) + 2)``.
        p0: accuracy with no thinking at all.
        tau: thinking words to reach ~63% of the gain at difficulty 0.5
            (``tau(d) = tau x (0.5 + d)``).
        overthink: median natural thinking length in units of ``tau(d)``.
        answer_words: length of the answer after thinking.
        price: USD per million tokens.
    """

    strength: float = 0.6
    p0: float = 0.1
    tau: float = 300.0
    overthink: float = 3.0
    answer_words: int = 12
    price: Price = Price(0.5, 2.0)


def accuracy_at(config: ThinkingConfig, difficulty: float, thinking_words: float) -> float:
    """``p(t)``: the chance an answer after ``thinking_words`` of thinking is right."""
    p_max = 1.0 / (1.0 + math.exp(-(6.0 * (config.strength - difficulty) + 2.0)))
    tau = config.tau * (0.5 + difficulty)
    gain = 1.0 - math.exp(-max(thinking_words, 0.0) / tau)
    return config.p0 + (max(p_max, config.p0) - config.p0) * gain


def _words(text: str) -> int:
    return len(text.split())


class SimThinkingModel(Model):
    """The seeded ``<think>``-tag model (see the module docstring)."""

    backend = "sim"

    def __init__(self, name: str = "thinking", config: ThinkingConfig | None = None) -> None:
        self.config = config or ThinkingConfig()
        super().__init__(name, price=self.config.price)
        self._fallback = random.Random()
        self.calls = 0

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(native_n=True, logprobs=False, prefix=True, exact_token_count=True)

    def count_tokens(self, text: str) -> int:
        return _words(text)

    def billed_input(self, request: GenerationRequest) -> int:
        msgs = request.chat_messages()
        return sum(_words(m.get("content", "")) + 4 for m in msgs) + _words(request.prefix)

    def input_upper_bound(self, request: GenerationRequest) -> int:
        return self.billed_input(request) + 8

    async def generate(self, request: GenerationRequest) -> list[Generation]:
        self.calls += 1
        question = _question(request)
        task = task_from_question(question)
        key = zlib.crc32(question.encode())
        gens = []
        for i in range(request.n):
            if request.temperature == 0:
                seed: Any = key
            elif request.seed is None:
                seed = self._fallback.getrandbits(64)
            else:
                seed = hash((request.seed + i, key))
            text, finish = self._sample(task, request, random.Random(seed))
            inp = self.billed_input(request) if i == 0 else 0
            gens.append(Generation(text=text, finish_reason=finish, usage=self.usage(inp, _words(text)),
                                   model=self.name))
        return gens

    def _sample(self, task: SimTask, request: GenerationRequest, rng: random.Random) -> tuple[str, str]:
        cfg = self.config
        u = rng.random()  # this sample's luck, the same for every segment
        tau = cfg.tau * (0.5 + task.difficulty)
        natural = max(8, int(cfg.overthink * tau * math.exp(rng.gauss(0.0, 0.4))))
        prefix = request.prefix
        at = prefix.rfind(OPEN)
        if at >= 0 and CLOSE in prefix[at:]:
            thought = prefix[at + len(OPEN): prefix.index(CLOSE, at)]
            return self._answer(task, request, thought, u, rng)
        if at >= 0:
            so_far = prefix[at + len(OPEN):]
            out = ""
        else:
            so_far = ""
            out = OPEN + "\n"
        waits = so_far.count("Wait")
        done = _words(_NOTICE.sub(" ", so_far))
        target = int(natural * (1.0 + 0.5 * waits))
        more = max(target - done, 0)
        thinking = " ".join(_THOUGHT_WORDS[(done + k) % len(_THOUGHT_WORDS)] for k in range(more))
        if thinking and so_far and not so_far[-1].isspace():
            thinking = " " + thinking  # a continuation starts a new word, as real tokens do
        out += thinking + ("\n" + CLOSE + "\n\n" if thinking else CLOSE + "\n\n")
        answer, _ = self._answer(task, request, (so_far + " " + thinking), u, rng)
        return _finish(out + answer, request)

    def _answer(self, task: SimTask, request: GenerationRequest, thought: str, u: float,
                rng: random.Random) -> tuple[str, str]:
        t = _words(_NOTICE.sub(" ", thought))
        ok = u < accuracy_at(self.config, task.difficulty, t)
        value = task.answer if ok else task.answer + rng.choices(task.distractors, weights=DISTRACTOR_WEIGHTS)[0]
        lead = "Putting the steps together gives the final total."
        words = lead.split()[: max(self.config.answer_words - 4, 0)]
        text = " ".join(words + ["The", "answer", "is", f"{value}."])
        return _finish(text, request)


def _finish(text: str, request: GenerationRequest) -> tuple[str, str]:
    """Apply stop sequences, then max_tokens (in words)."""
    finish = "eos"
    cut = None
    for s in request.stop:
        if s:
            i = text.find(s)
            if i >= 0 and (cut is None or i < cut):
                cut = i
    if cut is not None:
        text, finish = text[:cut], "stop"
    words = text.split()
    if len(words) > request.max_tokens:
        # Keep the original spacing of the words kept.
        spans = [m.end() for m in re.finditer(r"\S+", text)]
        text, finish = text[: spans[request.max_tokens - 1]], "length"
    return text, finish


def _question(request: GenerationRequest) -> str:
    users = [m.get("content", "") for m in request.chat_messages() if m.get("role") == "user"]
    return users[0] if users else (request.prompt or "")


_OPTIONS = {"strength", "p0", "tau", "overthink", "answer_words"}


def load(name: str = "thinking", **options: Any) -> Model:
    """Registry loader for ``sim:thinking``.

    Model options set the :class:`ThinkingConfig` fields (``strength``, ``p0``,
    ``tau``, ``overthink``, ``answer_words``); thinking-policy options
    (``thinking_budget``, ``answer_budget``, ``min_thinking``, ...) wrap the
    model in that policy, so ``bench`` can compare splits by model spec alone.
    """
    policy_opts = {k: options.pop(k) for k in list(options) if k in ThinkingPolicy.__dataclass_fields__
                   or k in ("open_tag", "close_tag")}
    options.pop("base_url", None)
    unknown = set(options) - _OPTIONS
    if unknown:
        raise UserError(f"unknown option(s) for sim:{name}: {', '.join(sorted(unknown))}; "
                        f"known: {', '.join(sorted(_OPTIONS))} and the thinking policy options")
    changes = {k: type(getattr(ThinkingConfig(), k))(v) for k, v in options.items()}
    cfg = replace(ThinkingConfig(), **changes)
    if not 0.0 <= cfg.strength <= 1.0 or not 0.0 <= cfg.p0 <= 1.0 or cfg.tau <= 0 or cfg.answer_words < 4:
        raise UserError(f"sim:{name}: strength and p0 must be in [0, 1], tau > 0, answer_words >= 4")
    model = SimThinkingModel(name or "thinking", cfg)
    return with_thinking(model, **policy_opts) if policy_opts else model


def load_sim(name: str = "", **options: Any) -> Model:
    """The ``sim`` backend: ``sim:thinking`` is this module's model, any other name the policy simulator."""
    if name == "thinking" or name.startswith("thinking-"):
        return load(name, **options)
    from testtime.sim.policy import load as load_policy

    return load_policy(name, **options)


# --------------------------------------------------------------- the bench
@dataclass(slots=True, kw_only=True)
class SplitRow:
    """One cell of the thinking-split comparison."""

    budget: int
    share: float
    thinking_budget: int
    accuracy: float
    mean_samples: float
    mean_thinking: float
    mean_tokens: float
    max_spend_ratio: float
    problems: int

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}  # type: ignore[attr-defined]


async def _one(problem: Any, budget: int, share: float, answer_budget: int, seed: int,
               strategy: str, config: ThinkingConfig) -> tuple[bool, int, float, float]:
    from testtime.budget import Budget, BudgetLedger
    from testtime.context import RunContext
    from testtime.search.registry import make_strategy
    from testtime.verifiers.answer import normalize_answer

    policy = ThinkingPolicy(thinking_budget=max(int(share * budget), 1), answer_budget=answer_budget)
    model = with_thinking(SimThinkingModel("thinking", config), policy)
    ctx = RunContext(model=model, ledger=BudgetLedger(Budget(tokens=budget)), rng=random.Random(seed),
                     seed=seed, max_tokens=answer_budget)
    result = await make_strategy(strategy).search(problem, ctx)
    if ctx.ledger.open_reservations():
        raise RuntimeError(f"{strategy} left open reservations")
    ok = result.answer is not None and normalize_answer(result.answer) == normalize_answer(problem.answer)
    samples = len(result.candidates)
    used = ctx.ledger.usage
    thinking = used.reasoning_tokens / samples if samples else 0.0
    return ok, samples, thinking, ctx.ledger.spent("tokens")


async def run_split_bench(*, budgets: Sequence[int] = (2000, 8000, 32000),
                          shares: Sequence[float] = (0.03, 0.12, 0.45), problems: int = 100, seed: int = 0,
                          answer_budget: int = 32, strategy: str = "self_consistency",
                          config: ThinkingConfig | None = None, concurrency: int = 64) -> list[SplitRow]:
    """Accuracy per (total budget, thinking share) on the same simulated problems."""
    from testtime.sim.tasks import generate_problems

    cfg = config or ThinkingConfig()
    probs = generate_problems(problems, seed=seed)
    sem = asyncio.Semaphore(max(concurrency, 1))
    rows = []
    for budget in budgets:
        for share in shares:
            async def limited(i: int, p: Any, budget: int = budget, share: float = share) -> Any:
                async with sem:
                    return await _one(p, budget, share, answer_budget, seed * 100_003 + i, strategy, cfg)

            out = await asyncio.gather(*(limited(i, p) for i, p in enumerate(probs)))
            n = len(out)
            rows.append(SplitRow(budget=budget, share=share, thinking_budget=max(int(share * budget), 1),
                                 accuracy=sum(o[0] for o in out) / n, mean_samples=sum(o[1] for o in out) / n,
                                 mean_thinking=sum(o[2] for o in out) / n,
                                 mean_tokens=sum(o[3] for o in out) / n,
                                 max_spend_ratio=max(o[3] for o in out) / budget, problems=n))
    return rows


def markdown(rows: Sequence[SplitRow]) -> str:
    """The rows as a Markdown table."""
    lines = ["| budget | thinking share | thinking budget | accuracy | samples | thinking/sample | "
             "tokens/budget (mean, max) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.budget} | {r.share:.2f} | {r.thinking_budget} | {r.accuracy:.2f} | "
                     f"{r.mean_samples:.1f} | {r.mean_thinking:.0f} | "
                     f"{r.mean_tokens / r.budget:.2f}, {r.max_spend_ratio:.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m testtime.sim.thinking``: print the thinking-split table."""
    parser = argparse.ArgumentParser(prog="python -m testtime.sim.thinking", description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", default="2000,8000,32000", help="total token budgets per problem")
    parser.add_argument("--shares", default="0.03,0.12,0.45",
                        help="thinking budget per sample, as a share of the total budget")
    parser.add_argument("--problems", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--answer-budget", type=int, default=32)
    parser.add_argument("--strategy", default="self_consistency")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    rows = asyncio.run(run_split_bench(budgets=[int(float(b)) for b in args.budgets.split(",")],
                                       shares=[float(s) for s in args.shares.split(",")],
                                       problems=args.problems, seed=args.seed,
                                       answer_budget=args.answer_budget, strategy=args.strategy))
    print(markdown(rows))
    print(f"\n{args.problems} problems, seed {args.seed}, {args.strategy}, answer budget "
          f"{args.answer_budget}; {time.monotonic() - t0:.1f} s")


if __name__ == "__main__":
    main()
