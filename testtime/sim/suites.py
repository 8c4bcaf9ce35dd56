"""Named benchmark suites: a problem distribution + policy + PRM (+ verifier).

``testtime bench --sim --suite NAME`` runs every strategy on a suite's
problems. Suites (:data:`SUITES`):

* ``calibrated`` -- mixed difficulty, default policy, calibrated PRM;
* ``overconfident`` -- the same problems, PRM overconfident on early steps;
* ``overconfident_strong`` -- the same problems, PRM confidently wrong on
  about 3 in 10 of the first two steps (nearly uninformative there, scores
  pushed to 0/1), calibrated afterwards;
* ``noisy`` -- the same problems, weakly informative PRM;
* ``hard`` -- hard problems (difficulty 0.55-0.95), calibrated PRM, where
  the most popular answer is often a distractor;
* ``verifier`` -- mixed difficulty, calibrated PRM plus an outcome verifier
  with 5% false positives/negatives (best-of-N then ranks by the verifier);
* ``mixed`` -- the widest difficulty range (0.05-0.95: from nearly always
  solved to nearly never), calibrated PRM: where the best strategy differs
  by difficulty, the suite ``--strategy auto`` is fitted and judged on;
* ``biased`` -- mixed difficulty, a PRM with systematic errors (a favoured
  wrong answer on 40% of problems, a length bias; see ``testtime.sim.prm``):
  the regime Best-of-Majority targets;
* ``mixed_biased`` -- the ``mixed`` problems scored by the ``biased`` PRM;
* ``logprob_oracle`` -- like ``calibrated`` but the policy's logprobs are a
  near-oracle (AUROC 0.99 instead of the default 0.65), for the ablation of
  MCTS's logprob priors.

Every suite uses the honest defaults of the simulator: difficulty hidden
from the question, token logprobs with AUROC 0.65, hesitation markers in 15%
of steps (``testtime.sim.policy``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from testtime.budget import Budget, BudgetLedger
from testtime.context import RunContext
from testtime.errors import UserError
from testtime.search.base import Problem
from testtime.sim import policy, prm, verifier
from testtime.sim.tasks import generate_problems


@dataclass(frozen=True, slots=True, kw_only=True)
class Suite:
    """A benchmark configuration.

    Attributes:
        name / description: what it is called and what it tests.
        difficulty / steps: ranges of the generated tasks.
        policy / prm / verifier: simulator names (``verifier=None``: none).
        *_options: options passed to the simulator loaders.
        max_tokens / step_max_tokens: per-solution and per-step output caps.
    """

    name: str
    description: str
    difficulty: tuple[float, float] = (0.2, 0.8)
    steps: tuple[int, int] = (3, 8)
    policy: str = "default"
    policy_options: dict[str, Any] = field(default_factory=dict)
    prm: str = "calibrated"
    prm_options: dict[str, Any] = field(default_factory=dict)
    verifier: str | None = None
    verifier_options: dict[str, Any] = field(default_factory=dict)
    max_tokens: int = 600
    step_max_tokens: int = 80

    @property
    def prm_spec(self) -> str:
        return f"sim:{self.prm}"

    def problems(self, n: int, seed: int = 0) -> list[Problem]:
        """``n`` problems, identical for every strategy given the seed."""
        return generate_problems(n, seed=seed, difficulty=self.difficulty, steps=self.steps)

    def make_policy(self) -> policy.SimModel:
        return policy.load(self.policy, **self.policy_options)

    def make_prm(self) -> prm.SimPRM:
        return prm.load(self.prm, **self.prm_options)

    def make_verifier(self) -> verifier.SimVerifier | None:
        return None if self.verifier is None else verifier.load(self.verifier, **self.verifier_options)

    def context(self, budget: Budget, *, seed: int, model: policy.SimModel | None = None,
                prm_model: prm.SimPRM | None = None,
                verifier_model: verifier.SimVerifier | None = None) -> RunContext:
        """A fresh RunContext for one search under ``budget``."""
        return RunContext(
            model=model or self.make_policy(),
            ledger=BudgetLedger(budget, name="bench"),
            rng=random.Random(seed),
            seed=seed,
            prm=prm_model or self.make_prm(),
            verifier=verifier_model if verifier_model is not None else self.make_verifier(),
            max_tokens=self.max_tokens,
            step_max_tokens=self.step_max_tokens,
        )


SUITES: dict[str, Suite] = {
    s.name: s
    for s in [
        Suite(name="calibrated", description="mixed difficulty, calibrated PRM"),
        Suite(name="overconfident", description="mixed difficulty, PRM overconfident on early steps",
              prm="overconfident"),
        Suite(name="overconfident_strong",
              description="mixed difficulty, PRM confidently wrong on ~30% of the first two steps",
              prm="overconfident_strong"),
        Suite(name="noisy", description="mixed difficulty, weakly informative PRM", prm="noisy"),
        Suite(name="hard", description="hard problems (popular wrong answers), calibrated PRM",
              difficulty=(0.55, 0.95)),
        Suite(name="verifier", description="mixed difficulty, calibrated PRM + outcome verifier",
              verifier="default"),
        Suite(name="mixed", description="difficulty 0.05-0.95 (easy to hopeless), calibrated PRM",
              difficulty=(0.05, 0.95)),
        Suite(name="biased", description="mixed difficulty, PRM with a favoured wrong answer and a length bias",
              prm="biased"),
        Suite(name="mixed_biased", description="difficulty 0.05-0.95, PRM with systematic errors (biased)",
              difficulty=(0.05, 0.95), prm="biased"),
        Suite(name="logprob_oracle", description="mixed difficulty, near-oracle token logprobs (AUROC 0.99)",
              policy_options={"logprob_auroc": 0.99}),
    ]
}


def get_suite(name: str) -> Suite:
    """The suite called ``name``.

    Raises:
        UserError: unknown name (the message lists the known ones).
    """
    key = (name or "calibrated").strip().lower()
    if key not in SUITES:
        raise UserError(f"unknown sim suite {name!r}; choose one of {', '.join(SUITES)}")
    return SUITES[key]
