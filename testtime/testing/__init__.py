"""Test helpers users can use too: loopback servers, a fault proxy and adversarial fakes.

* :class:`LoopbackOpenAIServer` -- an OpenAI-compatible server on 127.0.0.1,
  honest or adversarial (over-reported / missing usage, fewer choices, cut
  streams, seeded 408/429/500/timeout faults), counting what it served.
* :class:`FaultProxy` -- a proxy injecting seeded faults in front of any
  OpenAI-compatible server, counting what it forwarded.
* :mod:`testtime.testing.adversarial` -- the same misbehaviours as
  in-process :class:`~testtime.models.base.Model` fakes.

Names are imported on first use, so ``python -m testtime.testing.loopback``
runs the server module without importing it twice.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "AdversarialModel": "adversarial",
    "CutStream": "adversarial",
    "ErrorStorm": "adversarial",
    "FewerChoices": "adversarial",
    "HonestModel": "adversarial",
    "NoUsage": "adversarial",
    "OverReporting": "adversarial",
    "ServedLog": "adversarial",
    "Slow": "adversarial",
    "FaultProxy": "faultproxy",
    "Forwarded": "faultproxy",
    "FaultSchedule": "loopback",
    "LoopbackOpenAIServer": "loopback",
    "MISBEHAVIOURS": "loopback",
    "misbehaving_server": "loopback",
    "Served": "loopback",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'testtime.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"testtime.testing.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
