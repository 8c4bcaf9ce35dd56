"""Simulated component inventories (100+ components) with known real utility.

Every component has one real skill and a reliability ``r``. A task needs a
few skills with weights; a sample task draws one skill by weight, and a set
of components solves it when some member with that skill succeeds
(probability ``r`` each, independently). So the set's true success is

    sum_skill w_skill * (1 - prod_{c in set, skill(c) = skill} (1 - r_c))

Descriptions are honest by default (they name the real skill with the task's
words). With ``misleading=True`` many weak components advertise the task's
skills in its own words while several strong ones are described with
synonyms the task does not use -- the setting where choosing by description
fails and testing pays off.

Sample outcomes use common random numbers (one uniform draw per component
and sample task), so comparing a set with and without a component measures
its marginal value with little noise.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from testtime.agents.components import Component, Inventory

#: skill -> (task words, synonyms used by understated descriptions)
SKILLS: dict[str, tuple[str, str]] = {
    "sql": ("sql database query tables", "relational store records lookup"),
    "web": ("web search browse pages", "internet crawling online sources"),
    "python": ("python code execution scripts", "programming runtime sandboxed interpreter"),
    "math": ("math arithmetic algebra equations", "numeric symbolic computation"),
    "summarize": ("summarize summary documents reports", "condensation digest long texts"),
    "translate": ("translate translation languages", "multilingual rendering foreign text"),
    "vision": ("image vision pictures charts", "visual perception figures"),
    "calendar": ("calendar schedule meetings dates", "agenda booking time slots"),
    "email": ("email mail inbox messages", "correspondence mailbox"),
    "review": ("code review bugs pull requests", "patch critique defect finding"),
    "retrieval": ("retrieval knowledge base documents search", "corpus lookup vector index"),
    "planning": ("planning plan steps decompose", "strategy breakdown roadmap"),
}

_KINDS = ("model", "agent", "tool")


@dataclass(frozen=True, kw_only=True)
class SimInventory:
    """An inventory with hidden per-component skill and reliability, and a task."""

    inventory: Inventory
    task: str
    weights: dict[str, float]
    skill: dict[str, str]
    reliability: dict[str, float]
    seed: int

    def true_success(self, members: Sequence[Component | str]) -> float:
        names = {m if isinstance(m, str) else m.name for m in members}
        total = 0.0
        for sk, w in self.weights.items():
            fail = 1.0
            for n in names:
                if self.skill[n] == sk:
                    fail *= 1.0 - self.reliability[n]
            total += w * (1.0 - fail)
        return total

    def true_values(self) -> dict[str, float]:
        """Standalone utility of each component (success when used alone)."""
        return {c.name: self.weights.get(self.skill[c.name], 0.0) * self.reliability[c.name]
                for c in self.inventory.components}

    def evaluator(self, *, seed: int = 0):
        """Async ``(members, j) -> 0/1`` outcome of sample task ``j``."""
        skills = list(self.weights)
        probs = [self.weights[s] for s in skills]

        async def evaluate(members: Sequence[Component], j: int) -> float:
            rng = random.Random(f"task:{self.seed}:{seed}:{j}")
            need = rng.choices(skills, probs)[0]
            for m in members:
                if self.skill[m.name] != need:
                    continue
                u = random.Random(f"draw:{self.seed}:{seed}:{m.name}:{j}").random()
                if u < self.reliability[m.name]:
                    return 1.0
            return 0.0
        return evaluate


def make_inventory(*, n: int = 120, seed: int = 0, misleading: bool = False, n_task_skills: int = 3,
                   conflict_pairs: int = 8, requires_pairs: int = 6) -> SimInventory:
    """Draw an inventory of ``n`` components and a task needing ``n_task_skills`` skills.

    Costs are in USD per task (0.01-0.20), weakly tied to reliability.
    """
    rng = random.Random(seed)
    skills = list(SKILLS)
    task_skills = rng.sample(skills, n_task_skills)
    raw = sorted((rng.random() + 0.5 for _ in task_skills), reverse=True)
    weights = {s: w / sum(raw) for s, w in zip(task_skills, raw, strict=True)}
    task = "Build an assistant for: " + "; ".join(SKILLS[s][0] for s in task_skills) + "."
    comps: list[Component] = []
    skill_of: dict[str, str] = {}
    rel: dict[str, float] = {}
    for i in range(n):
        # Over-represent the task's skills so there is a real choice among them.
        sk = rng.choice(task_skills) if rng.random() < 0.45 else rng.choice(skills)
        r = rng.betavariate(2, 3)
        cost = round(min(0.2, max(0.01, 0.02 + 0.12 * r * rng.uniform(0.5, 1.5) + rng.uniform(0, 0.05))), 3)
        kind = rng.choice(_KINDS)
        name = f"{sk}-{kind}-{i:03d}"
        words = SKILLS[sk][0]
        desc = f"A {kind} for {words}."
        if misleading:
            if r < 0.35 and rng.random() < 0.6:
                # Keyword stuffing: a weak component claims the task's skills in the task's words.
                claimed = " ".join(SKILLS[s][0] for s in task_skills)
                desc = f"Universal {kind}: best for {claimed}. Handles {claimed} with ease."
            elif r > 0.5 and sk in task_skills and rng.random() < 0.7:
                # Understatement: a strong component described only with synonyms.
                desc = f"A {kind} for {SKILLS[sk][1]}."
        comps.append(Component(name=name, kind=kind, description=desc, cost=cost))
        skill_of[name] = sk
        rel[name] = round(r, 4)
    names = [c.name for c in comps]
    conflicts: dict[str, set[str]] = {nm: set() for nm in names}
    requires: dict[str, set[str]] = {nm: set() for nm in names}
    linked: set[str] = set()
    for _ in range(conflict_pairs):
        a, b = rng.sample([x for x in names if x not in linked], 2)
        conflicts[a].add(b)
        conflicts[b].add(a)
        linked |= {a, b}
    tools = [x for x in names if "-tool-" in x and x not in linked]
    for _ in range(min(requires_pairs, len(tools) // 2)):
        a, b = rng.sample([x for x in names if x not in linked], 1)[0], rng.choice(tools)
        if a == b or b in linked:
            continue
        requires[a].add(b)
        linked |= {a, b}
        tools.remove(b)
    comps = [Component(name=c.name, kind=c.kind, description=c.description, cost=c.cost,
                       requires=tuple(sorted(requires[c.name])), conflicts=tuple(sorted(conflicts[c.name])))
             for c in comps]
    inv = Inventory(components=tuple(comps), unit="usd", source=f"sim:inventory(seed={seed})")
    return SimInventory(inventory=inv, task=task, weights=weights, skill=skill_of, reliability=rel, seed=seed)
