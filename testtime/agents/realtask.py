"""Allocation on real task files: the space from a workflow, accuracy from runs.

A task file (see :mod:`testtime.orchestrator.taskfile`) gives the stages.
The candidate models are the task file's model keys (or specs given with
``--models``); every stage may use any of them. One sample at a stage is
costed at the stage's ``max_tokens`` (default 512) plus ``prompt_tokens`` for
the prompt, priced with the model's price table, so the budget check is
conservative. Applying an allocation rewrites each stage to its model and to
``self_consistency`` with ``n = samples`` (``single`` when 1), with stage
budget shares proportional to the allocation's per-stage cost.

An allocation's accuracy is the fraction of training examples whose workflow
answer matches the expected one (normalised exact match, or math
equivalence through the ``math`` verifier when it is available). Training
files are JSONL: ``{"inputs": {...}, "answer": "..."}`` per line, or flat
rows whose keys other than ``answer`` are the inputs.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from testtime.agents.allocation import DEFAULT_LEVELS, Allocation, AllocationSpace, ModelOption, Stage
from testtime.budget import Budget
from testtime.errors import UserError
from testtime.verifiers.answer import normalize_answer


def load_train(path: str | Path) -> list[tuple[dict[str, Any], str]]:
    """Read training examples ``(inputs, answer)`` from JSONL.

    Raises:
        UserError: unreadable file, bad JSON (with the line), a row without ``answer``.
    """
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UserError(f"cannot read training file {str(p)!r}: {exc.strerror or exc}") from exc
    rows = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{p}:{i}: not valid JSON: {exc.msg}") from exc
        if not isinstance(row, dict) or "answer" not in row:
            raise UserError(f"{p}:{i}: each line needs an \"answer\" (and \"inputs\" or input fields)")
        inputs = row.get("inputs")
        if inputs is None:
            inputs = {k: v for k, v in row.items() if k != "answer"}
        if not isinstance(inputs, dict):
            raise UserError(f"{p}:{i}: \"inputs\" must be a mapping of input name to value")
        rows.append((inputs, str(row["answer"])))
    if not rows:
        raise UserError(f"{p}: no training examples")
    return rows


def _price(spec: str) -> Any:
    from testtime.models.prices import price_for
    from testtime.models.registry import parse_spec

    backend, name = parse_spec(spec)
    return price_for(backend, name)


def space_from_workflow(wf: Any, budget: Budget, *, models: Sequence[str] | None = None,
                        levels: Sequence[int] = DEFAULT_LEVELS, prompt_tokens: int = 200,
                        default_max_tokens: int = 512) -> AllocationSpace:
    """The allocation space of a workflow's stages over candidate models.

    Raises:
        UserError: no candidate models.
    """
    candidates = list(models) if models else list(wf.models)
    if not candidates:
        raise UserError("the task file declares no models: list candidates with --models KEY_OR_SPEC,...")
    stages = []
    for st in wf.stages.values():
        opts = []
        for ref in candidates:
            spec = wf.models.get(ref, ref)
            spec = spec if isinstance(spec, str) else getattr(spec, "spec", str(ref))
            tokens = (st.max_tokens or default_max_tokens) + prompt_tokens
            price = _price(spec)
            opts.append(ModelOption(name=ref, tokens_per_sample=tokens,
                                    usd_per_sample=price.cost(prompt_tokens, tokens - prompt_tokens)))
        stages.append(Stage(name=st.name, options=tuple(opts)))
    return AllocationSpace(stages, budget, levels)


def apply_allocation(wf: Any, space: AllocationSpace, alloc: Allocation) -> Any:
    """A copy of ``wf`` whose stages use the allocation's models and sample counts."""
    new = copy.copy(wf)
    new.stages = {}
    for st, sp, ch in zip(wf.stages.values(), space.stages, alloc.choices, strict=True):
        stage_cost = ch.samples * sp.option(ch.model).tokens_per_sample
        strategy = "single" if ch.samples == 1 else "self_consistency"
        options = {} if ch.samples == 1 else {"n": ch.samples}
        new.stages[st.name] = dataclasses.replace(st, model=ch.model, strategy=strategy,
                                                  strategy_options=options, share=max(stage_cost, 1e-9))
    return new


def _matches(answer: str | None, expected: str) -> bool:
    if answer is None:
        return False
    if normalize_answer(answer) == normalize_answer(expected):
        return True
    try:
        from math_verify import parse, verify
    except ImportError:
        return False
    try:
        return bool(verify(parse(expected), parse(answer)))
    except Exception:  # math_verify raises on unparsable input; a mismatch, not a crash
        return False


def workflow_evaluator(wf: Any, space: AllocationSpace, train: Sequence[tuple[dict[str, Any], str]], *,
                       seed: int | None = 0, model_options: dict[str, Any] | None = None):
    """An async evaluator running the rewritten workflow on every training example."""
    async def evaluate(alloc: Allocation) -> float:
        run_wf = apply_allocation(wf, space, alloc)
        hits = 0
        for inputs, expected in train:
            result = await run_wf.arun(inputs, budget=space.budget, seed=seed)
            hits += _matches(result.answer, expected)
        return hits / len(train)
    return evaluate
