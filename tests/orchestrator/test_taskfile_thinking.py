"""Thinking policies in task files: per task, per stage, from the CLI, with line-numbered errors."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from testtime.cli import main
from testtime.errors import UserError
from testtime.models.base import GenerationRequest
from testtime.models.scripted import FunctionModel
from testtime.orchestrator import load_task
from testtime.orchestrator.definition import Stage
from testtime.orchestrator.workflow import Workflow
from testtime.testing.loopback import LoopbackOpenAIServer
from testtime.thinking import ThinkingPolicy

CLOSE = "</think>"

TASK = """\
name: think2
budget: tokens=6000
seed: 0
inputs: {question: null}
thinking: {thinking_budget: 30, answer_budget: 12}
stages:
  - name: plan
    prompt: "PLAN {inputs.question}"
  - name: solve
    prompt: "SOLVE {inputs.question} with {stages.plan.answer}"
    thinking: {thinking_budget: 70, min_thinking: 20, max_forcing: 1}
"""


def _stage_of(req: GenerationRequest) -> str:
    return "plan" if "PLAN" in req.prompt else "solve"


def forever(req: GenerationRequest) -> str:
    """A think-tag model that thinks forever in `plan` and ends early (once) in `solve`."""
    if CLOSE in req.prefix:
        return "The answer is \\boxed{7}." if _stage_of(req) == "solve" else "The answer is 3."
    if _stage_of(req) == "solve" and "Wait," not in req.prefix:
        return f"quick guess {CLOSE} The answer is 99."  # an early end: budget forcing extends it
    return " ".join(["hmm"] * 10_000)


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "task.yaml"
    p.write_text(text)
    return p


def _thinking_calls(model: FunctionModel, stage: str) -> list[GenerationRequest]:
    return [r for r in model.requests if _stage_of(r) == stage and CLOSE not in r.prefix]


def _answer_calls(model: FunctionModel, stage: str) -> list[GenerationRequest]:
    return [r for r in model.requests if _stage_of(r) == stage and CLOSE in r.prefix]


def test_two_stage_task_honours_each_stages_thinking_budget_and_splits_usage_per_stage(tmp_path: Path):
    wf = load_task(_write(tmp_path, TASK))
    model = FunctionModel(forever)
    events: list = []
    result = wf.run({"question": "3 + 4?"}, model=model, on_event=events.append)
    starts = {e.stage: e.data.get("thinking") for e in events if e.kind == "stage_start"}
    assert starts["plan"]["thinking_budget"] == 30 and starts["solve"]["thinking_budget"] == 70
    assert starts["solve"]["answer_budget"] == 12 and starts["solve"]["min_thinking"] == 20

    # plan: the top-level policy -- one 30-token thinking segment, closed at the budget, 12-token answer.
    plan_think = _thinking_calls(model, "plan")
    assert [r.max_tokens for r in plan_think] == [30]
    plan_answer = _answer_calls(model, "plan")
    assert [r.max_tokens for r in plan_answer] == [12]  # answer_budget inherited from the top level
    assert plan_answer[0].prefix.split(CLOSE)[0].split()[1:] == ["hmm"] * 30
    # solve: its own 70-token budget; the early end was replaced by "Wait," once (max_forcing 1).
    solve_think = _thinking_calls(model, "solve")
    assert len(solve_think) == 2 and solve_think[0].max_tokens == 70
    assert solve_think[1].prefix.endswith("quick guess Wait,")
    assert [r.max_tokens for r in _answer_calls(model, "solve")] == [12]

    assert result.answer == "7"
    assert result.stages["plan"]["answer"] == "3"
    plan_u, solve_u = result.stages["plan"]["usage"], result.stages["solve"]["usage"]
    assert plan_u["reasoning_tokens"] == 30
    assert plan_u["output_tokens"] == 30 + 4  # thinking + "The answer is 3."
    # solve thought "quick guess" (2) + up to the remaining 68 tokens, then answered.
    assert solve_u["reasoning_tokens"] == 70
    assert solve_u["output_tokens"] - solve_u["reasoning_tokens"] == 4
    assert result.stages["solve"]["by_role"]["solve"]["reasoning_tokens"] == 70
    assert result.usage["reasoning_tokens"] == 100


def test_a_stage_can_switch_the_tasks_thinking_off(tmp_path: Path):
    text = TASK.replace("    thinking: {thinking_budget: 70, min_thinking: 20, max_forcing: 1}\n",
                        "    thinking: false\n")
    wf = load_task(_write(tmp_path, text))
    model = FunctionModel(lambda r: "The answer is 5." if "SOLVE" in r.prompt or CLOSE in r.prefix
                          else "hmm " * 500)
    result = wf.run({"question": "q"}, model=model)
    solve = [r for r in model.requests if "SOLVE" in r.prompt]
    assert len(solve) == 1 and solve[0].prefix == ""  # an ordinary call: no <think> prefix
    assert result.stages["solve"]["usage"]["reasoning_tokens"] == 0
    assert result.stages["plan"]["usage"]["reasoning_tokens"] == 30


@pytest.mark.parametrize("old, new, where", [
    ("thinking: {thinking_budget: 30, answer_budget: 12}", "thinking: {thinking_budget: 0, answer_budget: 12}",
     ":5: thinking.thinking_budget: "),
    ("thinking: {thinking_budget: 30, answer_budget: 12}", "thinking: {thinking_budget: lots}",
     ":5: thinking.thinking_budget: "),
    ("thinking: {thinking_budget: 70, min_thinking: 20, max_forcing: 1}",
     "thinking: {thinking_budget: 70, colour: blue}", ":11: stages[1].thinking.colour: unknown thinking option"),
    ("thinking: {thinking_budget: 70, min_thinking: 20, max_forcing: 1}",
     "thinking: {mode: sideways}", ":11: stages[1].thinking.mode: "),
    ("thinking: {thinking_budget: 70, min_thinking: 20, max_forcing: 1}",
     "thinking: {min_thinking: 50}", ":11: stages[1].thinking.min_thinking: min_thinking (50) is above "
                                    "thinking_budget (30)"),
    ("thinking: {thinking_budget: 70, min_thinking: 20, max_forcing: 1}", "thinking: 512",
     ":11: stages[1].thinking: "),
])
def test_a_bad_thinking_value_gives_a_line_numbered_error(tmp_path: Path, old: str, new: str, where: str):
    assert old in TASK
    with pytest.raises(UserError) as info:
        load_task(_write(tmp_path, TASK.replace(old, new)))
    msg = str(info.value)
    assert f"task.yaml{where}" in msg, msg


def test_thinking_in_a_block_mapping_points_at_the_bad_keys_own_line(tmp_path: Path):
    text = TASK.replace("    thinking: {thinking_budget: 70, min_thinking: 20, max_forcing: 1}\n",
                        "    thinking:\n      thinking_budget: 70\n      max_forcing: -1\n")
    with pytest.raises(UserError) as info:
        load_task(_write(tmp_path, text))
    assert "task.yaml:13: stages[1].thinking.max_forcing: max_forcing must be a whole number >= 0" in str(info.value)


def test_the_thinking_setting_is_part_of_the_fingerprint_only_when_set(tmp_path: Path):
    base = load_task(_write(tmp_path, TASK))
    other = load_task(_write(tmp_path, TASK.replace("thinking_budget: 70", "thinking_budget: 71")))
    assert base.fingerprint() != other.fingerprint()
    plain = Workflow("w", stages=[Stage(name="a", prompt="x")])
    again = Workflow("w", stages=[Stage(name="a", prompt="x", thinking=None)])
    assert plain.fingerprint() == again.fingerprint()
    flagged = Workflow("w", stages=[Stage(name="a", prompt="x")])
    flagged.thinking_flags = {"thinking_budget": 10}  # a run option like --model, not the definition
    assert flagged.fingerprint() == plain.fingerprint()


def test_python_workflow_takes_a_policy_object_and_a_stage_mapping_over_it():
    wf = Workflow("w", thinking=ThinkingPolicy(thinking_budget=40, answer_budget=9, answer_cue="Final Answer:"))
    wf.stage("a", "x", thinking={"thinking_budget": 15})
    wf.stage("b", "y", thinking=False)
    a = wf.stage_thinking(wf.stages["a"])
    assert a is not None and (a.thinking_budget, a.answer_budget, a.answer_cue) == (15, 9, "Final Answer:")
    assert wf.stage_thinking(wf.stages["b"]) is None
    with pytest.raises(UserError, match="stage 'c' thinking: .*min_thinking"):
        Stage(name="c", prompt="z", thinking={"min_thinking": 5, "thinking_budget": 2})


# ------------------------------------------------------------------ CLI over HTTP
def served(body: dict) -> str:
    """The loopback server's side of a think-forever model (it answers once thinking was closed)."""
    last = body["messages"][-1]
    prefix = last["content"] if last["role"] == "assistant" else ""
    return "The answer is \\boxed{7}." if CLOSE in prefix else " ".join(["hmm"] * 10_000)


CLI_TASK = """\
name: cli
budget: tokens=6000
inputs: {question: null}
thinking: {thinking_budget: 30, answer_budget: 12}
stages:
  - name: first
    prompt: "{inputs.question}"
  - name: second
    prompt: "Again: {inputs.question}"
    thinking: {thinking_budget: 50}
"""


def test_cli_thinking_flags_with_a_task_override_the_top_level_but_not_a_stages_own_keys(tmp_path: Path):
    task = _write(tmp_path, CLI_TASK)
    with LoopbackOpenAIServer(reply=served, honor_stop=True, owned_by="vllm") as srv:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["run", "--task", str(task), "--input", "question=3 + 4?", "--model", "openai:think",
                         "--base-url", srv.base_url, "--thinking-budget", "20", "--answer-budget", "10",
                         "--json"])
        maxes = [b["max_tokens"] for b in srv.requests]
    assert code == 0
    # first: --thinking-budget 20 over the top-level 30; second: its own 50 wins, --answer-budget 10 both.
    assert maxes == [20, 10, 50, 10]
    result = json.loads(out.getvalue())
    assert result["answer"] == "7"
    assert result["stages"]["first"]["usage"]["reasoning_tokens"] == 20
    assert result["stages"]["second"]["usage"]["reasoning_tokens"] == 50


def test_cli_thinking_flags_that_clash_with_a_stage_exit_2_before_any_call(tmp_path: Path, capsys):
    task = _write(tmp_path, CLI_TASK)
    with LoopbackOpenAIServer(reply=served, honor_stop=True, owned_by="vllm") as srv:
        code = main(["run", "--task", str(task), "--input", "question=q", "--model", "openai:think",
                     "--base-url", srv.base_url, "--min-thinking", "40"])
        sent = len(srv.requests)
    err = capsys.readouterr().err
    assert code == 2 and sent == 0
    assert "stage 'first' thinking: min_thinking (40) is above thinking_budget (30)" in err
    assert "--thinking-* flags" in err and err.count("\n") == 1
