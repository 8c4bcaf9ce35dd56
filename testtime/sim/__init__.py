"""The simulator: seeded tasks, a policy model, PRMs and a verifier for benchmarks.

* :mod:`testtime.sim.tasks` -- running-total problems with known step-by-step
  solutions, difficulty per problem, generated from a seed;
* :mod:`testtime.sim.policy` -- ``sim`` / ``sim:NAME`` policy models
  (``weak``, ``default``, ``strong``) behind the ordinary Model interface;
* :mod:`testtime.sim.prm` -- ``--prm sim:NAME`` (``calibrated``, ``noisy``,
  ``overconfident``) and :mod:`testtime.sim.verifier` -- ``--verifier sim``;
* :mod:`testtime.sim.suites` -- named benchmark configurations;
* :mod:`testtime.sim.bench` -- ``testtime bench --sim``.

Everything goes through ``RunContext.generate`` and the real budget ledger, so
benchmarks measure the real strategy code. Example::

    testtime run --model sim --prm sim:calibrated --strategy beam \\
        --budget tokens=8k --seed 1 "$(python -c 'from testtime.sim.tasks import \\
        generate_tasks; print(generate_tasks(1)[0].question)')"
"""
