"""``bayes``: Bayesian optimisation with optuna's seeded TPE sampler.

Each stage contributes two categorical parameters (model, sample level).
Every trial in the history -- including ones the driver repaired or filled
in -- is told to the study as a completed trial with the parameters actually
evaluated, so TPE learns from what really happened. An asked point that does
not fit the budget is marked failed and repaired.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from testtime.agents.allocation import Allocation, AllocationSpace, Allocator, Proposal, StageChoice, Trial


class BayesAllocator(Allocator):
    """TPE over (model, samples) per stage.

    Args:
        n_startup_trials: random trials before TPE starts modelling.
        seed: sampler seed (defaults to one drawn from the driver's RNG).
    """

    name = "bayes"

    def __init__(self, n_startup_trials: int = 5, seed: int | None = None) -> None:
        self.n_startup_trials = n_startup_trials
        self.seed = seed
        self._study: Any = None
        self._told = 0

    def _setup(self, space: AllocationSpace, rng: random.Random) -> None:
        import optuna  # a core dependency; imported here to keep `testtime` start-up fast

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        seed = self.seed if self.seed is not None else rng.randrange(2**31)
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.n_startup_trials)
        self._study = optuna.create_study(direction="maximize", sampler=sampler)
        self._dists = {}
        for i, st in enumerate(space.stages):
            self._dists[f"m{i}"] = optuna.distributions.CategoricalDistribution(st.model_names())
            self._dists[f"k{i}"] = optuna.distributions.CategoricalDistribution(list(space.levels))

    async def propose(self, space: AllocationSpace, history: Sequence[Trial],
                      rng: random.Random) -> Proposal | None:
        import optuna

        if self._study is None:
            self._setup(space, rng)
        for t in history[self._told:]:
            params = {}
            for i, ch in enumerate(t.allocation.choices):
                params[f"m{i}"] = ch.model
                params[f"k{i}"] = ch.samples
            self._study.add_trial(optuna.trial.create_trial(params=params, distributions=self._dists,
                                                            value=t.accuracy))
        self._told = len(history)
        trial = self._study.ask(self._dists)
        alloc = Allocation(choices=tuple(
            StageChoice(model=trial.params[f"m{i}"], samples=int(trial.params[f"k{i}"]))
            for i in range(len(space.stages))))
        # The evaluated (possibly repaired) point is added from the history next time.
        self._study.tell(trial, state=optuna.trial.TrialState.FAIL)
        source = self.name if space.fits(alloc) else f"{self.name}+repaired"
        return Proposal(allocation=space.repair(alloc), source=source)
