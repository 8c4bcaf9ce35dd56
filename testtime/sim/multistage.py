"""Simulated multi-stage tasks with known per-stage, per-model success curves.

Each stage ``s`` served by model ``m`` with ``k`` samples succeeds with

    p_s(m, k) = cap_sm * (1 - (1 - a_eff)^k) * fall(k)
    a_eff     = a_sm * (floor + (1 - floor) * p_{s-1})
    fall(k)   = 1 - drop_s * max(0, log2(k / sat_s))

and the task succeeds with probability ``prod_s p_s``. This encodes the three
regularities AgentTTS reports: stages prefer different models (``a`` and
``cap`` differ by stage; a small model with more samples can beat a large
one), returns from more samples saturate and then fall past a stage-specific
point ``sat_s`` (selection among many samples gets noisier), and stage
allocations interact (a better upstream stage makes each downstream sample
more useful through ``a_eff``). Because the curves are known, the exhaustive
optimum under a budget is computable (:meth:`SimTask.optimum`).

A simulated training set of ``n_train`` examples gives noisy observed
accuracy: Binomial(n_train, p) / n_train, seeded by the allocation so the
same allocation on the same training set always scores the same.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import cached_property

from testtime.agents.allocation import (
    DEFAULT_LEVELS,
    Allocation,
    AllocationSpace,
    ModelOption,
    Stage,
)
from testtime.budget import Budget
from testtime.errors import UserError

#: Simulated models: relative tokens per sample, USD per 1M tokens, base skill.
SIM_MODELS: dict[str, tuple[float, float, float]] = {
    "small": (1.0, 0.15, 0.30),
    "medium": (3.0, 0.60, 0.50),
    "large": (9.0, 3.00, 0.70),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class StageCurve:
    """Known success-vs-samples curve of one model at one stage."""

    a: float  # per-sample success probability (before upstream interaction)
    cap: float  # ceiling of selection among samples


@dataclass(frozen=True, slots=True, kw_only=True)
class SimStage:
    name: str
    tokens_scale: float  # tokens of one sample of the cheapest model here
    sat: float  # saturation point (samples) past which returns fall
    drop: float  # how fast they fall per doubling past ``sat``
    curves: dict[str, StageCurve]


@dataclass(frozen=True, kw_only=True)
class SimTask:
    """A simulated multi-stage task and its default total budget."""

    name: str
    stages: tuple[SimStage, ...]
    budget: Budget
    floor: float = 0.6  # how much a stage works even with a failing upstream stage
    levels: tuple[int, ...] = DEFAULT_LEVELS

    # ------------------------------------------------------------ the space
    def allocation_stages(self) -> list[Stage]:
        out = []
        for st in self.stages:
            opts = []
            for m in st.curves:
                rel, usd_per_m, _ = SIM_MODELS[m]
                tokens = round(st.tokens_scale * rel)
                opts.append(ModelOption(name=m, tokens_per_sample=tokens, usd_per_sample=tokens * usd_per_m / 1e6))
            out.append(Stage(name=st.name, options=tuple(opts)))
        return out

    def space(self, budget: Budget | None = None) -> AllocationSpace:
        return AllocationSpace(self.allocation_stages(), budget or self.budget, self.levels)

    # ----------------------------------------------------------- the truth
    def stage_success(self, index: int, model: str, samples: int, upstream: float = 1.0) -> float:
        st = self.stages[index]
        c = st.curves[model]
        a_eff = c.a * (self.floor + (1.0 - self.floor) * upstream)
        fall = 1.0 - st.drop * max(0.0, math.log2(samples / st.sat))
        return max(0.0, c.cap * (1.0 - (1.0 - a_eff) ** samples) * fall)

    def accuracy(self, alloc: Allocation) -> float:
        """True end-to-end success probability of ``alloc``."""
        upstream = 1.0
        total = 1.0
        for i, ch in enumerate(alloc.choices):
            p = self.stage_success(i, ch.model, ch.samples, upstream)
            total *= p
            upstream = p
        return total

    def optimum(self, budget: Budget | None = None) -> tuple[Allocation, float]:
        """The exhaustive optimum under ``budget`` (default: the task's)."""
        if budget is None:
            return self._default_optimum
        return _optimum(self, self.space(budget))

    @cached_property
    def _default_optimum(self) -> tuple[Allocation, float]:
        return _optimum(self, self.space())

    def evaluator(self, *, n_train: int | None = 50, seed: int = 0):
        """An async evaluator: observed accuracy on a simulated training set.

        ``n_train=None`` returns the exact success probability (no noise).
        """
        async def evaluate(alloc: Allocation) -> float:
            p = self.accuracy(alloc)
            if not n_train:
                return p
            rng = random.Random(f"{self.name}:{seed}:{alloc.key()}")
            return sum(rng.random() < p for _ in range(n_train)) / n_train
        return evaluate


def _optimum(task: SimTask, space: AllocationSpace) -> tuple[Allocation, float]:
    best, best_acc = None, -1.0
    for alloc in space.enumerate():
        acc = task.accuracy(alloc)
        if acc > best_acc + 1e-12 or (abs(acc - best_acc) <= 1e-12 and best is not None
                                      and space.used_fraction(alloc) < space.used_fraction(best)):
            best, best_acc = alloc, acc
    if best is None:
        raise UserError(f"no allocation of simulated task {task.name!r} fits the budget")
    return best, best_acc


def make_task(name: str, stage_names: tuple[str, ...], *, seed: int, budget_fraction: float = 0.3,
              floor: float = 0.6) -> SimTask:
    """Draw a task: stage-specific model preferences, saturation points and costs.

    The budget is ``budget_fraction`` of the cost of running every stage on
    the largest model at the top sample level, so the optimum is interior.
    """
    rng = random.Random(seed)
    stages = []
    for sname in stage_names:
        # Each stage favours one model: on some stages the small model is nearly
        # as good per sample (so more cheap samples win), on others only the
        # large one reaches a high ceiling.
        favourite = rng.choice(list(SIM_MODELS))
        curves = {}
        for m, (_, _, skill) in SIM_MODELS.items():
            a = skill * rng.uniform(0.55, 1.0) + (0.25 if m == favourite else 0.0)
            cap = min(0.99, rng.uniform(0.8, 0.95) + (0.04 if m == favourite else 0.0))
            curves[m] = StageCurve(a=min(a, 0.95), cap=cap)
        stages.append(SimStage(name=sname, tokens_scale=rng.choice((100, 150, 200, 300)),
                               sat=float(rng.choice((2, 3, 4, 6, 8))), drop=rng.uniform(0.03, 0.12),
                               curves=curves))
    top = max(DEFAULT_LEVELS)
    full = sum(st.tokens_scale * SIM_MODELS["large"][0] * top for st in stages)
    budget = Budget(tokens=int(full * budget_fraction))
    return SimTask(name=name, stages=tuple(stages), budget=budget, floor=floor)


#: The benchmark suite (2-4 stages, different preferences and saturation points).
SUITE_SPECS: dict[str, tuple[tuple[str, ...], int, float]] = {
    "plan-solve": (("plan", "solve"), 11, 0.06),
    "plan-solve-verify": (("plan", "solve", "verify"), 23, 0.05),
    "retrieve-answer": (("retrieve", "answer"), 37, 0.08),
    "code-test-repair": (("code", "test", "repair"), 41, 0.08),
}


def sim_task(name: str = "plan-solve-verify") -> SimTask:
    """A task of the suite by name.

    Raises:
        UserError: unknown name.
    """
    if name not in SUITE_SPECS:
        raise UserError(f"unknown simulated task {name!r}; choose one of: {', '.join(SUITE_SPECS)}")
    stages, seed, frac = SUITE_SPECS[name]
    return make_task(name, stages, seed=seed, budget_fraction=frac)


def suite() -> list[SimTask]:
    return [sim_task(n) for n in SUITE_SPECS]
