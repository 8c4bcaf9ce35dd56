"""Task files: a workflow in YAML, validated with pydantic, errors with file:line.

A task file looks like::

    name: plan-solve
    budget: tokens=20k            # or {tokens: 20000, usd: 0.5}
    seed: 0
    inputs: {question: null}      # null = required; a value = default
    models:
      solver: sim                 # a spec ...
      judge: {spec: "openai:gpt-4o-mini", base_url: "http://127.0.0.1:8000/v1"}
    verifiers:
      check: genrm:judge
    thinking: {thinking_budget: 512, answer_budget: 128}   # every stage (docs/thinking.md)
    stages:
      - name: plan
        prompt: "Write a short plan for: {inputs.question}"
        model: solver
        share: 0.2
      - name: solve
        after: [plan]
        prompt: "{inputs.question}\\nPlan:\\n{stages.plan.text}"
        model: solver
        strategy: {name: self_consistency, n: 4}
        verifier: check
        max_rounds: 3
        thinking: {thinking_budget: 2000, min_thinking: 200}  # merged over the top level; false: off
    edges: []                     # extra "a -> b" dependencies
    routes: []                    # [{after: S, cases: [{when: "score >= 0.8", goto: end}], default: T}]
    output: solve

Every error names the file, the line and the field, and says what was
expected (YAML node marks map pydantic's error locations to lines).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from testtime.errors import UserError
from testtime.orchestrator.definition import END, Route, Stage
from testtime.orchestrator.workflow import Workflow


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelEntry(_Strict):
    """A model with options: ``{spec: ..., base_url: ..., options: {...}}``."""

    spec: str
    base_url: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class StrategyEntry(BaseModel):
    """``{name: beam, beam_width: 4}``: every key but ``name`` is a strategy option."""

    model_config = ConfigDict(extra="allow")
    name: str


class StageEntry(_Strict):
    name: str
    prompt: str
    model: str | None = None
    strategy: str | StrategyEntry = "single"
    verifier: str | None = None
    prm: str | None = None
    search_verifier: bool = False
    share: float = Field(1.0, gt=0)
    max_rounds: int = Field(3, ge=1)
    after: list[str] | str = Field(default_factory=list)
    system: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    refine_prompt: str | None = None
    answer_from: Literal["extract", "text"] = "extract"
    meta: dict[str, Any] = Field(default_factory=dict)
    thinking: dict[str, Any] | Literal[False] | None = None


class RouteCase(_Strict):
    when: str = "always"
    goto: str


class RouteEntry(_Strict):
    after: str
    cases: list[RouteCase] = Field(default_factory=list)
    default: str = END


class TaskFile(_Strict):
    name: str | None = None
    description: str = ""
    budget: str | dict[str, float] | None = None
    seed: int | None = None
    inputs: dict[str, Any] | list[str] | None = None
    model: str | None = None
    models: dict[str, str | ModelEntry] = Field(default_factory=dict)
    verifiers: dict[str, str] = Field(default_factory=dict)
    stages: list[StageEntry] = Field(min_length=1)
    edges: list[str] = Field(default_factory=list)
    routes: list[RouteEntry] = Field(default_factory=list)
    output: str | None = None
    thinking: dict[str, Any] | None = None


_FIELDS: dict[str, type[BaseModel]] = {"": TaskFile, "stages": StageEntry, "models": ModelEntry,
                                       "routes": RouteEntry, "cases": RouteCase}
_TYPE_TAG = re.compile(r"^(str|int|float|bool|none|list\[.*\]|dict\[.*\]|literal\[.*\]|"
                       r"function-\w+\[.*\]|[A-Z]\w*)$")
_EDGE = re.compile(r"^\s*([A-Za-z_][\w\-]*)\s*->\s*([A-Za-z_][\w\-]*)\s*$")


class _Lines:
    """Maps a location path in the YAML document to a line number."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root

    def line(self, loc: Sequence[Any]) -> int:
        node = self.root
        if node is None:
            return 1
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                nxt = next((v for k, v in node.value if getattr(k, "value", None) == str(part)), None)
                if nxt is not None:
                    node = nxt
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
        return node.start_mark.line + 1

    def key_line(self, loc: Sequence[Any]) -> int:
        """Line of the key of the last part (for unknown fields)."""
        parent = self.root
        for part in loc[:-1]:
            if isinstance(parent, yaml.MappingNode):
                parent = next((v for k, v in parent.value if getattr(k, "value", None) == str(part)), parent)
            elif isinstance(parent, yaml.SequenceNode) and isinstance(part, int) and part < len(parent.value):
                parent = parent.value[part]
        if isinstance(parent, yaml.MappingNode):
            for k, _ in parent.value:
                if getattr(k, "value", None) == str(loc[-1]):
                    return k.start_mark.line + 1
        return self.line(loc)


def _field(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _clean(loc: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(p for p in loc if isinstance(p, int) or not _TYPE_TAG.match(str(p)))


def _allowed(loc: Sequence[Any]) -> str:
    names = [p for p in loc[:-1] if isinstance(p, str)]
    model = _FIELDS.get(names[-1] if names else "", TaskFile)
    return ", ".join(model.model_fields)


def _pydantic_errors(exc: ValidationError, lines: _Lines, file: str) -> UserError:
    merged: dict[tuple[Any, ...], list[str]] = {}
    kinds: dict[tuple[Any, ...], str] = {}
    for err in exc.errors():
        loc = _clean(err["loc"])
        msg = err["msg"]
        if err["type"] == "missing":
            msg = "required field is missing"
        elif err["type"] == "extra_forbidden":
            msg = f"unknown field; expected one of: {_allowed(loc)}"
        msgs = merged.setdefault(loc, [])
        if msg not in msgs:
            msgs.append(msg)
        kinds.setdefault(loc, err["type"])
    out = []
    for loc, msgs in list(merged.items())[:8]:
        if kinds[loc] == "missing":
            line = lines.line(loc[:-1])
        elif kinds[loc] == "extra_forbidden":
            line = lines.key_line(loc)
        else:
            line = lines.line(loc)
        out.append(f"{file}:{line}: {_field(loc)}: {'; or '.join(msgs)}")
    more = len(merged) - len(out)
    if more > 0:
        out.append(f"... and {more} more error(s)")
    return UserError("invalid task file:\n  " + "\n  ".join(out))


def parse_task(text: str, *, file: str = "<task>") -> tuple[TaskFile, _Lines]:
    """Parse and validate task YAML text.

    Raises:
        UserError: ``file:line: field: what is wrong / expected``.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise UserError(f"{file}:{line}: not valid YAML: {exc.problem or exc}") from exc
    except yaml.reader.ReaderError as exc:  # a control character YAML does not allow
        line = text.count("\n", 0, exc.position) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise UserError(f"{file}:{line}: not valid YAML: character {char:#x} at character "
                        f"{exc.position} is not allowed in YAML text") from None
    except RecursionError:
        raise UserError(f"{file}: not valid YAML: nested too deeply") from None
    lines = _Lines(root)
    if not isinstance(data, dict):
        raise UserError(f"{file}:1: a task file must be a YAML mapping with at least `stages:` "
                        f"(got {type(data).__name__})")
    try:
        task = TaskFile.model_validate(data)
    except ValidationError as exc:
        raise _pydantic_errors(exc, lines, file) from None
    return task, lines


def build_workflow(task: TaskFile, lines: _Lines, *, file: str = "<task>", default_name: str = "task") -> Workflow:
    """Turn a validated task into a :class:`Workflow`; semantic errors carry lines."""

    def fail(loc: Sequence[Any], msg: str) -> UserError:
        return UserError(f"{file}:{lines.line(loc)}: {_field(loc)}: {msg}")

    names = [s.name for s in task.stages]
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise fail(("stages", i, "name"), f"stage {name!r} is defined twice; stage names must be unique")
        seen.add(name)
    models: dict[str, Any] = {}
    for key, entry in task.models.items():
        if isinstance(entry, str):
            models[key] = entry
        else:
            opts = dict(entry.options)
            if entry.base_url:
                opts["base_url"] = entry.base_url
            models[key] = {"spec": entry.spec, **opts} if opts else entry.spec
        spec = models[key] if isinstance(models[key], str) else models[key]["spec"]
        _check_spec(spec, lambda m, k=key: fail(("models", k), m))
    if task.model is not None and task.model not in models:
        _check_spec(task.model, lambda m: fail(("model",), m))
    from testtime.search.registry import STRATEGIES

    _check_thinking(task.thinking, None, ("thinking",), fail)
    stages = []
    for i, s in enumerate(task.stages):
        loc = ("stages", i)
        if s.model is not None and s.model not in models:
            _check_spec(s.model, lambda m, loc=loc: fail((*loc, "model"), m + f" (model keys: "
                                                       f"{', '.join(models) or 'none'})"))
        sname = s.strategy if isinstance(s.strategy, str) else s.strategy.name
        options = {} if isinstance(s.strategy, str) else dict(s.strategy.model_extra or {})
        key = sname.strip().lower().replace("-", "_")
        if key not in STRATEGIES:
            raise fail((*loc, "strategy"), f"unknown strategy {sname!r}; expected one of: "
                                           f"{', '.join(STRATEGIES)}")
        after = [s.after] if isinstance(s.after, str) else list(s.after)
        for j, d in enumerate(after):
            if d not in names:
                raise fail((*loc, "after", j) if not isinstance(s.after, str) else (*loc, "after"),
                           f"unknown stage {d!r}; expected one of: {', '.join(names)}")
        _check_thinking(s.thinking, task.thinking, (*loc, "thinking"), fail)
        kw: dict[str, Any] = {}
        if s.refine_prompt is not None:
            kw["refine_prompt"] = s.refine_prompt
        try:
            stages.append(Stage(name=s.name, prompt=s.prompt, model=s.model, strategy=key,
                                strategy_options=options, verifier=s.verifier, prm=s.prm,
                                search_verifier=s.search_verifier, share=s.share, max_rounds=s.max_rounds,
                                after=tuple(after), system=s.system, max_tokens=s.max_tokens,
                                temperature=s.temperature, answer_from=s.answer_from, meta=s.meta,
                                thinking=s.thinking, **kw))
        except UserError as exc:
            raise fail(loc, str(exc)) from None
    edges = []
    for i, e in enumerate(task.edges):
        m = _EDGE.match(e)
        if not m:
            raise fail(("edges", i), f"bad edge {e!r}; expected 'STAGE -> STAGE'")
        for n in m.groups():
            if n not in names:
                raise fail(("edges", i), f"unknown stage {n!r}; expected one of: {', '.join(names)}")
        edges.append((m.group(1), m.group(2)))
    routes = []
    for i, r in enumerate(task.routes):
        if r.after not in names:
            raise fail(("routes", i, "after"), f"unknown stage {r.after!r}; expected one of: {', '.join(names)}")
        for j, c in enumerate(r.cases):
            if c.goto != END and c.goto not in names:
                raise fail(("routes", i, "cases", j, "goto"), f"unknown stage {c.goto!r}; expected a stage "
                                                              f"or 'end'")
        if r.default != END and r.default not in names:
            raise fail(("routes", i, "default"), f"unknown stage {r.default!r}; expected a stage or 'end'")
        try:
            routes.append(Route(after=r.after, cases=tuple((c.when, c.goto) for c in r.cases), default=r.default))
        except UserError as exc:
            raise fail(("routes", i), str(exc)) from None
    if task.output is not None and task.output not in names:
        raise fail(("output",), f"unknown stage {task.output!r}; expected one of: {', '.join(names)}")
    for i, s in enumerate(task.stages):
        if s.verifier is not None and s.verifier not in task.verifiers and ":" not in s.verifier \
                and not re.match(r"^[a-z][\w\-]*$", s.verifier):
            raise fail(("stages", i, "verifier"), f"bad verifier {s.verifier!r}; expected a key of "
                                                  f"`verifiers` or a spec like math, code, genrm:MODEL")
    wf = Workflow(task.name or default_name, models=models, model=task.model, verifiers=dict(task.verifiers),
                  budget=_budget(task.budget, fail), seed=task.seed, inputs=task.inputs, output=task.output,
                  stages=stages, edges=edges, routes=routes, thinking=task.thinking)
    try:
        wf.validate()
    except UserError as exc:
        # Point at the stage (and field) the message names, else at `stages:`.
        loc: tuple[Any, ...] = ("stages",)
        msg = str(exc)
        m = re.match(r"verifiers\.([^:]+):", msg)
        if m and m.group(1) in task.verifiers:
            loc, msg = ("verifiers", m.group(1)), msg[m.end():].strip()
        for i, n in enumerate(names):
            if f"stage {n!r}" in str(exc):
                loc = ("stages", i)
                m = re.search(r"stage '[^']+' (prompt|meta\.(\w+)|strategy|verifier|prm)\b", str(exc))
                if m and m.group(1) == "prompt":
                    loc = ("stages", i, "prompt")
                elif m and m.group(2):
                    loc = ("stages", i, "meta", m.group(2))
                elif m:
                    loc = ("stages", i, m.group(1))
                break
        raise fail(loc, msg) from None
    return wf


def _check_thinking(value: dict[str, Any] | bool | None, base: dict[str, Any] | None,
                    loc: tuple[Any, ...], fail: Any) -> None:
    """Check a ``thinking:`` mapping (merged over ``base``), failing at the key that is wrong."""
    from testtime.orchestrator.definition import merge_thinking
    from testtime.thinking import OPTION_NAMES, ThinkingPolicy

    if not value:  # None, false (off) or {}
        return
    for key, v in value.items():
        if key not in OPTION_NAMES:
            raise fail((*loc, key), f"unknown thinking option; expected one of: {', '.join(OPTION_NAMES)}")
        try:
            ThinkingPolicy.from_options({key: v})
        except UserError as exc:
            raise fail((*loc, key), _policy_msg(exc)) from None
    try:
        merge_thinking(base, value)
    except UserError as exc:
        # Fields that disagree: point at the first one the message names that this mapping sets.
        msg = str(exc)
        named = sorted((m.start(), k) for k in OPTION_NAMES if (m := re.search(rf"\b{k}\b", msg)))
        mine = [k for _, k in named if k in value]
        inherited = base and any(k not in value for _, k in named)
        raise fail((*loc, mine[0]) if mine else loc, _policy_msg(exc)
                   + (" (with the top-level `thinking:`)" if inherited else "")) from None


def _policy_msg(exc: UserError) -> str:
    msg = str(exc)
    return msg.removeprefix("thinking policy: ").removeprefix("thinking option ")


def _budget(value: Any, fail: Any) -> Any:
    from testtime.budget import Budget

    if value is None:
        return None
    try:
        return Budget(**value) if isinstance(value, dict) else Budget.parse(value)
    except (UserError, TypeError) as exc:
        raise fail(("budget",), f"{exc}; expected e.g. 'tokens=20k,usd=0.5' or {{tokens: 20000}}") from None


def _check_spec(spec: str, fail: Any) -> None:
    from testtime.models.registry import parse_spec

    try:
        parse_spec(spec)
    except UserError as exc:
        raise fail(str(exc)) from None


def decode_task_bytes(data: bytes, *, file: str = "<task>") -> str:
    """A task file's bytes as text: UTF-8 (a BOM is allowed), no NUL bytes.

    Raises:
        UserError: naming the file and the first offending byte offset.
    """
    nul = data.find(b"\0")
    if nul >= 0:
        raise UserError(f"task file {file} contains a NUL byte at byte {nul}: "
                        "a task file must be UTF-8 text (is it a binary file?)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UserError(f"task file {file} is not UTF-8 text: byte 0x{data[exc.start]:02x} at byte "
                        f"{exc.start} (line {line}) cannot be decoded; save it as UTF-8") from None


def load_task(path: str | Path) -> Workflow:
    """Read, validate and build a task file.

    Raises:
        UserError: the file is unreadable or invalid (message has file:line).
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read task file {p}: {exc.strerror}") from exc
    task, lines = parse_task(decode_task_bytes(data, file=str(p)), file=str(p))
    return build_workflow(task, lines, file=str(p), default_name=p.stem)
