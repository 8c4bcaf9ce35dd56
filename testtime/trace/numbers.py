"""The one "finite number, not a bool" test for trace fields.

A hand-edited or foreign trace may hold anything where a count or a time
belongs; readers take :func:`number` of a field and treat None as absent.
(It lives in its own module so that :mod:`testtime.trace.thinking` and
:mod:`testtime.trace.index`, which imports it, can both use it.)
"""

from __future__ import annotations

import math
from typing import Any


def number(v: Any) -> float | None:
    """``v`` as a finite float, else None (bools are not numbers here)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:  # an int too large for a float
        return None
    return f if math.isfinite(f) else None
