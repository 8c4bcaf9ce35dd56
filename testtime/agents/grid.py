"""``grid``: a coarse grid over models x sample levels, visited in seeded order.

With few trials a full grid cannot be finished, so the visiting order is a
seeded shuffle of the coarse grid (levels 1, 4, 16 by default, snapped to the
ladder); once the coarse grid is exhausted the driver falls back to random.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

from testtime.agents.allocation import Allocation, AllocationSpace, Allocator, Proposal, Trial


class GridAllocator(Allocator):
    """Coarse grid search.

    Args:
        levels: coarse sample levels (snapped to the space's ladder).
    """

    name = "grid"

    def __init__(self, levels: Sequence[int] = (1, 4, 16)) -> None:
        self.levels = tuple(levels)
        self._queue: list[Allocation] | None = None

    async def propose(self, space: AllocationSpace, history: Sequence[Trial],
                      rng: random.Random) -> Proposal | None:
        if self._queue is None:
            coarse = sorted({space.snap(k) for k in self.levels})
            per_stage = [[(m, k) for m in st.model_names() for k in coarse] for st in space.stages]
            grid = [Allocation.of(c) for c in itertools.product(*per_stage)]
            self._queue = [a for a in grid if space.fits(a)]
            rng.shuffle(self._queue)
        seen = {t.allocation.key() for t in history}
        while self._queue:
            alloc = self._queue.pop()
            if alloc.key() not in seen:
                return Proposal(allocation=alloc, source=self.name)
        return None
