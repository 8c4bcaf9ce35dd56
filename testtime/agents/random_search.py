"""``random``: allocations drawn uniformly from the feasible space (baseline)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from testtime.agents.allocation import AllocationSpace, Allocator, Proposal, Trial


class RandomAllocator(Allocator):
    """Uniform random search over (model, samples) per stage within the budget."""

    name = "random"

    async def propose(self, space: AllocationSpace, history: Sequence[Trial],
                      rng: random.Random) -> Proposal | None:
        seen = {t.allocation.key() for t in history}
        alloc = space.random_unseen(rng, seen)
        return None if alloc is None else Proposal(allocation=alloc, source=self.name)
