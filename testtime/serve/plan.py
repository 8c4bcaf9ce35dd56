"""What one request runs: the request's own settings merged over the alias and the server's.

Precedence, highest first: the body's ``testtime`` object (``extra_body`` in
the OpenAI SDK), the ``X-Testtime-Strategy`` / ``X-Testtime-Budget`` headers,
the model alias from the config file, the config's ``defaults``, then
testtime's own defaults. The OpenAI fields (``temperature``, ``max_tokens``,
``seed``) are the request's and beat everything.

Strategy options follow their strategy: a layer that picks a different
strategy starts from its own options, so an alias's MCTS options never reach
a beam search a request asked for; a layer that sets options without a
strategy adds to the ones in force.

Every plan is a fresh value: nothing here is shared between requests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from testtime.budget import Budget
from testtime.errors import UserError
from testtime.serve.config import Alias, RunSpec, ServeSettings
from testtime.serve.wire import ApiError, bad_request

#: testtime's default strategy when nothing names one.
DEFAULT_STRATEGY = "self_consistency"
#: testtime's default per-request budget when nothing names one (as ``testtime.run``).
DEFAULT_BUDGET = "tokens=4000"
#: Verifier/PRM forms any request may name: they load no model and run no code of the
#: client's choosing. Others (``python:...`` imports a function, ``genrm:MODEL`` loads and pays
#: for a model, ``code`` runs programs, ``regex:`` could backtrack for ever on the event loop)
#: only when serve.yaml names them (an alias, the defaults or ``request_specs``).
SAFE_REQUEST_SPECS = ("math", "exact", "choice", "numeric", "prm:confidence", "sim")


@dataclass
class Plan:
    """The resolved settings of one request."""

    model_name: str          # what the response's ``model`` says (alias or base)
    model: str               # the backend spec
    base_url: str | None
    alias: str | None
    strategy: str
    budget: Budget
    verifier: str | None = None
    prm: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    max_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    sources: dict[str, str] = field(default_factory=dict)  # field -> which layer set it


def model_names(settings: ServeSettings) -> list[str]:
    """What ``GET /v1/models`` lists: the aliases, then the base model."""
    return [*settings.config.models, settings.base_model()]


def _base_names(spec: str) -> set[str]:
    # The spec, its model name, and the backend alone (``scripted`` for ``scripted:REPLY``).
    names = {spec}
    if ":" in spec:
        backend, _, name = spec.partition(":")
        names |= {backend, name}
    return names


def resolve(body: Mapping[str, Any], headers: Mapping[str, str], settings: ServeSettings) -> Plan:
    """The plan for one request (ApiError 400/404 on anything it cannot run)."""
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise bad_request("model is required: an alias or the base model (GET /v1/models lists them)",
                          param="model")
    aliases = settings.config.models
    alias: Alias | None = aliases.get(name)
    base = settings.base_model()
    if alias is None and name not in _base_names(base):
        raise ApiError(404, f"model {name!r} is not served here; available: "
                       f"{', '.join(model_names(settings))}", code="model_not_found", param="model",
                       headers={"x-should-retry": "false"})
    tt = body.get("testtime")
    if tt is None:
        tt = {}
    if not isinstance(tt, dict):
        raise bad_request("testtime must be an object {strategy, budget, verifier, prm, options}",
                          param="testtime")
    try:
        req = RunSpec.model_validate(tt)
    except ValidationError as exc:
        err = exc.errors()[0]
        # A whole-object error is the strategy/options check.
        where = ".".join(str(x) for x in err.get("loc", ())) or "options"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = f"unknown field; known: {', '.join(RunSpec.model_fields)}"
        raise bad_request(f"testtime.{where}: {msg}", param=f"testtime.{where}") from None
    hdr = RunSpec()
    h_strategy = _header(headers, "x-testtime-strategy")
    h_budget = _header(headers, "x-testtime-budget")
    try:
        hdr = RunSpec(strategy=h_strategy, budget=h_budget)
    except ValidationError as exc:
        msg = str(exc.errors()[0].get("msg", "invalid")).removeprefix("Value error, ")
        raise bad_request(f"X-Testtime-{'Strategy' if 'strategy' in str(exc) else 'Budget'} header: {msg}") \
            from None
    layers: list[tuple[str, RunSpec]] = [("defaults", settings.config.defaults)]
    if alias is not None:
        layers.append((f"alias:{name}", alias))
    layers += [("headers", hdr), ("body", req)]
    strategy, options, sources = DEFAULT_STRATEGY, {}, {"strategy": "testtime", "budget": "testtime"}
    budget_spec: str = DEFAULT_BUDGET
    values: dict[str, Any] = {"verifier": None, "prm": None, "max_tokens": None, "temperature": None}
    for label, layer in layers:
        if layer.strategy is not None:
            if layer.strategy.strip().lower().replace("-", "_") != strategy:
                options = {}
            strategy = layer.strategy.strip().lower().replace("-", "_")
            sources["strategy"] = label
        if layer.options:
            options = {**options, **layer.options}
            sources["options"] = label
        if layer.budget is not None:
            budget_spec = layer.budget
            sources["budget"] = label
        for key in values:
            v = getattr(layer, key)
            if v is not None:
                values[key] = v
                sources[key] = label
    plan = Plan(model_name=name, model=(alias.model if alias is not None and alias.model else base),
                base_url=settings.base_url_for(alias), alias=name if alias is not None else None,
                strategy=strategy, budget=Budget.parse(budget_spec), options=options,
                sources=sources, **values)
    _apply_openai_fields(plan, body)
    _check_request_specs(plan, settings)
    _check_strategy(plan)
    return plan


def _allowed(spec: str, settings: ServeSettings) -> bool:
    cfg = settings.config
    named = {cfg.defaults.verifier, cfg.defaults.prm, *cfg.request_specs}
    for alias in cfg.models.values():
        named |= {alias.verifier, alias.prm}
    if spec in named:
        return True
    head = spec.split("?", 1)[0].strip()
    return head in SAFE_REQUEST_SPECS or head.startswith(("numeric:", "sim:"))


def _check_request_specs(plan: Plan, settings: ServeSettings) -> None:
    """A request may not make the gateway import code or load a model the operator did not name."""
    for key in ("verifier", "prm"):
        spec = getattr(plan, key)
        if spec and plan.sources.get(key) == "body" and not _allowed(spec, settings):
            raise ApiError(403, f"testtime.{key} {spec!r} may not be set by a request: it would load a model "
                           f"or code on the gateway. Allowed here: {', '.join(SAFE_REQUEST_SPECS)} and the "
                           "specs serve.yaml names (an alias, defaults, or request_specs:)",
                           type="permission_error", code="spec_not_allowed", param=f"testtime.{key}",
                           headers={"x-should-retry": "false"})


def _header(headers: Mapping[str, str], name: str) -> str | None:
    v = headers.get(name)
    return v.strip() if isinstance(v, str) and v.strip() else None


def _apply_openai_fields(plan: Plan, body: Mapping[str, Any]) -> None:
    """``temperature``, ``max_tokens`` and ``seed`` from the request itself (highest precedence)."""
    t = body.get("temperature")
    if t is not None:
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0 <= t <= 2:
            raise bad_request("temperature must be a number between 0 and 2", param="temperature")
        plan.temperature = float(t)
        plan.sources["temperature"] = "request"
    for key in ("max_completion_tokens", "max_tokens"):
        mt = body.get(key)
        if mt is None:
            continue
        if isinstance(mt, bool) or not isinstance(mt, int) or mt < 1:
            raise bad_request(f"{key} must be an integer >= 1", param=key)
        # The most tokens of one solution: the answer returned is one of them.
        plan.max_tokens = mt
        plan.sources["max_tokens"] = "request"
        break
    seed = body.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise bad_request("seed must be an integer", param="seed")
        plan.seed = seed
    top_p = body.get("top_p")
    if top_p not in (None, 1, 1.0):
        raise bad_request("top_p is not supported on a test-time-scaled request (strategies set their "
                          "own sampling); leave it out, or pass `tools` for an unscaled call", param="top_p")
    n = body.get("n")
    if n not in (None, 1):
        raise bad_request(f"n={n!r} is not supported on a test-time-scaled request: a search returns the "
                          "one answer it chose (the response's testtime.candidates says how many it "
                          "considered). Set how many samples it draws with testtime.options.n, or send n "
                          "separate requests", param="n")


def _check_strategy(plan: Plan) -> None:
    """Build the strategy once so bad options are a 400 now, not a 500 later."""
    from testtime.search.registry import make_strategy

    try:
        strat = make_strategy(plan.strategy, **plan.options)
    except UserError as exc:
        raise bad_request(f"strategy {plan.strategy!r} ({plan.sources.get('strategy')}): {exc}",
                          param="testtime.options") from None
    if strat.needs_prm and not plan.prm:
        raise bad_request(f"strategy {plan.strategy!r} needs a process reward model: set testtime.prm "
                          "(e.g. \"prm:confidence\") or use an alias that names one", param="testtime.prm")
