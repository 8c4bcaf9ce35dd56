"""Simulated tasks: running-total problems with a known step-by-step solution.

A task is a start value and ``k`` additions/subtractions; its correct solution
has exactly ``k`` steps (step ``j`` states the running total after operation
``j``) and the final answer is the last total. Each task has a difficulty in
[0, 1] that, together with the policy's strength, sets how often a simulated
model slips on a step (see :mod:`testtime.sim.policy`).

The question text carries everything the simulator needs, so any component
that only sees the question (the policy model behind ``ctx.generate``, the
simulated PRM and verifier) can rebuild the task without a shared registry::

    [sim 7-12 #2k] Start from 17. Add 5, then subtract 3, then add 12.
    What number do you end with?

The difficulty is **not readable** from the question: the tag carries it as
an opaque code (``#2k``: the difficulty in hundredths plus a keyed hash of
the task id, mod 101, in base 36), so a strategy that reads the question
learns nothing about how hard it is (the values look uniform; see
``tests/sim/test_honest_sim.py``). Only the simulated models decode it.
Strategies that want a difficulty estimate must earn it from samples (that
is what ``--strategy auto`` does). Old questions with a plain ``d=0.55`` tag
are still parsed.

A question without that tag (e.g. typed by hand to ``--model sim``) gets a
task derived from a hash of its text, so the simulator still answers it
deterministically.

Wrong trajectories do not land anywhere: a slip adds one of the task's
``distractor`` offsets to the running total (weighted, most likely first), and
the trajectory stays consistent from there, so wrong final answers spread over
a few popular distractors, as wrong answers of real models do. That is what
makes majority voting meaningful (and, on hard tasks, wrong).
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass
from functools import lru_cache

from testtime.search.base import Problem

#: Weights of the distractor offsets (first is the most popular wrong answer).
DISTRACTOR_WEIGHTS: tuple[float, ...] = (0.35, 0.25, 0.2, 0.2)
_OFFSETS = (-10, -2, -1, 1, 2, 10, -5, 5, 3, -3)
_TAG = re.compile(r"^\[sim (\S+) (?:#([0-9a-z]+)|d=([0-9.]+))\]")
_CODE_MOD = 101  # difficulties are hundredths 0..100
_OP = re.compile(r"\b(add|subtract) (\d+)", re.I)
_START = re.compile(r"Start from (-?\d+)")


@dataclass(frozen=True, slots=True, kw_only=True)
class SimTask:
    """One simulated problem.

    Attributes:
        id: stable identifier (``"SEED-INDEX"`` for generated tasks).
        difficulty: in [0, 1]; higher means more slips per step.
        start: the start value.
        ops: signed amounts added at each step (``len(ops)`` steps).
        distractors: offsets a slip adds to the running total, most popular first.
    """

    id: str
    difficulty: float
    start: int
    ops: tuple[int, ...]
    distractors: tuple[int, ...]

    @property
    def n_steps(self) -> int:
        return len(self.ops)

    @property
    def totals(self) -> tuple[int, ...]:
        """The correct running total after each step."""
        return _running_totals(self.start, self.ops)

    @property
    def answer(self) -> int:
        return self.start + sum(self.ops)

    @property
    def question(self) -> str:
        parts = [f"{'add' if op >= 0 else 'subtract'} {abs(op)}" for op in self.ops]
        ops = ", then ".join(parts)
        return (f"[sim {self.id} #{encode_difficulty(self.id, self.difficulty)}] Start from {self.start}. "
                f"{ops[0].upper()}{ops[1:]}. What number do you end with?")

    def problem(self) -> Problem:
        """The task as a :class:`Problem` (reference answer and difficulty included)."""
        return Problem(question=self.question, answer=str(self.answer), id=self.id,
                       meta={"difficulty": self.difficulty, "steps": self.n_steps, "sim": True})


def _difficulty_key(task_id: str) -> int:
    return zlib.crc32(f"sim-difficulty-key:{task_id}".encode()) % _CODE_MOD


def _base36(value: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        value, r = divmod(value, 36)
        out = digits[r] + out
        if not value:
            return out


def encode_difficulty(task_id: str, difficulty: float) -> str:
    """The opaque tag code for ``difficulty`` (hundredths + keyed hash, mod 101, base 36)."""
    hundredths = int(round(min(max(difficulty, 0.0), 1.0) * 100))
    return _base36((hundredths + _difficulty_key(task_id)) % _CODE_MOD)


def decode_difficulty(task_id: str, code: str) -> float:
    """Inverse of :func:`encode_difficulty` (simulator-internal: strategies never call it)."""
    return ((int(code, 36) - _difficulty_key(task_id)) % _CODE_MOD) / 100


@lru_cache(maxsize=8192)
def _running_totals(start: int, ops: tuple[int, ...]) -> tuple[int, ...]:
    out, value = [], start
    for op in ops:
        value += op
        out.append(value)
    return tuple(out)


def make_task(task_id: str, difficulty: float, n_steps: int, *, rng: random.Random) -> SimTask:
    """Build a task from an RNG (deterministic given the RNG state)."""
    start = rng.randint(1, 60)
    ops = []
    value = start
    for _ in range(n_steps):
        # Keep totals positive so answers read naturally.
        op = rng.randint(2, 49)
        if value - op > 0 and rng.random() < 0.4:
            op = -op
        value += op
        ops.append(op)
    return SimTask(id=task_id, difficulty=round(min(max(difficulty, 0.0), 1.0), 2), start=start,
                   ops=tuple(ops), distractors=_distractors(task_id))


def _distractors(task_id: str) -> tuple[int, ...]:
    # Derived from the id alone so the task rebuilt from its question agrees.
    rng = random.Random(f"sim-distractors:{task_id}")
    return tuple(rng.sample(_OFFSETS, len(DISTRACTOR_WEIGHTS)))


def generate_tasks(n: int, *, seed: int = 0, difficulty: tuple[float, float] = (0.2, 0.8),
                   steps: tuple[int, int] = (3, 8)) -> list[SimTask]:
    """``n`` tasks, deterministic given ``seed`` and the ranges.

    Args:
        n: how many tasks.
        seed: the task set's seed (task ids are ``"SEED-INDEX"``).
        difficulty: uniform range of per-task difficulty.
        steps: inclusive range of the number of solution steps.
    """
    tasks = []
    for i in range(n):
        rng = random.Random(f"sim-task:{seed}:{i}:{difficulty}:{steps}")
        d = rng.uniform(*difficulty)
        k = rng.randint(*steps)
        tasks.append(make_task(f"{seed}-{i}", d, k, rng=rng))
    return tasks


def generate_problems(n: int, *, seed: int = 0, difficulty: tuple[float, float] = (0.2, 0.8),
                      steps: tuple[int, int] = (3, 8)) -> list[Problem]:
    """Like :func:`generate_tasks` but as :class:`Problem` objects."""
    return [t.problem() for t in generate_tasks(n, seed=seed, difficulty=difficulty, steps=steps)]


@lru_cache(maxsize=8192)
def task_from_question(question: str) -> SimTask:
    """Rebuild the task a question describes (or derive one from its hash)."""
    match = _TAG.match(question)
    start = _START.search(question)
    ops = _OP.findall(question)
    if match and start and ops:
        if match.group(2) is not None:
            difficulty = decode_difficulty(match.group(1), match.group(2))
        else:
            difficulty = float(match.group(3))
        return SimTask(
            id=match.group(1),
            difficulty=difficulty,
            start=int(start.group(1)),
            ops=tuple(int(v) if w.lower() == "add" else -int(v) for w, v in ops),
            distractors=_distractors(match.group(1)),
        )
    # A free-form question: a medium task derived from the text, so the
    # simulator stays deterministic on anything it is asked.
    crc = zlib.crc32(question.encode())
    return make_task(f"q{crc:08x}", 0.5, 4, rng=random.Random(crc))


def is_sim_question(question: str) -> bool:
    """True when the question carries a simulator task tag."""
    return bool(_TAG.match(question))
