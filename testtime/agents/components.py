"""Component inventories for knapsack composition, and their YAML files.

An inventory lists components (models, agents, tools), each with a
description, a cost per task in the inventory's unit, optional compatibility
constraints (``requires``, ``conflicts``) and, optionally, a measured
``utility`` (success rate when used). Real utility is what the composer
learns by testing; descriptions may be wrong.

YAML form::

    unit: usd                     # usd (default), tokens or calls
    components:
      - name: sql-agent
        kind: agent               # model | agent | tool
        description: Answers questions over relational databases.
        cost: 0.05
        utility: 0.7              # optional measured success rate in [0, 1]
        requires: [python-runtime]
        conflicts: [legacy-sql-agent]

Errors name the file, the line and the field, and say what is expected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from testtime.errors import UserError

UNITS = ("usd", "tokens", "calls")


@dataclass(frozen=True, slots=True, kw_only=True)
class Component:
    """One selectable component.

    Attributes:
        name: unique name.
        kind: ``model``, ``agent`` or ``tool``.
        description: what it claims to do (may be misleading).
        cost: cost per task in the inventory's unit.
        utility: measured success rate when known (None: unknown).
        requires: names that must be selected with it.
        conflicts: names that must not be selected with it.
    """

    name: str
    kind: str
    description: str
    cost: float
    utility: float | None = None
    requires: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Inventory:
    """Components and the unit their costs are in."""

    components: tuple[Component, ...]
    unit: str = "usd"
    source: str = "<memory>"

    def __post_init__(self) -> None:
        names = [c.name for c in self.components]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise UserError(f"{self.source}: duplicate component names: {', '.join(dupes)}")
        known = set(names)
        for c in self.components:
            for ref in (*c.requires, *c.conflicts):
                if ref not in known:
                    raise UserError(f"{self.source}: component {c.name!r} refers to unknown component {ref!r}")
            if c.name in c.requires or c.name in c.conflicts:
                raise UserError(f"{self.source}: component {c.name!r} cannot require or conflict with itself")

    def by_name(self) -> dict[str, Component]:
        return {c.name: c for c in self.components}

    def compatible(self, chosen: Sequence[Component], extra: Sequence[Component]) -> bool:
        """True if adding ``extra`` to ``chosen`` violates no conflict."""
        names = {c.name for c in chosen} | {c.name for c in extra}
        return not any(set(c.conflicts) & names for c in (*chosen, *extra))

    def closure(self, comp: Component, chosen: Sequence[Component]) -> list[Component]:
        """``comp`` plus every not-yet-chosen component it transitively requires."""
        have = {c.name for c in chosen}
        by = self.by_name()
        out: list[Component] = []
        todo = [comp.name]
        while todo:
            name = todo.pop()
            if name in have or any(c.name == name for c in out):
                continue
            out.append(by[name])
            todo.extend(by[name].requires)
        return out


class _ComponentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    kind: Literal["model", "agent", "tool"] = "agent"
    description: str = ""
    cost: float = Field(gt=0)
    utility: float | None = Field(default=None, ge=0, le=1)
    requires: list[str] = Field(default_factory=list)
    conflicts: list[str] = Field(default_factory=list)


class _InventoryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    unit: Literal["usd", "tokens", "calls"] = "usd"
    task: str | None = None
    components: list[_ComponentIn] = Field(min_length=1)


def _line_of(node: Any, loc: Sequence[Any]) -> int | None:
    """1-based line of the YAML node at pydantic error location ``loc``."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if k.value == part), None)
            if nxt is None:
                break
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
        line = node.start_mark.line + 1
    return line


def parse_inventory(text: str, source: str = "<string>") -> tuple[Inventory, str | None]:
    """Parse and validate inventory YAML; returns the inventory and its optional task text.

    Raises:
        UserError: ``SOURCE:LINE: field: what is wrong``.
    """
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise UserError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(data, dict):
        raise UserError(f"{source}:1: an inventory file is a mapping with a 'components' list")
    try:
        parsed = _InventoryIn.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = err["loc"]
        line = _line_of(node, loc)
        field = ".".join(str(p) for p in loc) or "(top level)"
        raise UserError(f"{source}:{line}: {field}: {err['msg']}"
                        f" (components need name, cost > 0; kind is model|agent|tool;"
                        f" utility in [0, 1])") from exc
    comps = tuple(Component(name=c.name, kind=c.kind, description=c.description, cost=c.cost,
                            utility=c.utility, requires=tuple(c.requires), conflicts=tuple(c.conflicts))
                  for c in parsed.components)
    return Inventory(components=comps, unit=parsed.unit, source=source), parsed.task


def load_inventory(path: str | Path) -> tuple[Inventory, str | None]:
    """Read an inventory YAML file (see the module docstring for the format)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read inventory file {str(p)!r}: {exc.strerror or exc}") from exc
    return parse_inventory(text, source=str(p))
