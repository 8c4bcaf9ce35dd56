"""Per-stage model and budget allocation: the search space, trials, the driver.

A multi-stage task has stages; each stage may be served by one of several
candidate models, sampled ``k`` times (k from a fixed ladder of levels). An
:class:`Allocation` picks ``(model, samples)`` for every stage. Its cost is the
sum over stages of ``samples x cost-per-sample`` on the ``tokens`` and ``usd``
dimensions, and it must fit the total :class:`~testtime.budget.Budget`, which
is the budget of ONE run of the task (one training example).

Methods (``random``, ``grid``, ``greedy``, ``bayes``, ``agent``) implement
:class:`Allocator`: given the trial history they propose the next allocation.
:func:`search_allocation` is the shared driver: it repairs proposals to the
budget, never evaluates the same allocation twice, falls back to a random
unseen allocation when a method has nothing new, and keeps the trial history.
The evaluator (simulated or real) maps an allocation to accuracy on a small
training set.
"""

from __future__ import annotations

import abc
import itertools
import random
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from testtime.budget import Budget
from testtime.errors import UserError

#: Budget dimensions an allocation can be held to.
COST_DIMENSIONS: tuple[str, ...] = ("tokens", "usd")
#: Default ladder of sample counts a stage may use.
DEFAULT_LEVELS: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelOption:
    """A candidate model for a stage and what one sample of it costs there.

    Attributes:
        name: the model's name (a spec like ``openai:gpt-4o-mini`` on real tasks).
        tokens_per_sample: input + output tokens of one sample at this stage.
        usd_per_sample: dollars of one sample at this stage.
    """

    name: str
    tokens_per_sample: float
    usd_per_sample: float = 0.0

    def cost(self, dimension: str) -> float:
        return self.tokens_per_sample if dimension == "tokens" else self.usd_per_sample


@dataclass(frozen=True, slots=True, kw_only=True)
class Stage:
    """One stage of a multi-stage task and the models that may serve it."""

    name: str
    options: tuple[ModelOption, ...]
    description: str = ""

    def option(self, model: str) -> ModelOption:
        for opt in self.options:
            if opt.name == model:
                return opt
        raise KeyError(model)

    def model_names(self) -> list[str]:
        return [o.name for o in self.options]


@dataclass(frozen=True, slots=True, kw_only=True)
class StageChoice:
    """The model serving a stage and how many samples it draws."""

    model: str
    samples: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Allocation:
    """One ``StageChoice`` per stage, in stage order."""

    choices: tuple[StageChoice, ...]

    def key(self) -> tuple[tuple[str, int], ...]:
        return tuple((c.model, c.samples) for c in self.choices)

    def with_choice(self, index: int, choice: StageChoice) -> Allocation:
        items = list(self.choices)
        items[index] = choice
        return Allocation(choices=tuple(items))

    def describe(self, stages: Sequence[Stage]) -> str:
        """``plan=large x2, solve=small x8`` (used in prompts and tables)."""
        return ", ".join(f"{s.name}={c.model} x{c.samples}" for s, c in zip(stages, self.choices, strict=True))

    def to_dict(self, stages: Sequence[Stage]) -> dict[str, dict[str, Any]]:
        return {s.name: {"model": c.model, "samples": c.samples}
                for s, c in zip(stages, self.choices, strict=True)}

    @classmethod
    def of(cls, pairs: Sequence[tuple[str, int]]) -> Allocation:
        return cls(choices=tuple(StageChoice(model=m, samples=int(k)) for m, k in pairs))


class AllocationSpace:
    """Stages, the sample ladder and the budget: what is allowed and what it costs.

    Args:
        stages: the task's stages with their candidate models.
        budget: the total budget of one run; must limit ``tokens`` and/or ``usd``.
        levels: allowed sample counts (sorted, >= 1).

    Raises:
        UserError: no stages, a stage without models, a budget that limits
            nothing an allocation costs, or a budget no allocation fits.
    """

    def __init__(self, stages: Sequence[Stage], budget: Budget,
                 levels: Sequence[int] = DEFAULT_LEVELS) -> None:
        if not stages:
            raise UserError("an allocation problem needs at least one stage")
        for st in stages:
            if not st.options:
                raise UserError(f"stage {st.name!r} has no candidate models")
        lv = sorted({int(x) for x in levels})
        if not lv or lv[0] < 1:
            raise UserError(f"sample levels must be integers >= 1, got {list(levels)}")
        limits = budget.limits()
        extra = sorted(set(limits) - set(COST_DIMENSIONS) - {"seconds"})
        if extra:
            raise UserError(f"allocation budgets limit {' and '.join(COST_DIMENSIONS)} per task run; "
                            f"drop {', '.join(extra)} from the budget spec")
        if not any(d in limits for d in COST_DIMENSIONS):
            raise UserError("allocation needs a total budget on tokens or usd, e.g. --budget tokens=12k")
        self.stages = tuple(stages)
        self.budget = budget
        self.levels = tuple(lv)
        self.limits = {d: float(limits[d]) for d in COST_DIMENSIONS if d in limits}
        if not self.fits(self.cheapest()):
            raise UserError(f"budget {budget} is too small: even one sample of the cheapest model "
                            f"per stage costs {self._fmt_cost(self.cheapest())}")

    # ----------------------------------------------------------------- costs
    def cost(self, alloc: Allocation) -> dict[str, float]:
        """Cost of one run under ``alloc`` on every cost dimension."""
        out = dict.fromkeys(COST_DIMENSIONS, 0.0)
        for st, ch in zip(self.stages, alloc.choices, strict=True):
            opt = st.option(ch.model)
            for d in COST_DIMENSIONS:
                out[d] += ch.samples * opt.cost(d)
        return out

    def fits(self, alloc: Allocation) -> bool:
        cost = self.cost(alloc)
        return all(cost[d] <= lim + 1e-9 for d, lim in self.limits.items())

    def used_fraction(self, alloc: Allocation) -> float:
        cost = self.cost(alloc)
        return max(cost[d] / lim if lim > 0 else 1.0 for d, lim in self.limits.items())

    def _fmt_cost(self, alloc: Allocation) -> str:
        cost = self.cost(alloc)
        return ", ".join(f"{d}={cost[d]:g}" for d in self.limits)

    # ------------------------------------------------------------ validation
    def is_valid(self, alloc: Allocation) -> bool:
        """Right number of stages, known models, ladder sample counts, within budget."""
        if len(alloc.choices) != len(self.stages):
            return False
        for st, ch in zip(self.stages, alloc.choices, strict=True):
            if ch.model not in st.model_names() or ch.samples not in self.levels:
                return False
        return self.fits(alloc)

    def snap(self, samples: int) -> int:
        """The ladder level nearest to ``samples`` (ties go to the smaller)."""
        return min(self.levels, key=lambda lv: (abs(lv - samples), lv))

    def repair(self, alloc: Allocation, *, cut_first: Sequence[int] = ()) -> Allocation:
        """Snap to the ladder, then lower samples until the allocation fits.

        Cuts go first to the stages in ``cut_first`` (e.g. ones known to have
        saturated), then to whichever stage frees the most budget; a stage at
        one sample that still does not fit moves to its cheapest model.
        """
        choices = []
        for st, ch in zip(self.stages, alloc.choices, strict=True):
            model = ch.model if ch.model in st.model_names() else self._cheapest_option(st).name
            choices.append(StageChoice(model=model, samples=self.snap(max(1, int(ch.samples)))))
        cur = Allocation(choices=tuple(choices))
        while not self.fits(cur):
            cur = self._cut_once(cur, cut_first)
        return cur

    def _cut_once(self, alloc: Allocation, cut_first: Sequence[int]) -> Allocation:
        order = [i for i in cut_first if alloc.choices[i].samples > self.levels[0]]
        if not order:
            # The stage whose next-lower level frees the most budget.
            def freed(i: int) -> float:
                ch = alloc.choices[i]
                lower = self._lower(ch.samples)
                opt = self.stages[i].option(ch.model)
                return max((ch.samples - lower) * opt.cost(d) / lim for d, lim in self.limits.items())
            order = sorted((i for i, c in enumerate(alloc.choices) if c.samples > self.levels[0]),
                           key=freed, reverse=True)
        if order:
            i = order[0]
            ch = alloc.choices[i]
            return alloc.with_choice(i, StageChoice(model=ch.model, samples=self._lower(ch.samples)))
        # Every stage is at the lowest level: swap the costliest stage to its cheapest model.
        for i in sorted(range(len(self.stages)),
                        key=lambda j: -self.stages[j].option(alloc.choices[j].model).tokens_per_sample):
            cheap = self._cheapest_option(self.stages[i]).name
            if alloc.choices[i].model != cheap:
                return alloc.with_choice(i, StageChoice(model=cheap, samples=self.levels[0]))
        raise UserError("no allocation fits the budget")  # unreachable: __init__ checked cheapest()

    def _lower(self, samples: int) -> int:
        idx = self.levels.index(samples)
        return self.levels[max(0, idx - 1)]

    def _cheapest_option(self, stage: Stage) -> ModelOption:
        return min(stage.options, key=lambda o: max(o.cost(d) / lim for d, lim in self.limits.items()))

    # ------------------------------------------------------------- generators
    def cheapest(self) -> Allocation:
        return Allocation(choices=tuple(StageChoice(model=self._cheapest_option(st).name,
                                                    samples=self.levels[0]) for st in self.stages))

    def size(self) -> int:
        """Number of allocations ignoring the budget."""
        n = 1
        for st in self.stages:
            n *= len(st.options) * len(self.levels)
        return n

    def enumerate(self) -> Iterator[Allocation]:
        """Every allocation that fits the budget (exhaustive; for oracles and grids)."""
        per_stage = [[(o.name, k) for o in st.options for k in self.levels] for st in self.stages]
        for combo in itertools.product(*per_stage):
            alloc = Allocation.of(combo)
            if self.fits(alloc):
                yield alloc

    def random(self, rng: random.Random) -> Allocation:
        """A uniformly drawn allocation, rejection-sampled into the budget (repaired if unlucky)."""
        alloc = self.cheapest()
        for _ in range(64):
            alloc = Allocation(choices=tuple(
                StageChoice(model=rng.choice(st.model_names()), samples=rng.choice(self.levels))
                for st in self.stages))
            if self.fits(alloc):
                return alloc
        return self.repair(alloc)

    def random_unseen(self, rng: random.Random, seen: set[tuple[tuple[str, int], ...]]) -> Allocation | None:
        """A random feasible allocation not in ``seen``; None when all were seen."""
        for _ in range(256):
            alloc = self.random(rng)
            if alloc.key() not in seen:
                return alloc
        rest = [a for a in self.enumerate() if a.key() not in seen] if self.size() <= 200_000 else []
        return rng.choice(rest) if rest else None

    def neighbors(self, alloc: Allocation) -> list[Allocation]:
        """Feasible allocations differing in one stage: another model, or one level up/down."""
        out = []
        for i, (st, ch) in enumerate(zip(self.stages, alloc.choices, strict=True)):
            idx = self.levels.index(ch.samples)
            for m in st.model_names():
                if m != ch.model:
                    out.append(alloc.with_choice(i, StageChoice(model=m, samples=ch.samples)))
            for j in (idx - 1, idx + 1):
                if 0 <= j < len(self.levels):
                    out.append(alloc.with_choice(i, StageChoice(model=ch.model, samples=self.levels[j])))
        return [a for a in out if self.fits(a)]

    def largest_uniform(self, model_index: int | None = None) -> Allocation:
        """Every stage on one model (by cost rank; None = each stage's middle model)
        with the largest common sample level that fits."""
        best = None
        for lv in self.levels:
            choices = []
            for st in self.stages:
                ranked = sorted(st.options, key=lambda o: o.tokens_per_sample + 1e6 * o.usd_per_sample)
                pick = ranked[len(ranked) // 2] if model_index is None else ranked[min(model_index, len(ranked) - 1)]
                choices.append(StageChoice(model=pick.name, samples=lv))
            cand = Allocation(choices=tuple(choices))
            if self.fits(cand):
                best = cand
        return best if best is not None else self.repair(cand)

    def describe_problem(self) -> str:
        lines = [f"Total budget per run: {', '.join(f'{d} <= {v:g}' for d, v in self.limits.items())}."]
        for st in self.stages:
            opts = "; ".join(f"{o.name} ({o.tokens_per_sample:g} tokens"
                             + (f", ${o.usd_per_sample:.6g}" if o.usd_per_sample else "") + " per sample)"
                             for o in st.options)
            desc = f" -- {st.description}" if st.description else ""
            lines.append(f"- stage {st.name}{desc}: {opts}")
        lines.append(f"Allowed samples per stage: {', '.join(map(str, self.levels))}.")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True, kw_only=True)
class Trial:
    """One evaluated allocation.

    Attributes:
        index: 0-based trial number.
        allocation: what was evaluated.
        accuracy: observed accuracy on the training set.
        cost: per-run cost on each cost dimension.
        source: who proposed it (the method, ``fallback``, ``repaired``...).
    """

    index: int
    allocation: Allocation
    accuracy: float
    cost: dict[str, float]
    source: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Proposal:
    """A method's suggestion; ``source`` ends up in the trial history."""

    allocation: Allocation
    source: str


Evaluator = Callable[[Allocation], Awaitable[float]]


class Allocator(abc.ABC):
    """A search method over allocations (one per module)."""

    name: ClassVar[str] = "allocator"

    @abc.abstractmethod
    async def propose(self, space: AllocationSpace, history: Sequence[Trial],
                      rng: random.Random) -> Proposal | None:
        """The next allocation to try, or None to let the driver pick one at random."""

    def stats(self) -> dict[str, Any]:
        """Method-specific counters for the report."""
        return {}


@dataclass(slots=True, kw_only=True)
class AllocationResult:
    """The outcome of an allocation search."""

    method: str
    space: AllocationSpace
    trials: list[Trial] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> Trial | None:
        """The trial with the highest observed accuracy (ties: cheaper, then earlier)."""
        if not self.trials:
            return None
        return max(self.trials, key=lambda t: (t.accuracy, -self.space.used_fraction(t.allocation), -t.index))

    def best_after(self, n: int) -> Trial | None:
        """The best of the first ``n`` trials (for accuracy-vs-trials curves)."""
        head = self.trials[:n]
        if not head:
            return None
        return max(head, key=lambda t: (t.accuracy, -self.space.used_fraction(t.allocation), -t.index))

    def to_dict(self) -> dict[str, Any]:
        stages = self.space.stages
        best = self.best
        return {
            "method": self.method,
            "budget": self.space.budget.to_dict(),
            "stages": [{"name": s.name, "models": [{"name": o.name, "tokens_per_sample": o.tokens_per_sample,
                                                     "usd_per_sample": o.usd_per_sample} for o in s.options]}
                       for s in stages],
            "best": None if best is None else {
                "allocation": best.allocation.to_dict(stages),
                "accuracy": best.accuracy,
                "cost": best.cost,
                "trial": best.index,
            },
            "trials": [{"index": t.index, "allocation": t.allocation.to_dict(stages), "accuracy": t.accuracy,
                        "cost": t.cost, "source": t.source} for t in self.trials],
            "stats": self.stats,
            **self.extra,
        }


async def search_allocation(space: AllocationSpace, evaluator: Evaluator, allocator: Allocator, *,
                            trials: int, seed: int | None = 0, tracer: Any = None) -> AllocationResult:
    """Run ``allocator`` for up to ``trials`` evaluations.

    Every evaluated allocation is valid (known models, ladder sample counts,
    within budget) and distinct. A proposal that is invalid is repaired; one
    already evaluated is asked again (a few times) and then replaced by a
    random unseen allocation, so a stuck method still makes progress.

    Raises:
        UserError: ``trials`` < 1.
    """
    if trials < 1:
        raise UserError(f"--trials must be >= 1, got {trials}")
    rng = random.Random(seed)
    result = AllocationResult(method=allocator.name, space=space)
    seen: set[tuple[tuple[str, int], ...]] = set()
    counters = {"repaired": 0, "duplicates": 0, "random_fill": 0}
    for index in range(trials):
        chosen: Proposal | None = None
        for _ in range(4):
            prop = await allocator.propose(space, result.trials, rng)
            if prop is None:
                break
            alloc = prop.allocation
            source = prop.source
            if not space.is_valid(alloc):
                alloc = space.repair(alloc)
                counters["repaired"] += 1
                source = f"{source}+repaired"
            if alloc.key() in seen:
                counters["duplicates"] += 1
                continue
            chosen = Proposal(allocation=alloc, source=source)
            break
        if chosen is None:
            fill = space.random_unseen(rng, seen)
            if fill is None:
                break  # every feasible allocation was evaluated
            counters["random_fill"] += 1
            chosen = Proposal(allocation=fill, source="random_fill")
        accuracy = float(await evaluator(chosen.allocation))
        seen.add(chosen.allocation.key())
        trial = Trial(index=index, allocation=chosen.allocation, accuracy=accuracy,
                      cost=space.cost(chosen.allocation), source=chosen.source)
        result.trials.append(trial)
        if tracer is not None:
            tracer.emit("search_round", round=index, alive=1, best_score=result.best.accuracy,
                        allocation=chosen.allocation.describe(space.stages), accuracy=accuracy,
                        source=chosen.source)
    result.stats = {**counters, **allocator.stats()}
    return result


#: Method name -> "module:Class"; every class takes keyword options.
METHODS: dict[str, str] = {
    "agent": "testtime.agents.agent_proposer:AgentAllocator",
    "random": "testtime.agents.random_search:RandomAllocator",
    "grid": "testtime.agents.grid:GridAllocator",
    "greedy": "testtime.agents.greedy:GreedyAllocator",
    "bayes": "testtime.agents.bayes:BayesAllocator",
}


def make_allocator(name: str, **options: Any) -> Allocator:
    """Instantiate an allocation method by name.

    Raises:
        UserError: unknown method or bad options.
    """
    import importlib

    key = name.strip().lower()
    if key not in METHODS:
        raise UserError(f"unknown allocation method {name!r}; choose one of: {', '.join(METHODS)}")
    module, _, cls = METHODS[key].partition(":")
    klass = getattr(importlib.import_module(module), cls)
    try:
        return klass(**options)
    except TypeError as exc:
        raise UserError(f"bad options for allocation method {name!r}: {exc}") from exc
