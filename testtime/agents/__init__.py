"""testtime.agents: which model and how much budget serves each stage, and which components.

* Allocation (AgentTTS-style): :class:`AllocationSpace`, :func:`search_allocation`,
  :func:`make_allocator` (``agent``, ``random``, ``grid``, ``greedy``, ``bayes``).
* Composition (online knapsack with the ZCL threshold): :class:`OnlineKnapsackComposer`,
  baselines in :mod:`testtime.agents.knapsack`, inventories in :mod:`testtime.agents.components`.
* Plan-and-Budget: the ``plan_and_budget`` search strategy (:mod:`testtime.agents.plan_and_budget`).

Submodules are imported on use so ``import testtime`` stays fast.
"""
