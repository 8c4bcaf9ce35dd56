"""Knapsack composition of components: the online ZCL composer and baselines.

The composer ("Automated Composition of Agents: A Knapsack Approach for
Agentic Component Selection") considers candidates one at a time (in a
seeded random order by default, or most relevant description first), TESTS each on sample tasks together with what it
has already admitted, estimates its value as the gain in sample-task success,
and admits it when

    value / cost >= Psi(z) = (U * e / L) ** z * (L / e)

where ``z`` is the fraction of the budget already used and ``L``/``U`` bound
the value density. The threshold starts low (cheap exploration of good-enough
components) and rises exponentially as the budget fills, so the last budget
goes only to components with near-best density. Requirements are admitted as
a bundle with the component that needs them; conflicting components are
never selected together.

Baselines: ``retrieval`` (BM25 over descriptions, no testing), ``greedy``
(test each component alone, then fill by value/cost), and ``dp`` (the offline
optimum of the additive knapsack when utilities are known, by dynamic
programming over groups of interacting components).
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from testtime.agents.components import Component, Inventory
from testtime.agents.retrieval import BM25
from testtime.errors import UserError

#: Success of a set of components on sample task ``j`` (in [0, 1]).
SampleEvaluator = Callable[[Sequence[Component], int], Awaitable[float]]


def zcl_threshold(z: float, lower: float, upper: float) -> float:
    """The ZCL online-knapsack admission threshold ``(U e / L)^z (L / e)``.

    Args:
        z: fraction of the budget already used, in [0, 1].
        lower: L, a lower bound on value density (> 0).
        upper: U, an upper bound on value density (>= L).

    Raises:
        UserError: bounds out of order or z outside [0, 1].
    """
    if not 0 < lower <= upper:
        raise UserError(f"ZCL bounds need 0 < L <= U, got L={lower}, U={upper}")
    if not -1e-12 <= z <= 1 + 1e-12:
        raise UserError(f"budget fraction z must be in [0, 1], got {z}")
    return (upper * math.e / lower) ** z * (lower / math.e)


@dataclass(slots=True, kw_only=True)
class Composition:
    """A chosen set of components.

    Attributes:
        method: which method chose it.
        chosen: the components, in admission order.
        cost: their total cost.
        estimated: success measured on sample tasks (None if not tested).
        tests: component trials spent (each on ``samples`` sample tasks).
        log: per-candidate decisions (composer only).
        true_success: filled in on the simulator.
    """

    method: str
    chosen: list[Component]
    cost: float
    estimated: float | None = None
    tests: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)
    true_success: float | None = None

    def names(self) -> list[str]:
        return [c.name for c in self.chosen]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "chosen": self.names(), "cost": round(self.cost, 10),
                "estimated_success": self.estimated, "true_success": self.true_success,
                "tests": self.tests}


def _check_budget(inventory: Inventory, budget: float) -> None:
    if not budget > 0:
        raise UserError(f"composition needs a positive budget in {inventory.unit}, got {budget}")


async def _success(evaluator: SampleEvaluator, members: Sequence[Component], samples: int) -> list[float]:
    return [float(await evaluator(members, j)) for j in range(samples)]


class OnlineKnapsackComposer:
    """Online knapsack with the ZCL threshold; utilities learned by testing.

    Args:
        samples: sample tasks each candidate is tested on.
        lower / upper: density bounds L and U (success gained per unit of cost).
            Default from the inventory's median cost m: U = 0.5 / m (a component
            of typical cost that solves half the task) and L = U / 10. Tighter
            bounds than the worst case keep the threshold discriminating. They
            were picked on simulated inventories with seeds 0-11; the tests and
            bench/agents.py use seeds 100 and up.
        order: ``random`` (seeded; default), ``retrieval`` (BM25 rank of
            descriptions first -- misleading descriptions then put weak
            components first, where the low early threshold admits them) or
            ``listed``.
        max_tests: stop testing after this many candidates (None: all).
    """

    name = "composer"

    def __init__(self, *, samples: int = 20, lower: float | None = None, upper: float | None = None,
                 order: str = "random", max_tests: int | None = None) -> None:
        if samples < 1:
            raise UserError(f"samples must be >= 1, got {samples}")
        if order not in ("retrieval", "random", "listed"):
            raise UserError(f"order must be retrieval, random or listed, got {order!r}")
        self.samples = samples
        self.lower = lower
        self.upper = upper
        self.order = order
        self.max_tests = max_tests

    def bounds(self, inventory: Inventory) -> tuple[float, float]:
        costs = sorted(c.cost for c in inventory.components)
        median = costs[len(costs) // 2]
        upper = self.upper if self.upper is not None else 0.5 / median
        lower = self.lower if self.lower is not None else upper / 10.0
        return lower, max(upper, lower)

    def _order(self, inventory: Inventory, task: str, rng: random.Random) -> list[int]:
        n = len(inventory.components)
        if self.order == "retrieval":
            return BM25([f"{c.name} {c.description}" for c in inventory.components]).rank(task)
        idx = list(range(n))
        if self.order == "random":
            rng.shuffle(idx)
        return idx

    async def compose(self, inventory: Inventory, task: str, budget: float, evaluator: SampleEvaluator,
                      *, seed: int | None = 0) -> Composition:
        """Select components for ``task`` within ``budget`` (in the inventory's unit)."""
        _check_budget(inventory, budget)
        lower, upper = self.bounds(inventory)
        rng = random.Random(seed)
        chosen: list[Component] = []
        used = 0.0
        base = await _success(evaluator, chosen, self.samples)
        tests = 0
        log: list[dict[str, Any]] = []
        for i in self._order(inventory, task, rng):
            comp = inventory.components[i]
            if any(c.name == comp.name for c in chosen):
                continue
            bundle = inventory.closure(comp, chosen)
            entry: dict[str, Any] = {"component": comp.name, "bundle": [c.name for c in bundle]}
            if not inventory.compatible(chosen, bundle):
                log.append({**entry, "admitted": False, "reason": "conflict"})
                continue
            weight = sum(c.cost for c in bundle)
            if used + weight > budget + 1e-12:
                log.append({**entry, "admitted": False, "reason": "over budget"})
                continue
            if self.max_tests is not None and tests >= self.max_tests:
                break
            outcome = await _success(evaluator, [*chosen, *bundle], self.samples)
            tests += 1
            value = (sum(outcome) - sum(base)) / self.samples
            threshold = zcl_threshold(min(used / budget, 1.0), lower, upper)
            density = value / weight
            admit = value > 0 and density >= threshold
            log.append({**entry, "admitted": admit, "value": round(value, 6), "density": round(density, 6),
                        "threshold": round(threshold, 6), "z": round(used / budget, 6),
                        "reason": "admitted" if admit else "below threshold"})
            if admit:
                chosen.extend(bundle)
                used += weight
                base = outcome
        return Composition(method=self.name, chosen=chosen, cost=used,
                           estimated=sum(base) / self.samples, tests=tests, log=log)


def _fill(inventory: Inventory, ranked: Sequence[Component], budget: float) -> tuple[list[Component], float]:
    """Add components (with their requirements) in order while they fit and are compatible."""
    chosen: list[Component] = []
    used = 0.0
    for comp in ranked:
        if any(c.name == comp.name for c in chosen):
            continue
        bundle = inventory.closure(comp, chosen)
        weight = sum(c.cost for c in bundle)
        if used + weight <= budget + 1e-12 and inventory.compatible(chosen, bundle):
            chosen.extend(bundle)
            used += weight
    return chosen, used


async def retrieval_baseline(inventory: Inventory, task: str, budget: float,
                             evaluator: SampleEvaluator | None = None, *, samples: int = 20) -> Composition:
    """Choose by description similarity alone (BM25), best first, while the budget lasts.

    Components whose description shares no term with the task are never chosen.
    """
    _check_budget(inventory, budget)
    bm = BM25([f"{c.name} {c.description}" for c in inventory.components])
    scores = bm.scores(task)
    ranked = [inventory.components[i] for i in bm.rank(task) if scores[i] > 0]
    chosen, used = _fill(inventory, ranked, budget)
    est = None
    if evaluator is not None:
        outcome = await _success(evaluator, chosen, samples)
        est = sum(outcome) / samples
    return Composition(method="retrieval", chosen=chosen, cost=used, estimated=est)


async def greedy_baseline(inventory: Inventory, task: str, budget: float, evaluator: SampleEvaluator,
                          *, samples: int = 20) -> Composition:
    """Test every component alone, then fill the budget by estimated value / cost."""
    _check_budget(inventory, budget)
    values = {}
    for comp in inventory.components:
        outcome = await _success(evaluator, inventory.closure(comp, []), samples)
        values[comp.name] = sum(outcome) / samples
    ranked = sorted(inventory.components, key=lambda c: (-values[c.name] / c.cost, c.name))
    ranked = [c for c in ranked if values[c.name] > 0]
    chosen, used = _fill(inventory, ranked, budget)
    outcome = await _success(evaluator, chosen, samples)
    return Composition(method="greedy", chosen=chosen, cost=used, estimated=sum(outcome) / samples,
                       tests=len(inventory.components))


def _groups(inventory: Inventory) -> list[list[Component]]:
    """Connected components of the conflicts-or-requires graph."""
    by = inventory.by_name()
    parent = {c.name: c.name for c in inventory.components}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for c in inventory.components:
        for other in (*c.requires, *c.conflicts):
            parent[find(c.name)] = find(other)
    groups: dict[str, list[Component]] = {}
    for c in inventory.components:
        groups.setdefault(find(c.name), []).append(by[c.name])
    return list(groups.values())


def _group_options(group: list[Component], max_group: int) -> list[list[Component]]:
    """Non-empty subsets of a group that respect conflicts and are closed under requires."""
    if len(group) > max_group:
        raise UserError(f"the DP optimum enumerates groups of linked components; one group has "
                        f"{len(group)} > {max_group} (components {', '.join(c.name for c in group[:5])}, ...)")
    opts = []
    for mask in range(1, 1 << len(group)):
        members = [c for i, c in enumerate(group) if mask >> i & 1]
        names = {c.name for c in members}
        if any(set(c.conflicts) & names for c in members):
            continue
        if any(r not in names for c in members for r in c.requires):
            continue
        opts.append(members)
    return opts


def dp_optimum(inventory: Inventory, values: dict[str, float], budget: float, *,
               resolution: int = 2000, max_group: int = 14) -> Composition:
    """The offline optimum of the additive knapsack with known ``values``.

    Linked components (conflicts or requirements) form groups; each group
    contributes one of its feasible subsets (a multiple-choice knapsack),
    solved by dynamic programming over integer costs. Integer costs with an
    integer budget are used exactly; otherwise costs are scaled so the budget
    is ``resolution`` units and rounded UP, so the result always fits.
    """
    _check_budget(inventory, budget)
    exact = float(budget).is_integer() and all(float(c.cost).is_integer() for c in inventory.components) \
        and budget <= 200_000
    scale = 1.0 if exact else resolution / budget
    cap = int(round(budget * scale)) if exact else resolution

    def units(cost: float) -> int:
        return int(round(cost)) if exact else math.ceil(cost * scale - 1e-9)

    groups = [g for g in _groups(inventory)]
    options = [[(units(sum(c.cost for c in o)), sum(values.get(c.name, 0.0) for c in o), o)
                for o in _group_options(g, max_group)] for g in groups]
    dp = [0.0] * (cap + 1)
    picks: list[list[int]] = []
    for opts in options:
        new = dp[:]
        pick = [-1] * (cap + 1)
        for j, (w, v, _) in enumerate(opts):
            if v <= 0 or w > cap:
                continue
            for c in range(w, cap + 1):
                cand = dp[c - w] + v
                if cand > new[c] + 1e-12:
                    new[c] = cand
                    pick[c] = j
        dp = new
        picks.append(pick)
    c = max(range(cap + 1), key=lambda k: (dp[k], -k))
    chosen: list[Component] = []
    for gi in range(len(options) - 1, -1, -1):
        j = picks[gi][c]
        if j >= 0:
            w, _, members = options[gi][j]
            chosen.extend(members)
            c -= w
    cost = sum(comp.cost for comp in chosen)
    return Composition(method="dp", chosen=chosen[::-1], cost=cost,
                       estimated=sum(values.get(comp.name, 0.0) for comp in chosen))


def pareto(points: dict[str, tuple[float, float]], subject: str) -> dict[str, Any]:
    """Where ``subject`` sits among (cost, success) points: who dominates whom.

    A point dominates another when it costs no more and succeeds at least as
    often, and is strictly better in one of the two.
    """
    def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return a[0] <= b[0] + 1e-12 and a[1] >= b[1] - 1e-12 and (a[0] < b[0] - 1e-12 or a[1] > b[1] + 1e-12)

    me = points[subject]
    return {
        "dominates": sorted(k for k, p in points.items() if k != subject and dominates(me, p)),
        "dominated_by": sorted(k for k, p in points.items() if k != subject and dominates(p, me)),
        "on_frontier": not any(dominates(p, me) for k, p in points.items() if k != subject),
    }
