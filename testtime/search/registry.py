"""Strategy names -> classes, imported lazily (one module per strategy)."""

from __future__ import annotations

import importlib
from typing import Any

from testtime.errors import UserError
from testtime.search.base import SearchStrategy

#: name -> "module:Class". Each strategy lives in its own module.
STRATEGIES: dict[str, str] = {
    "single": "testtime.search.single:Single",
    "self_consistency": "testtime.search.self_consistency:SelfConsistency",
    "weighted_self_consistency": "testtime.search.self_consistency:WeightedSelfConsistency",
    "best_of_n": "testtime.search.best_of_n:BestOfN",
    "best_of_majority": "testtime.search.best_of_majority:BestOfMajority",
    "beam": "testtime.search.beam:BeamSearch",
    "dvts": "testtime.search.dvts:DVTS",
    "mcts": "testtime.search.mcts:MCTS",
    "astar": "testtime.search.astar:AStar",
    "particle_filter": "testtime.search.particle_filter:ParticleFilter",
    "entropic_pf": "testtime.search.entropic_pf:EntropicParticleFilter",
    "solve_detect_verify": "testtime.search.solve_detect_verify:SolveDetectVerify",
    "plan_and_budget": "testtime.agents.plan_and_budget:PlanAndBudget",
}


def available_strategies() -> list[str]:
    """Names whose module is present in this install."""
    names = []
    for name, target in STRATEGIES.items():
        module = target.partition(":")[0]
        if importlib.util.find_spec(module) is not None:
            names.append(name)
    return names


def get_strategy_class(name: str) -> type[SearchStrategy]:
    key = name.strip().lower().replace("-", "_")
    if key not in STRATEGIES:
        raise UserError(f"unknown strategy {name!r}; choose one of: {', '.join(available_strategies())}")
    module, _, cls = STRATEGIES[key].partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            raise UserError(f"strategy {name!r} is not available in this install") from exc
        raise
    return getattr(mod, cls)


def make_strategy(name: str | SearchStrategy, **options: Any) -> SearchStrategy:
    """Instantiate a strategy by name; unknown options are a UserError."""
    if isinstance(name, SearchStrategy):
        return name
    cls = get_strategy_class(name)
    try:
        return cls(**{k: v for k, v in options.items() if v is not None})
    except TypeError as exc:
        raise UserError(f"bad options for strategy {name!r}: {exc}") from exc
