"""The gateway's settings: the ``serve.yaml`` file and the command line.

A config file (every part optional)::

    model: openai:gpt-4o-mini        # the base model (``--model`` overrides)
    base_url: http://127.0.0.1:8080/v1
    store: sqlite:///serve.db        # where key/global spend is kept (``--store`` overrides)
    defaults:                        # what a request gets when it says nothing
      strategy: self_consistency
      budget: tokens=4000
      max_tokens: 512
    models:                          # aliases, listed by GET /v1/models
      math-best: {model: sim, strategy: mcts, prm: "prm:confidence", budget: tokens=20k,
                  options: {iterations: 16}}
    keys:                            # API keys, stored hashed (`testtime serve hash-key`)
      - {name: alice, hash: "sha256:...", limits: {total: tokens=1M, per_day: usd=5}}
    limits: {per_day: usd=50}        # the whole gateway

Every spec is checked when the file is read, so a typo fails at start-up
with the file, the line and what to write instead -- not at the first
request.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from testtime.budget import Budget
from testtime.errors import UserError

#: The environment variable worker processes read their settings from.
SETTINGS_ENV = "TESTTIME_SERVE_SETTINGS"


def _check_budget(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        Budget.parse(str(value))
    except UserError as exc:  # a ValueError, so the error carries the field's place in the file
        raise ValueError(str(exc)) from None
    return str(value)


def _check_strategy(value: str | None) -> str | None:
    if value is None:
        return None
    from testtime.search.registry import get_strategy_class

    try:
        get_strategy_class(value)
    except UserError as exc:
        raise ValueError(str(exc)) from None
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunSpec(_Strict):
    """What to run: the fields an alias, the defaults and a request's ``testtime`` object share."""

    strategy: str | None = None
    budget: str | None = None
    verifier: str | None = None
    prm: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)

    _budget = field_validator("budget", mode="before")(classmethod(lambda cls, v: _check_budget(v)))
    _strategy = field_validator("strategy")(classmethod(lambda cls, v: _check_strategy(v)))

    @model_validator(mode="after")
    def _options_fit_strategy(self) -> RunSpec:
        # A strategy named with options: build it once, so a bad option fails where it is written.
        if self.strategy is not None and self.options:
            from testtime.search.registry import make_strategy

            try:
                make_strategy(self.strategy, **self.options)
            except UserError as exc:
                raise ValueError(f"options for {self.strategy}: {exc}") from None
        return self


class Alias(RunSpec):
    """A named model in ``models:``: a base model plus how to scale it."""

    model: str | None = None
    base_url: str | None = None
    description: str | None = None


class Limits(_Strict):
    """Lifetime (``total``) and per-UTC-day (``per_day``) limits, as budget specs."""

    total: str | None = None
    per_day: str | None = None

    _total = field_validator("total", "per_day", mode="before")(classmethod(lambda cls, v: _check_budget(v)))

    def budgets(self) -> tuple[Budget | None, Budget | None]:
        """(total, per_day) as Budgets (None where not limited)."""
        return (Budget.parse(self.total) if self.total else None,
                Budget.parse(self.per_day) if self.per_day else None)


class KeySpec(_Strict):
    """One API key: a name for humans, the key's hash, its limits."""

    name: str
    hash: str
    limits: Limits = Field(default_factory=Limits)

    @field_validator("hash")
    @classmethod
    def _hashed(cls, v: str) -> str:
        if not v.startswith("sha256:") or len(v) != len("sha256:") + 64:
            raise ValueError("must be a key hash 'sha256:<64 hex digits>' (make one with "
                             "`testtime serve hash-key`), never the key itself")
        return v


class ServeConfig(_Strict):
    """The whole ``serve.yaml``."""

    model: str | None = None
    base_url: str | None = None
    store: str | None = None
    defaults: RunSpec = Field(default_factory=RunSpec)
    models: dict[str, Alias] = Field(default_factory=dict)
    keys: list[KeySpec] = Field(default_factory=list)
    limits: Limits = Field(default_factory=Limits)
    #: Seconds between SSE keep-alive comments while a streamed search runs.
    keepalive_s: float = Field(default=5.0, gt=0)
    #: Verifier/PRM specs a request may name itself, beyond the safe built-in forms
    #: (see :data:`testtime.serve.plan.SAFE_REQUEST_SPECS`) and the specs this file names.
    request_specs: list[str] = Field(default_factory=list)
    #: Seconds a request that does not fit may wait for requests in flight to settle
    #: (they usually return most of what they hold) before it is refused with 429.
    admission_wait_s: float = Field(default=0.0, ge=0, le=600)
    #: The smallest part of a request's budget worth running when the key's or
    #: the gateway's remaining budget cannot hold all of it (0: refuse instead).
    degrade_min_fraction: float = Field(default=0.1, ge=0, le=1)


class ServeSettings(BaseModel):
    """Command line + config file: everything one gateway process needs (JSON for workers)."""

    model: str | None = None
    base_url: str | None = None
    config_path: str | None = None
    config: ServeConfig = Field(default_factory=ServeConfig)
    store: str = "memory://"
    trace_dir: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1

    def base_model(self) -> str:
        """The base model spec (command line, else config, else ``local``)."""
        return self.model or self.config.model or "local"

    def base_url_for(self, alias: Alias | None = None) -> str | None:
        if alias is not None and alias.base_url:
            return alias.base_url
        return self.base_url or self.config.base_url

    def to_env(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_env(cls) -> ServeSettings:
        raw = os.environ.get(SETTINGS_ENV)
        if not raw:
            raise UserError(f"{SETTINGS_ENV} is not set: start workers with `testtime serve`")
        return cls.model_validate(json.loads(raw))


def load_config(path: str | Path) -> ServeConfig:
    """Read and check a ``serve.yaml``.

    Raises:
        UserError: naming the file, the line and what to fix.
    """
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read serve config {p}: {exc.strerror}") from exc
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"{p}{where}: not valid YAML ({getattr(exc, 'problem', exc)}); "
                        "check indentation and quoting") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{p}:1: a serve config is a mapping (model:, defaults:, models:, keys:, limits:)")
    try:
        return ServeConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err.get("loc", ()))
        line = _line_of(root, loc)
        field = ".".join(str(x) for x in loc) or "(top level)"
        msg = str(err.get("msg", "invalid"))
        if err.get("type") == "extra_forbidden":
            msg = f"unknown field; known here: {_known_fields(loc)}"
        raise UserError(f"{p}:{line}: {field}: {msg.removeprefix('Value error, ')}") from None
    except UserError as exc:  # a spec checked by testtime itself (budget, strategy)
        raise UserError(f"{p}: {exc}") from None


def _known_fields(loc: tuple[Any, ...]) -> str:
    """Field names allowed beside the unknown one at ``loc``."""
    parent = tuple(x for x in loc[:-1] if not isinstance(x, int))
    if parent and parent[0] == "models":
        parent = ("models", "*", *parent[2:])
    model: type[BaseModel] = {
        (): ServeConfig, ("defaults",): RunSpec, ("models", "*"): Alias, ("keys",): KeySpec,
        ("limits",): Limits, ("keys", "limits"): Limits,
    }.get(parent, ServeConfig)
    return ", ".join(model.model_fields)


def _line_of(node: Any, loc: tuple[Any, ...]) -> int:
    """The 1-based line of the YAML node at ``loc`` (the deepest one found)."""
    import yaml

    line = 1 if node is None else node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = None
            for k, v in node.value:
                if k.value == str(part):
                    found = v
                    line = k.start_mark.line + 1
                    break
            if found is None:
                return line
            node = found
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line
