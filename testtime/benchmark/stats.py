"""The statistics a benchmark report prints: intervals, pass@k, cost-to-match ratios.

* :func:`wilson_interval` -- the 95% Wilson score interval for an accuracy
  (well behaved at 0/n and n/n, unlike the normal approximation).
* :func:`pass_at_k` -- the unbiased pass@k estimator of "Large Language
  Monkeys" (and Codex): ``1 - C(n-c, k) / C(n, k)`` for ``c`` correct of ``n``
  samples, computed as a stable product.
* :func:`best_of_majority_top_k` -- the answers Best-of-Majority returns from a
  set of samples ("Best-of-Majority: Minimax-Optimal Strategy for Pass@k"):
  keep answers given by at least ``threshold x N`` samples, rank them by their
  best reward (then frequency, then first appearance), take the top ``k``.
* :func:`cost_to_reach` -- the spend a strategy needs to reach a target
  accuracy, by linear interpolation of accuracy on log-spend over its
  accuracy-vs-spend curve (made monotone by a running maximum: more budget
  can always fall back to what a smaller one got).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from testtime.verifiers.answer import normalize_answer

#: z for a two-sided 95% interval.
Z95 = 1.959963984540054


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for ``correct`` successes in ``n`` trials ((0, 1) when n == 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``c`` correct among ``n`` samples (requires ``1 <= k <= n``).

    Equals ``1 - C(n-c, k) / C(n, k)``; computed as ``1 - prod_{i=n-c+1..n} (1 - k/i)``
    so large ``n`` does not overflow.
    """
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k}, n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n, got c={c}, n={n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def ks_for(n_max: int) -> list[int]:
    """The k values a pass@k curve is drawn at: powers of two up to ``n_max``, and ``n_max``."""
    if n_max < 1:
        return []
    ks = [1]
    while ks[-1] * 2 <= n_max:
        ks.append(ks[-1] * 2)
    if ks[-1] != n_max:
        ks.append(n_max)
    return ks


def sample_key(sample: dict[str, Any]) -> str | None:
    """The answer a sample is grouped under (normalised; None when it states none)."""
    answer = sample.get("answer")
    return normalize_answer(answer) if answer is not None else None


def best_of_majority_top_k(samples: Sequence[dict[str, Any]], k: int, threshold: float = 0.2) -> list[str]:
    """The top-``k`` answers Best-of-Majority picks from ``samples`` (dicts with answer/score).

    Ranks with :func:`testtime.search.best_of_majority.rank_answers`, as
    :class:`~testtime.search.best_of_majority.BestOfMajority` does: answers
    with frequency ``>= threshold x N`` (N = samples stating an answer; when
    none reaches it, the most frequent ones) ranked by best score (scored
    before unscored), then frequency, then first appearance.
    """
    from testtime.search.best_of_majority import rank_answers

    ranked = rank_answers(((sample_key(s), s.get("score")) for s in samples), threshold)
    return [answer for answer, _ in ranked[:k]]


def bom_pass_at_k(samples: Sequence[dict[str, Any]], k: int, threshold: float = 0.2) -> bool:
    """Whether Best-of-Majority's top-``k`` answers over ``samples`` include a correct one."""
    correct = {sample_key(s) for s in samples if s.get("correct")}
    return any(a in correct for a in best_of_majority_top_k(samples, k, threshold))


def cost_to_reach(points: Sequence[tuple[float, float]], target: float) -> tuple[float | None, bool]:
    """The spend at which a curve of ``(spend, accuracy)`` points first reaches ``target``.

    Returns ``(spend, exact)``: ``spend`` is None when the curve never reaches
    the target; ``exact`` is False when even the cheapest point already
    reaches it (the true cost is at most that spend). Interpolates linearly
    in accuracy on ``log(spend)`` between the two points around the crossing.
    """
    pts = sorted((s, a) for s, a in points if s > 0)
    if not pts:
        return None, False
    running, mono = -1.0, []
    for s, a in pts:
        running = max(running, a)
        mono.append((s, running))
    if mono[0][1] >= target:
        return mono[0][0], False
    for (s0, a0), (s1, a1) in zip(mono, mono[1:], strict=False):
        if a1 >= target > a0:
            frac = (target - a0) / (a1 - a0)
            return math.exp(math.log(s0) + frac * (math.log(s1) - math.log(s0))), True
    return None, False
