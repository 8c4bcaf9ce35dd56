"""A 3-stage workflow on a slow FunctionModel, run in a subprocess by the
SIGKILL/resume test (not collected by pytest: no ``test_`` prefix).

Usage: python kill_target.py CHECKPOINT.sqlite TRACE.jsonl RUN_ID [--resume]
Prints one JSON line: the result plus this process's model call count.
"""

from __future__ import annotations

import json
import sys

from testtime.models.scripted import FunctionModel
from testtime.orchestrator import Workflow
from testtime.verifiers.scripted import FunctionVerifier

LATENCY = 0.25
BUDGET = "tokens=6000"


def reply(request):
    # Seed-dependent replies: a resumed run gives the same answer only if it
    # reproduces the per-node seeds of the uninterrupted run.
    seed = request.seed or 0
    if "previous attempt" in (request.prompt or ""):
        return f"Revised work. The answer is {seed % 7 + 10}."
    return f"Some steps here. The answer is {seed % 7}."


def build() -> tuple[Workflow, FunctionModel]:
    model = FunctionModel(reply, name="slow", latency=LATENCY)
    # Fails the first attempt so stage b runs solve -> verify -> refine -> verify.
    verifier = FunctionVerifier(lambda problem, text: 1.0 if "Revised" in text else 0.0)
    wf = Workflow("killme", models={"m": model}, seed=7, budget=BUDGET)
    wf.stage("a", "Plan: {inputs.question}", model="m")
    wf.stage("b", "{inputs.question} plan={stages.a.answer}", model="m", strategy="self_consistency",
             strategy_options={"n": 3}, verifier=verifier, max_rounds=3, after=["a"])
    wf.stage("c", "Check {stages.b.answer}", model="m", after=["b"])
    return wf, model


def main() -> None:
    ckpt, trace, run_id = sys.argv[1:4]
    resume = "--resume" in sys.argv
    wf, model = build()
    result = wf.run({"question": "What is 3 + 4?"}, checkpoint=ckpt, trace=trace,
                    run_id=None if resume else run_id, resume=run_id if resume else None)
    print(json.dumps({**result.to_dict(), "process_calls": model.calls}))


if __name__ == "__main__":
    main()
