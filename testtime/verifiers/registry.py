"""Verifier and PRM spec strings -> objects (``--verifier SPEC`` / ``--prm SPEC``).

A spec is ``FORM[:ARG][?key=value&key=value]``. Options after ``?`` go to
the verifier (e.g. ``genrm:openai:gpt-4o-mini?m=4``), except for
``regex:PATTERN``, whose whole argument is the pattern. Model specs inside
(``genrm:MODEL_SPEC``...) go through :func:`testtime.models.registry.load_model`
(option ``base_url`` is passed on to it); the model spec ``policy`` means the
run's own policy model. Implementations are imported lazily, so a form costs
nothing until it is used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl

from testtime.errors import UserError
from testtime.verifiers.base import ProcessRewardModel, Verifier

if TYPE_CHECKING:
    from testtime.context import RunContext
    from testtime.models.base import Model

T = TypeVar("T")

#: ``--verifier`` forms and what they do (shown in errors and docs).
VERIFIER_FORMS: dict[str, str] = {
    "math": "final answer equals the reference (math-verify equivalence)",
    "exact": "final answer equals the reference after normalisation",
    "regex:PATTERN": "candidate text matches the regular expression",
    "numeric[:TOL]": "numeric answer within TOL of the reference (?rel=R for relative)",
    "choice": "multiple-choice letter equals the reference",
    "code": "run the code against problem.meta['tests'] in a sandbox",
    "python:module:function": "your own callable (problem, candidate[, ctx]) -> bool | float | Verdict",
    "genrm:MODEL_SPEC": "generative verifier: rationale + Yes/No, score P(Yes) (?m=N samples)",
    "flexive:MODEL_SPEC": "FlexiVe: k fast verifications, a slow one on disagreement",
    "sim[:NAME]": "simulated verifier (benchmarks)",
}

#: ``--prm`` forms.
PRM_FORMS: dict[str, str] = {
    "prm:llm:MODEL_SPEC": "generative step judge (?per_step=true for one call per step)",
    "prm:vllm:MODEL_OR_URL": "discriminative PRM on vLLM (HTTP /pooling or in-process)",
    "prm:confidence": "policy's own token logprobs (?metric=prob|certainty)",
    "python:module:function": "your own callable (problem, steps[, ctx]) -> list[float]",
    "sim[:NAME]": "simulated PRM (benchmarks)",
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _forms(table: dict[str, str]) -> str:
    return ", ".join(table)


def split_options(spec: str) -> tuple[str, dict[str, str]]:
    """``"genrm:local?m=4&max_tokens=64"`` -> ``("genrm:local", {"m": "4", "max_tokens": "64"})``."""
    head, sep, query = spec.partition("?")
    if not sep:
        return spec, {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise UserError(f"bad options {query!r} in spec {spec!r}; write ?key=value&key=value") from None
    return head, dict(pairs)


def pop_option(options: dict[str, Any], key: str, default: T, kind: Callable[[Any], Any]) -> T:
    """Remove ``key`` from ``options`` and convert it with ``kind`` (bool understands true/false)."""
    if key not in options:
        return default
    raw = options.pop(key)
    if kind is bool and isinstance(raw, str):
        low = raw.strip().lower()
        if low in _TRUE:
            return True  # type: ignore[return-value]
        if low in _FALSE:
            return False  # type: ignore[return-value]
        raise UserError(f"option {key}={raw!r} must be true or false")
    try:
        return kind(raw)
    except (TypeError, ValueError):
        raise UserError(f"option {key}={raw!r} must be a {getattr(kind, '__name__', kind)}") from None


def model_for(target: str, options: dict[str, Any], what: str, *, ctx: RunContext | None = None,
              model: Model | None = None) -> Model | None:
    """The model a verifier spec names; None for ``policy`` (use ``ctx.model``).

    An explicit ``model`` wins; a target that is a key of ``ctx.models``
    (a workflow's named model) resolves to that model; else it is a spec.
    """
    target = target.strip()
    base_url = pop_option(options, "base_url", None, str)
    if model is not None:
        return model
    if not target:
        raise UserError(f"{what} needs a model spec, e.g. {what}:openai:gpt-4o-mini, {what}:local "
                        f"or {what}:policy")
    if target.lower() in ("policy", "self"):
        return None
    if ctx is not None and target in ctx.models:
        return ctx.models[target]
    from testtime.models.registry import load_model

    return load_model(target, **({"base_url": base_url} if base_url else {}))


def _no_more(options: dict[str, Any], form: str) -> None:
    if options:
        raise UserError(f"unknown option(s) for --verifier {form}: {', '.join(sorted(options))}")


def load_verifier(spec: str | Verifier, ctx: RunContext | None = None, *, model: Model | None = None) -> Verifier:
    """Build the verifier a spec names (see :data:`VERIFIER_FORMS`).

    ``ctx`` resolves model names in ``ctx.models``; ``model`` (if given) is
    the model for model-backed forms (genrm, flexive), overriding the spec's.

    Raises:
        UserError: unknown form, bad options, or a model spec that cannot load.
    """
    if isinstance(spec, Verifier):
        return spec
    raw = (spec or "").strip()
    form, _, arg = raw.partition(":")
    form = form.lower()
    if form == "regex":
        from testtime.verifiers.math import RegexVerifier

        return RegexVerifier(arg)
    head, options = split_options(raw)
    form, _, arg = head.partition(":")
    form = form.lower()
    if form in ("math", "exact", "choice") and not arg:
        from testtime.verifiers import math as m

        if form == "math":
            v: Verifier = m.MathVerifier(timeout=pop_option(options, "timeout", 5, int))
        elif form == "exact":
            v = m.ExactVerifier()
        else:
            v = m.ChoiceVerifier()
        _no_more(options, form)
        return v
    if form == "numeric":
        from testtime.verifiers.math import NumericVerifier

        tol = pop_option({"tol": arg}, "tol", 1e-6, float) if arg else pop_option(options, "tol", 1e-6, float)
        v = NumericVerifier(tol, rel=pop_option(options, "rel", 0.0, float))
        _no_more(options, form)
        return v
    if form == "code" and not arg:
        from testtime.verifiers.code import load as load_code

        return load_code(options)
    if form == "python":
        from testtime.verifiers.pyfunc import PythonVerifier, import_callable

        v = PythonVerifier(import_callable(arg), threshold=pop_option(options, "threshold", 0.5, float), label=arg)
        _no_more(options, form)
        return v
    if form == "genrm":
        from testtime.verifiers.generative import GenRM

        v = GenRM(model_for(arg, options, "genrm", ctx=ctx, model=model), m=pop_option(options, "m", 1, int),
                  max_tokens=pop_option(options, "max_tokens", 256, int),
                  temperature=pop_option(options, "temperature", 0.7, float),
                  threshold=pop_option(options, "threshold", 0.5, float),
                  logprobs=_logprobs_option(options), top_logprobs=pop_option(options, "top_logprobs", 5, int))
        _no_more(options, form)
        return v
    if form == "flexive":
        from testtime.verifiers.flexive import FlexiVe

        v = FlexiVe(model_for(arg, options, "flexive", ctx=ctx, model=model), k=pop_option(options, "k", 4, int),
                    fast_max_tokens=pop_option(options, "fast_max_tokens", 64, int),
                    slow_max_tokens=pop_option(options, "slow_max_tokens", 512, int),
                    slow_m=pop_option(options, "slow_m", 1, int),
                    max_disagreement=pop_option(options, "max_disagreement", 0.25, float),
                    threshold=pop_option(options, "threshold", 0.5, float),
                    temperature=pop_option(options, "temperature", 0.7, float),
                    logprobs=_logprobs_option(options), top_logprobs=pop_option(options, "top_logprobs", 5, int))
        _no_more(options, form)
        return v
    if form == "sim":
        from testtime.sim.verifier import load as load_sim

        return load_sim(arg, **options)
    raise UserError(f"unknown verifier spec {raw!r}; known forms: {_forms(VERIFIER_FORMS)}")


def _logprobs_option(options: dict[str, Any]) -> bool | str:
    raw = str(options.pop("logprobs", "auto")).strip().lower()
    if raw == "auto":
        return "auto"
    return pop_option({"logprobs": raw}, "logprobs", False, bool)


def load_prm(spec: str | ProcessRewardModel, ctx: RunContext | None = None, *,
             model: Model | None = None) -> ProcessRewardModel:
    """Build the PRM a spec names (see :data:`PRM_FORMS`); ``ctx``/``model`` as for
    :func:`load_verifier` (``model`` applies to ``prm:llm``).

    Raises:
        UserError: unknown form, bad options, or a model spec that cannot load.
    """
    if isinstance(spec, ProcessRewardModel):
        return spec
    raw = (spec or "").strip()
    head, options = split_options(raw)
    form, _, arg = head.partition(":")
    form = form.lower()
    if form == "prm" and arg:
        from testtime.verifiers.prm import load as load_model_prm

        return load_model_prm(arg, options, ctx, model=model)
    if form == "python":
        from testtime.verifiers.pyfunc import PythonPRM, import_callable

        prm = PythonPRM(import_callable(arg), aggregation=pop_option(options, "aggregation", "min", str),
                        label=arg)
        if options:
            raise UserError(f"unknown option(s) for --prm python: {', '.join(sorted(options))}")
        return prm
    if form == "sim":
        from testtime.sim.prm import load as load_sim

        return load_sim(arg, **options)
    raise UserError(f"unknown PRM spec {raw!r}; known forms: {_forms(PRM_FORMS)}")


__all__ = ["PRM_FORMS", "VERIFIER_FORMS", "load_prm", "load_verifier", "model_for", "pop_option",
           "split_options"]
