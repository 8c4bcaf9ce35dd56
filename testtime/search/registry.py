"""Strategy names -> classes, imported lazily (one module per strategy)."""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import math
import types
import typing
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
    "code_monkeys": "testtime.search.code_monkeys:CodeMonkeys",
    "plan_and_budget": "testtime.agents.plan_and_budget:PlanAndBudget",
    "auto": "testtime.search.auto:Auto",
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


#: The largest value an integer option may take (counts, steps, tokens):
#: anything larger is a typo, and would make loops over it run for ever.
MAX_INT_OPTION = 1_000_000


def make_strategy(name: str | SearchStrategy, **options: Any) -> SearchStrategy:
    """Instantiate a strategy by name; unknown or ill-typed options are a UserError.

    Options are checked against the annotations of the strategy's
    ``__init__`` (and of the base classes it passes ``**kwargs`` on to):
    see :func:`check_options`.
    """
    if isinstance(name, SearchStrategy):
        return name
    cls = get_strategy_class(name)
    given = check_options(cls, {k: v for k, v in options.items() if v is not None})
    try:
        return cls(**given)
    except TypeError as exc:
        raise UserError(f"bad options for strategy {name!r}: {exc}") from exc


def check_options(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` checked against the scalar annotations of ``cls.__init__``.

    ``int`` options take integers (an integral float such as ``4.0`` is made
    ``4``; booleans, fractions, non-finite and values above
    :data:`MAX_INT_OPTION` are refused), ``float`` options finite numbers,
    ``bool`` options booleans and ``str`` options strings; ``X | None`` also
    takes None. Options with other annotations, and names ``cls`` does not
    know (its constructor says so), pass through unchecked.

    Raises:
        UserError: naming the strategy, the option and what it takes.
    """
    kinds = _option_kinds(cls)
    out = dict(options)
    for key, value in options.items():
        kind = kinds.get(key)
        if kind is None:
            continue
        allowed, optional = kind
        if value is None and optional:
            continue
        out[key] = _check_value(getattr(cls, "name", cls.__name__), key, value, allowed)
    return out


def _check_value(strategy: str, key: str, value: Any, allowed: frozenset[type]) -> Any:
    def bad(expected: str) -> UserError:
        if isinstance(value, (dict, list, tuple)):
            shown = "an object" if isinstance(value, dict) else "a list"
        else:
            try:
                shown = json.dumps(value) if isinstance(value, bool) else repr(value)
            except ValueError:  # an int too long to print
                shown = "a number too large to print"
            if len(shown) > 60:
                shown = shown[:57] + "..."
        return UserError(f"strategy {strategy!r} option {key!r} must be {expected}, got {shown}")

    if isinstance(value, bool):
        if bool in allowed:
            return value
        raise bad(_expected(allowed))
    if int in allowed and isinstance(value, (int, float)):
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            if float in allowed and math.isfinite(value):
                return value
            raise bad(_expected(allowed))
        if abs(value) > MAX_INT_OPTION:
            raise bad(f"an integer of at most {MAX_INT_OPTION:,}")
        return int(value)
    if float in allowed and isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise bad("a finite number")
        return float(value)
    if str in allowed and isinstance(value, str):
        return value
    raise bad(_expected(allowed))


def _expected(allowed: frozenset[type]) -> str:
    if int in allowed:
        return "an integer"
    if float in allowed:
        return "a number"
    if bool in allowed:
        return "true or false"
    return "a string"


@functools.cache
def _option_kinds(cls: type) -> dict[str, tuple[frozenset[type], bool]]:
    """Option name -> (scalar types it takes, whether None is allowed).

    Walks the MRO while constructors pass ``**kwargs`` on to their base."""
    out: dict[str, tuple[frozenset[type], bool]] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters
            hints = typing.get_type_hints(init)
        except Exception:  # noqa: BLE001 - an unresolvable annotation: leave the option unchecked
            break
        for pname, param in params.items():
            if pname in out or param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                continue
            kind = _scalar_kind(hints.get(pname))
            if kind is not None:
                out[pname] = kind
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            break
    return out


def _scalar_kind(hint: Any) -> tuple[frozenset[type], bool] | None:
    if hint is None:
        return None
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    optional = type(None) in args
    scalars = [a for a in args if a is not type(None)]
    if not scalars or any(a not in (int, float, bool, str) for a in scalars):
        return None
    return frozenset(scalars), optional
