"""Verifier and process-reward-model interfaces.

A :class:`Verifier` judges a whole candidate; a :class:`ProcessRewardModel`
scores each reasoning step. Both receive the :class:`RunContext` so that
model-backed ones spend through the same ledger (role ``"verify"``).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from testtime.errors import UserError

if TYPE_CHECKING:
    from testtime.context import RunContext
    from testtime.search.base import Problem


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """A verifier's judgement: ``score`` in [0, 1], ``passed``, and why."""

    score: float
    passed: bool
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (0.0 <= self.score <= 1.0) or math.isnan(self.score):
            raise ValueError(f"verdict score must be in [0, 1], got {self.score}")


class Verifier(abc.ABC):
    """Judges a candidate solution to a problem."""

    name: ClassVar[str] = "verifier"

    @abc.abstractmethod
    async def verify(self, problem: Problem, candidate: str, ctx: RunContext) -> Verdict:
        """Score ``candidate`` (the full solution text) for ``problem``."""

    async def verify_many(self, problem: Problem, candidates: Sequence[str], ctx: RunContext) -> list[Verdict]:
        import asyncio

        return list(await asyncio.gather(*(self.verify(problem, c, ctx) for c in candidates)))


AGGREGATIONS = ("min", "last", "product", "mean")


def aggregate(scores: Sequence[float], how: str = "min") -> float:
    """Combine step scores into one solution score."""
    if not scores:
        return 0.0
    if how == "min":
        return min(scores)
    if how == "last":
        return scores[-1]
    if how == "product":
        return math.prod(scores)
    if how == "mean":
        return sum(scores) / len(scores)
    raise UserError(f"unknown PRM aggregation {how!r}; choose one of {', '.join(AGGREGATIONS)}")


class ProcessRewardModel(abc.ABC):
    """Scores every step of a (partial) solution in [0, 1].

    Attributes:
        aggregation: how :meth:`score` folds step scores (min/last/product/mean).
    """

    name: ClassVar[str] = "prm"
    aggregation: str = "min"

    @abc.abstractmethod
    async def score_steps(self, problem: Problem, steps: Sequence[str], ctx: RunContext) -> list[float]:
        """One score per step; ``len(result) == len(steps)``."""

    async def score(self, problem: Problem, steps: Sequence[str], ctx: RunContext) -> float:
        return aggregate(await self.score_steps(problem, steps, ctx), self.aggregation)
