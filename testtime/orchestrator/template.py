"""Stage prompt templates: ``{inputs.NAME}`` and ``{stages.STAGE.FIELD}``.

The syntax is deliberately tiny so task files stay readable and errors can be
caught before anything runs:

* ``{inputs.question}`` -- a task input;
* ``{stages.plan.answer}`` -- the extracted answer of an earlier stage;
  ``.text`` (full text), ``.score`` and ``.passed`` work too, and a bare
  ``{stages.plan}`` means ``.text``;
* ``{{`` and ``}}`` -- literal braces (e.g. in code).

Any other ``{...}`` is left as it is, so prompts can contain JSON or code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from testtime.errors import UserError

#: Fields of a stage record a template may read.
STAGE_FIELDS = ("answer", "text", "score", "passed")

_REF = re.compile(r"\{\{|\}\}|\{(inputs|stages)\.([A-Za-z_][\w\-]*)(?:\.([A-Za-z_]\w*))?\}")


@dataclass(frozen=True, slots=True)
class Ref:
    """One reference found in a template."""

    kind: str  # "inputs" or "stages"
    name: str
    field: str | None


def references(template: str) -> list[Ref]:
    """Every ``{inputs.X}`` / ``{stages.X.F}`` in ``template``, in order."""
    refs = []
    for m in _REF.finditer(template):
        if m.group(1):
            refs.append(Ref(m.group(1), m.group(2), m.group(3)))
    return refs


def check(template: str, *, inputs: set[str] | None, stages: set[str], where: str) -> None:
    """Raise UserError for references that cannot resolve.

    Args:
        inputs: declared input names, or None when inputs are not declared
            (then any input name is accepted and checked at run time).
        stages: the stages that are guaranteed to have finished before this
            template is rendered (the stage's ancestors).
        where: names the template in the message.
    """
    for ref in references(template):
        if ref.kind == "inputs":
            if ref.field is not None:
                raise UserError(f"{where}: {{inputs.{ref.name}.{ref.field}}} has a field; "
                                f"inputs are plain values, write {{inputs.{ref.name}}}")
            if inputs is not None and ref.name not in inputs:
                known = ", ".join(sorted(inputs)) or "none declared"
                raise UserError(f"{where}: unknown input {ref.name!r} (declared inputs: {known})")
        else:
            if ref.field is not None and ref.field not in STAGE_FIELDS:
                raise UserError(f"{where}: {{stages.{ref.name}.{ref.field}}}: unknown field "
                                f"{ref.field!r}; expected one of {', '.join(STAGE_FIELDS)}")
            if ref.name not in stages:
                raise UserError(f"{where}: {{stages.{ref.name}...}} refers to a stage that does not "
                                f"run before this one; add it to `after` (earlier stages: "
                                f"{', '.join(sorted(stages)) or 'none'})")


def render(template: str, inputs: Mapping[str, Any], stages: Mapping[str, Mapping[str, Any]]) -> str:
    """Fill a template from inputs and stage records.

    Raises:
        UserError: an input that was not given.
    """

    def sub(m: re.Match[str]) -> str:
        tok = m.group(0)
        if tok == "{{":
            return "{"
        if tok == "}}":
            return "}"
        kind, name, fld = m.group(1), m.group(2), m.group(3)
        if kind == "inputs":
            if name not in inputs:
                raise UserError(f"missing task input {name!r}: pass --input {name}=VALUE")
            return str(inputs[name])
        rec = stages.get(name) or {}
        value = rec.get(fld or "text")
        return "" if value is None else str(value)

    return _REF.sub(sub, template)
