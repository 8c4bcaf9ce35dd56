"""The Python builder: a plan -> solve workflow with a verify/refine loop, streamed.

    python examples/workflow_api.py              # scripted models, runs anywhere
    python examples/workflow_api.py --model sim  # or local, openai:gpt-4o-mini, ...
"""

from __future__ import annotations

import argparse
import asyncio

from testtime.models.scripted import ScriptedModel
from testtime.orchestrator import Workflow
from testtime.verifiers.scripted import FunctionVerifier


def build(model) -> Workflow:
    wf = Workflow("api-demo", models={"m": model}, budget="tokens=8000", seed=0)
    wf.stage("plan", "Write a two-step plan for: {inputs.question}", model="m", share=0.2)
    wf.stage("solve", "{inputs.question}\nPlan:\n{stages.plan.text}", model="m", after=["plan"],
             strategy="self_consistency", strategy_options={"n": 4},
             # Any Verifier works here; a spec like "math" or "genrm:m" too.
             verifier=FunctionVerifier(lambda problem, text: 1.0 if "391" in text else 0.0), max_rounds=3)
    return wf


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    model = args.model or ScriptedModel({"plan": "Multiply 17 by 20, then add 17 * 3.",
                                         "*": "17 * 23 = 391. The answer is 391."})
    wf = build(model)
    async for event in wf.astream({"question": "What is 17 * 23?"}):
        if event.kind in ("stage_start", "stage_end", "verify_round", "refine", "run_end"):
            print(f"{event.t:7.3f}s {event.kind:12} {event.stage or '':6} "
                  f"{ {k: v for k, v in event.data.items() if k in ('answer', 'score', 'passed', 'round')} }")


if __name__ == "__main__":
    asyncio.run(main())
