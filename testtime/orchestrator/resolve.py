"""Verifier and PRM specs in workflows, with model keys resolved.

A stage may name a verifier by spec (``math``, ``code``, ``genrm:MODEL``,
``sim``...). When the model part of a spec (``genrm:judge``) is a key of the
workflow's ``models``, the verifier gets that loaded model (so ``--model``
overrides and mixed backends apply to verifiers too).
"""

from __future__ import annotations

import importlib
from typing import Any

from testtime.context import RunContext
from testtime.errors import UserError
from testtime.orchestrator.state import WorkflowRuntime


def _registry(name: str) -> Any:
    try:
        module = importlib.import_module("testtime.verifiers.registry")
    except ModuleNotFoundError as exc:
        if exc.name == "testtime.verifiers.registry":
            raise UserError("verifier specs need testtime.verifiers.registry, which is not in this "
                            "install; pass a Verifier object instead") from exc
        raise
    return getattr(module, name)


def _with_model_key(spec: str, rt: WorkflowRuntime, ctx: RunContext) -> tuple[str, RunContext]:
    """If ``spec``'s argument is a workflow model key, expose that model to the loader.

    The loaded model is put in ``ctx.models`` under the key and under
    ``"verify"``; the spec keeps its text so the registry can also find it
    by name.
    """
    kind, sep, arg = spec.partition(":")
    if sep and arg in rt.models:
        model = rt.models[arg]
        ctx = ctx.derive(models={**ctx.models, arg: model, "verify": model})
        return spec, ctx
    if sep and rt.model_override is not None and kind in ("genrm", "llm", "prm-llm"):
        model = rt.load(arg)
        return f"{kind}:{model.spec}", ctx.derive(models={**ctx.models, "verify": model})
    return spec, ctx


def _call_loader(loader: Any, spec: str, ctx: RunContext) -> Any:
    model = ctx.models.get("verify")
    try:
        if model is not None:
            return loader(spec, ctx=ctx, model=model)
    except TypeError:
        pass  # the loader takes no model argument; fall back to the spec alone
    return loader(spec, ctx=ctx)


def load_verifier_spec(spec: str, rt: WorkflowRuntime, ctx: RunContext) -> Any:
    """Load a verifier by spec for a stage context."""
    spec2, vctx = _with_model_key(spec, rt, ctx)
    return _call_loader(_registry("load_verifier"), spec2, vctx)


def load_prm_spec(spec: str, rt: WorkflowRuntime, ctx: RunContext) -> Any:
    """Load a process reward model by spec for a stage context."""
    spec2, vctx = _with_model_key(spec, rt, ctx)
    return _call_loader(_registry("load_prm"), spec2, vctx)
