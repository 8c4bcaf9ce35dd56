"""``greedy``: coordinate ascent over (stage model, stage samples) coordinates.

Start from every stage on its middle-cost model at the largest common sample
level that fits. Then sweep the coordinates -- each stage's model, then each
stage's sample count -- trying every feasible value of one coordinate with
the others held at the best allocation so far, and move to the best before
the next coordinate. A sweep without improvement is a local optimum: restart
from a random allocation.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from testtime.agents.allocation import Allocation, AllocationSpace, Allocator, Proposal, StageChoice, Trial


class GreedyAllocator(Allocator):
    """Coordinate ascent with random restarts."""

    name = "greedy"

    def __init__(self) -> None:
        self._queue: list[Allocation] = []
        self._coord = -1
        self._sweep_start_best: float | None = None
        self._restart: Allocation | None = None
        self.restarts = 0

    async def propose(self, space: AllocationSpace, history: Sequence[Trial],
                      rng: random.Random) -> Proposal | None:
        seen = {t.allocation.key() for t in history}
        if not history:
            return Proposal(allocation=space.largest_uniform(), source=self.name)
        n_coords = 2 * len(space.stages)
        for _ in range(2 * n_coords + 1):
            while self._queue:
                alloc = self._queue.pop(0)
                if alloc.key() not in seen and space.fits(alloc):
                    return Proposal(allocation=alloc, source=self.name)
            self._advance(space, history, rng)
            if self._restart is not None:
                alloc, self._restart = self._restart, None
                if alloc.key() not in seen:
                    return Proposal(allocation=alloc, source=f"{self.name}:restart")
        return None

    def _advance(self, space: AllocationSpace, history: Sequence[Trial], rng: random.Random) -> None:
        n_coords = 2 * len(space.stages)
        best = _best(space, history)
        self._coord = (self._coord + 1) % n_coords
        if self._coord == 0:
            if self._sweep_start_best is not None and best.accuracy <= self._sweep_start_best + 1e-12:
                # A whole sweep without improvement: local optimum, restart.
                self.restarts += 1
                self._restart = space.random(rng)
            self._sweep_start_best = best.accuracy
        stage, what = divmod(self._coord, 2)
        cur = best.allocation
        ch = cur.choices[stage]
        if what == 0:
            values = [StageChoice(model=m, samples=ch.samples) for m in space.stages[stage].model_names()]
        else:
            values = [StageChoice(model=ch.model, samples=k) for k in space.levels]
        self._queue = [cur.with_choice(stage, v) for v in values if v != ch]

    def stats(self) -> dict[str, int]:
        return {"restarts": self.restarts}


def _best(space: AllocationSpace, history: Sequence[Trial]) -> Trial:
    return max(history, key=lambda t: (t.accuracy, -space.used_fraction(t.allocation), -t.index))
