"""``testtime run --task FILE.yaml``: the CLI side of task runs.

Flags used here: ``--input KEY=VALUE`` (repeatable), ``--resume RUN_ID``,
``--model SPEC`` (overrides every stage's model, e.g. ``sim`` for a dry run),
``--budget``, ``--seed``, ``--base-url``, ``--verifier`` (used by stages whose
verifier is ``default``), ``--trace FILE.jsonl``, ``--json``, and the
``--thinking-*`` flags (over the file's top-level ``thinking:``, key by key;
a stage's own ``thinking:`` keys still win). Checkpoints go
to ``$TESTTIME_HOME/checkpoints.sqlite`` (default ``./.testtime``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import uuid
from typing import Any

from rich.console import Console
from rich.table import Table

from testtime.budget import Budget, BudgetLedger
from testtime.context import RunContext
from testtime.errors import TesttimeError, UserError
from testtime.orchestrator.checkpoint import default_checkpoint_path
from testtime.orchestrator.runner import read_checkpoint
from testtime.orchestrator.taskfile import load_task
from testtime.orchestrator.workflow import DEFAULT_BUDGET, Workflow, WorkflowResult
from testtime.trace.events import Tracer


def parse_inputs(pairs: list[str]) -> dict[str, str]:
    """``["question=What is 2+2?"]`` -> dict; values stay strings."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UserError(f"bad --input {pair!r}: expected KEY=VALUE (e.g. --input question='What is 2+2?')")
        key, _, value = pair.partition("=")
        key = key.strip()
        if not key:
            raise UserError(f"bad --input {pair!r}: the key is empty")
        if value.startswith("@"):  # --input code=@solution.py reads a file
            try:
                value = open(value[1:], encoding="utf-8").read()  # noqa: SIM115 - read at once
            except OSError as exc:
                raise UserError(f"--input {key}: cannot read {value[1:]}: {exc.strerror}") from exc
        out[key] = value
    return out


def _root_context(args: argparse.Namespace, wf: Workflow, stored: dict[str, Any] | None) -> RunContext:
    run = (stored or {}).get("run", {})
    if args.budget is not None:
        limits = Budget.parse(args.budget)
    elif run.get("budget") is not None:
        limits = Budget(**run["budget"])
    elif isinstance(wf.budget, Budget):
        limits = wf.budget
    else:
        limits = Budget.parse(wf.budget or DEFAULT_BUDGET)
    seed = args.seed if args.seed is not None else run.get("seed", wf.seed)
    ctx = RunContext(model=None, ledger=BudgetLedger(limits),  # type: ignore[arg-type]
                     tracer=Tracer(args.resume or uuid.uuid4().hex[:12]), rng=random.Random(seed), seed=seed)
    if getattr(args, "max_tokens", None) is not None:
        if args.max_tokens < 1:
            raise UserError(f"--max-tokens must be >= 1, got {args.max_tokens}")
        ctx.max_tokens = args.max_tokens
    if getattr(args, "temperature", None) is not None:
        ctx.temperature = args.temperature
    if getattr(args, "step_delimiter", None):
        ctx.step_delimiter = args.step_delimiter.encode().decode("unicode_escape")
    return ctx


def run_task_command(args: argparse.Namespace) -> int:
    """Run (or resume) a task file from the CLI; returns the exit status."""
    wf = load_task(args.task)
    from testtime.cli import thinking_options_of, thinking_policy_of

    if thinking_policy_of(args) is not None:  # the flags alone are checked first (one line, exit 2)
        wf.thinking_flags = thinking_options_of(args)
        try:
            wf.validate()  # and merged with every stage's thinking, before any call
        except UserError as exc:
            raise UserError(f"{args.task}: {exc} (with the --thinking-* flags)") from None
    inputs = parse_inputs(getattr(args, "input", []))
    path = default_checkpoint_path()
    stored = None
    if args.resume:
        if inputs:
            raise UserError("--input cannot be combined with --resume: the run keeps its original inputs")
        stored = asyncio.run(read_checkpoint(wf, args.resume, path))
    ctx = _root_context(args, wf, stored)
    if getattr(args, "verifier", None):
        from testtime.api import _load_verifier

        ctx.verifier = _load_verifier(args.verifier, ctx)
    if getattr(args, "prm", None):
        from testtime.api import _load_prm

        ctx.prm = _load_prm(args.prm, ctx)
    kwargs: dict[str, Any] = dict(model=args.model, base_url=getattr(args, "base_url", None),
                                  trace=args.trace, checkpoint=path, resume=args.resume,
                                  run_id=ctx.tracer.run_id, context=ctx)

    def go() -> WorkflowResult:
        try:
            return asyncio.run(wf.arun(inputs, **kwargs))
        except (TesttimeError, KeyboardInterrupt):
            print(f"testtime: run {ctx.tracer.run_id} stopped; continue it with "
                  f"`testtime run --task {args.task} --resume {ctx.tracer.run_id}`", file=sys.stderr)
            raise

    if args.json:
        result = go()
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False, default=str))
        return 0
    from testtime.trace.live import LiveView

    with LiveView(ctx.ledger, title=wf.name, strategy=f"task {wf.name}", model=args.model or "per stage",
                  context=ctx) as view:
        ctx.tracer.add_sink(view)
        result = go()
    console = Console()
    view.print_summary(result, console)
    print_stages(result, console)
    return 0


def print_stages(result: WorkflowResult, console: Console) -> None:
    """Per-stage table: status, answer, score, rounds, tokens by role, budget."""
    table = Table(title=f"Stages (run {result.run_id})", header_style="bold")
    for col in ("stage", "status", "answer", "score", "rounds", "solve tok", "verify tok", "budget"):
        table.add_column(col, justify="left" if col in ("stage", "status", "answer") else "right")
    for name, s in result.stages.items():
        roles = s.get("by_role") or {}
        solve = roles.get("solve", {}).get("tokens", 0)
        verify = roles.get("verify", {}).get("tokens", 0)
        budget = ",".join(f"{k}={v:g}" for k, v in (s.get("budget") or {}).items()) or "-"
        score = "-" if s.get("score") is None else f"{s['score']:.3f}"
        ans = str(s.get("answer"))[:30] if s.get("answer") is not None else "-"
        table.add_row(name, str(s.get("status")), ans, score, str(s.get("rounds")), f"{solve:,}",
                      f"{verify:,}", budget)
    console.print(table)
    if result.checkpoint:
        console.print(f"run id {result.run_id} (checkpoints in {result.checkpoint})", style="dim")
