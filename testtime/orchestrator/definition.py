"""Value types that define a workflow: stages, routes and route conditions."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from testtime.errors import UserError
from testtime.thinking import ThinkingPolicy

if TYPE_CHECKING:
    from testtime.models.base import Model
    from testtime.search.base import SearchStrategy
    from testtime.verifiers.base import ProcessRewardModel, Verifier

#: Route target meaning "stop the workflow here".
END = "end"

DEFAULT_REFINE_PROMPT = (
    "{question}\n\nA previous attempt:\n{previous}\n\nA reviewer's feedback on it:\n{feedback}\n\n"
    "Write an improved, complete solution that fixes the problems. Finish with a line of the "
    "form 'The answer is X.'"
)

_NAME = re.compile(r"^[A-Za-z_][\w\-]*$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Stage:
    """One stage: a solve -> verify -> refine loop with its own model and budget share.

    Attributes:
        name: identifier (letters, digits, ``_``, ``-``).
        prompt: the problem text, a template (``{inputs.X}``, ``{stages.S.answer}``).
        model: a key of the workflow's models, a model spec, a Model, or None
            for the workflow's default model.
        strategy: search strategy name or instance run by the solve node.
        strategy_options: keyword arguments for the strategy.
        verifier: a key of the workflow's verifiers, a verifier spec, a
            Verifier, or None (no verify/refine loop).
        prm: process reward model (spec or instance) for PRM strategies.
        search_verifier: also hand the verifier to the strategy (for
            best-of-N and other strategies that score candidates themselves).
        share: relative budget weight (see the rollover rule in the docs).
        max_rounds: attempts in the verify loop: 1 solve + up to
            ``max_rounds - 1`` refinements.
        after: stages that must finish before this one starts.
        system: system prompt for this stage's calls.
        max_tokens / temperature: per-stage sampling settings.
        refine_prompt: template for refinement with ``{question}``,
            ``{previous}`` and ``{feedback}``.
        answer_from: ``"extract"`` (the final answer found in the text) or
            ``"text"`` (the whole text, e.g. code).
        meta: extra Problem metadata (templates allowed), e.g. tests for code.
        thinking: this stage's thinking policy (docs/thinking.md): a mapping
            of policy options (``{"thinking_budget": 512}``), merged key by
            key over the workflow's ``thinking``; a :class:`ThinkingPolicy`
            (used as it is); ``False`` (no policy for this stage); or None
            (the workflow's).
    """

    name: str
    prompt: str
    model: str | Model | None = None
    strategy: str | SearchStrategy = "single"
    strategy_options: Mapping[str, Any] = field(default_factory=dict)
    verifier: str | Verifier | None = None
    prm: str | ProcessRewardModel | None = None
    search_verifier: bool = False
    share: float = 1.0
    max_rounds: int = 3
    after: tuple[str, ...] = ()
    system: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    refine_prompt: str = DEFAULT_REFINE_PROMPT
    answer_from: str = "extract"
    meta: Mapping[str, Any] = field(default_factory=dict)
    thinking: Mapping[str, Any] | ThinkingPolicy | bool | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name) or self.name == END:
            raise UserError(f"bad stage name {self.name!r}: use letters, digits, _ or - "
                            f"(and not {END!r})")
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise UserError(f"stage {self.name!r}: prompt must be a non-empty string")
        if not self.share > 0:
            raise UserError(f"stage {self.name!r}: share must be > 0, got {self.share}")
        if self.max_rounds < 1:
            raise UserError(f"stage {self.name!r}: max_rounds must be >= 1, got {self.max_rounds}")
        if self.answer_from not in ("extract", "text"):
            raise UserError(f"stage {self.name!r}: answer_from must be 'extract' or 'text'")
        if self.thinking is not None:
            try:
                thinking_options(self.thinking)
            except UserError as exc:
                raise UserError(f"stage {self.name!r} thinking: "
                                f"{str(exc).removeprefix('thinking policy: ')}") from None
        if isinstance(self.after, str):
            object.__setattr__(self, "after", (self.after,))
        else:
            object.__setattr__(self, "after", tuple(self.after))


def thinking_options(value: Mapping[str, Any] | ThinkingPolicy | bool | None) -> dict[str, Any] | None:
    """The policy options of a ``thinking`` setting, checked (None: no setting, or off).

    A mapping is checked key by key (unknown keys and bad values raise
    UserError naming the key); a :class:`ThinkingPolicy` gives all its
    fields; ``False`` gives None and means "off"; None gives None.
    """
    if value is None or value is False:
        return None
    if isinstance(value, ThinkingPolicy):
        return {"thinking_budget": value.thinking_budget, "answer_budget": value.answer_budget,
                "min_thinking": value.min_thinking, "max_forcing": value.max_forcing,
                "notice_every": value.notice_every, "open_tag": value.open_tag, "close_tag": value.close_tag,
                "answer_cue": value.answer_cue, "wait_cue": value.wait_cue, "mode": value.mode,
                "reasoning_effort": value.reasoning_effort}
    if not isinstance(value, Mapping):
        raise UserError(f"expected a mapping of thinking options (e.g. {{thinking_budget: 512}}) or false, "
                        f"got {value!r}")
    out = {str(k): v for k, v in value.items()}
    for key, v in out.items():
        ThinkingPolicy.from_options({key: v})  # names the key that is wrong
    ThinkingPolicy.from_options(out)  # and fields that disagree (min_thinking > thinking_budget)
    return out


def merge_thinking(*layers: Mapping[str, Any] | ThinkingPolicy | bool | None) -> ThinkingPolicy | None:
    """The policy of layered ``thinking`` settings, later layers winning key by key.

    A :class:`ThinkingPolicy` layer replaces everything before it; a
    ``False`` layer switches thinking off (a later layer may turn it on
    again); None layers are skipped.

    Raises:
        UserError: a layer is invalid, or the merged options disagree.
    """
    merged: dict[str, Any] | None = None
    for layer in layers:
        if layer is None:
            continue
        if layer is False:
            merged = None
            continue
        opts = thinking_options(layer)
        if isinstance(layer, ThinkingPolicy) or merged is None:
            merged = dict(opts or {})
        else:
            merged.update(opts or {})
    return None if merged is None else ThinkingPolicy.from_options(merged)


#: A condition sees the finished stage's record and the fraction of the
#: global budget left (0..1, 1.0 when unlimited).
Condition = Callable[[Mapping[str, Any], float], bool]

_COND = re.compile(r"^\s*(score|budget_left|round)\s*(>=|<=|==|!=|>|<)\s*(-?[0-9]*\.?[0-9]+)\s*$")
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
    "<": lambda a, b: a < b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
}


def parse_condition(text: str) -> Condition:
    """Compile a route condition.

    Forms: ``passed``, ``not passed``, ``always``, and ``VAR OP NUMBER`` with
    VAR one of ``score`` (the stage's score, 0 when none), ``budget_left``
    (fraction of the global budget left) or ``round``; OP one of
    ``>= <= > < == !=``.
    """
    t = text.strip().lower()
    if t == "always":
        return lambda rec, left: True
    if t == "passed":
        return lambda rec, left: bool(rec.get("passed"))
    if t == "not passed":
        return lambda rec, left: not rec.get("passed")
    m = _COND.match(t)
    if not m:
        raise UserError(f"bad route condition {text!r}: expected 'passed', 'not passed', 'always' "
                        f"or 'score|budget_left|round OP NUMBER' (e.g. 'score >= 0.8')")
    var, op, num = m.group(1), _OPS[m.group(2)], float(m.group(3))

    def cond(rec: Mapping[str, Any], left: float) -> bool:
        if var == "budget_left":
            value = left
        else:
            value = rec.get(var)
            value = 0.0 if value is None else float(value)
        return op(value, num)

    return cond


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """Conditional edges after a stage: the first case that holds picks the next stage.

    Attributes:
        after: the stage whose end is routed.
        cases: ``(condition, target)`` pairs; a condition is a string (see
            :func:`parse_condition`) or a callable ``(record, budget_left) -> bool``;
            a target is a stage name or ``"end"``.
        default: the target when no case holds.
    """

    after: str
    cases: tuple[tuple[str | Condition, str], ...] = ()
    default: str = END

    def __post_init__(self) -> None:
        object.__setattr__(self, "cases", tuple((c, t) for c, t in self.cases))
        for cond, _ in self.cases:
            if isinstance(cond, str):
                parse_condition(cond)  # fail at definition time, not mid-run

    def targets(self) -> list[str]:
        out = [t for _, t in self.cases] + [self.default]
        return list(dict.fromkeys(out))

    def choose(self, record: Mapping[str, Any], budget_left: float) -> str:
        for cond, target in self.cases:
            fn = parse_condition(cond) if isinstance(cond, str) else cond
            if fn(record, budget_left):
                return target
        return self.default
