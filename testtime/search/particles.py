"""Pure helpers for particle filtering: weights, entropy, resampling.

Kept free of models and budgets so tests can check them on numbers they
construct.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from testtime.errors import UserError

#: Resampling schemes: multinomial (i.i.d. draws) or systematic (one uniform
#: offset, N evenly spaced pointers: lower variance, same expectation).
RESAMPLING = ("multinomial", "systematic")
#: How a PRM probability becomes a log-weight before the softmax.
TRANSFORMS = ("logit", "raw")

_EPS = 1e-6


def transform_score(score: float, how: str = "logit") -> float:
    """Map a PRM score in [0, 1] to the softmax's input.

    ``"logit"`` (default) treats the PRM score as the probability that the
    partial solution is on track, whose log-odds is the natural log-weight
    (weights become proportional to s / (1 - s) at temperature 1); ``"raw"``
    feeds the score itself (weights differ at most by e^(1/T)).
    """
    if how == "raw":
        return float(score)
    if how == "logit":
        s = min(max(float(score), _EPS), 1.0 - _EPS)
        return math.log(s / (1.0 - s))
    raise UserError(f"unknown score transform {how!r}; choose one of {', '.join(TRANSFORMS)}")


def softmax(values: Sequence[float], temperature: float = 1.0) -> list[float]:
    """softmax(values / temperature), numerically stable; empty in, empty out."""
    if temperature <= 0:
        raise UserError(f"softmax temperature must be > 0, got {temperature}")
    if not values:
        return []
    scaled = [v / temperature for v in values]
    top = max(scaled)
    exps = [math.exp(v - top) for v in scaled]
    total = sum(exps)
    return [e / total for e in exps]


def normalized_entropy(weights: Sequence[float]) -> float:
    """H(w) / log N for weights summing to 1 (0 = collapsed, 1 = uniform).

    A single particle has nothing to collapse; it reports 1.0.
    """
    n = len(weights)
    if n <= 1:
        return 1.0
    total = sum(weights)
    if total <= 0:
        return 1.0
    h = -sum((w / total) * math.log(w / total) for w in weights if w > 0)
    return h / math.log(n)


def resample(weights: Sequence[float], n: int, rng: random.Random,
             method: str = "multinomial") -> list[int]:
    """Draw ``n`` indices in proportion to ``weights`` (sorted ascending)."""
    if method not in RESAMPLING:
        raise UserError(f"unknown resampling {method!r}; choose one of {', '.join(RESAMPLING)}")
    if not weights or n <= 0:
        return []
    total = sum(weights)
    probs = [w / total for w in weights] if total > 0 else [1.0 / len(weights)] * len(weights)
    if method == "multinomial":
        return sorted(rng.choices(range(len(probs)), weights=probs, k=n))
    out: list[int] = []
    u = rng.random() / n
    cum = probs[0]
    i = 0
    for j in range(n):
        pointer = u + j / n
        while pointer > cum and i < len(probs) - 1:
            i += 1
            cum += probs[i]
        out.append(i)
    return out
