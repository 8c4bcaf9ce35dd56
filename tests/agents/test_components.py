"""Inventory YAML files and BM25 retrieval."""

from __future__ import annotations

import pytest

from testtime.agents.components import load_inventory, parse_inventory
from testtime.agents.retrieval import BM25
from testtime.errors import UserError

GOOD = """\
unit: usd
task: answer questions over a sales database
components:
  - name: sql-agent
    kind: agent
    description: Answers questions over relational databases with SQL.
    cost: 0.05
    utility: 0.7
    requires: [py]
  - name: py
    kind: tool
    description: Python runtime.
    cost: 0.01
  - name: poet
    kind: model
    description: Writes poems.
    cost: 0.02
    conflicts: [sql-agent]
"""


def test_good_inventory(tmp_path):
    f = tmp_path / "inv.yaml"
    f.write_text(GOOD)
    inv, task = load_inventory(f)
    assert task.startswith("answer questions")
    assert [c.name for c in inv.components] == ["sql-agent", "py", "poet"]
    assert inv.components[0].requires == ("py",)
    assert [c.name for c in inv.closure(inv.components[0], [])] == ["sql-agent", "py"]
    assert not inv.compatible([inv.components[0]], [inv.components[2]])


@pytest.mark.parametrize("text,where", [
    (GOOD.replace("cost: 0.01", "cost: -1"), ":13: components.1.cost"),
    (GOOD.replace("kind: tool", "kind: robot"), ":11: components.1.kind"),
    (GOOD.replace("utility: 0.7", "utility: 7"), ":8: components.0.utility"),
    (GOOD.replace("    cost: 0.02\n", "    cost: 0.02\n    colour: red\n"), ":18: components.2.colour"),
    ("components: [\n", ":2"),
])
def test_errors_name_file_line_and_field(text, where):
    with pytest.raises(UserError) as exc:
        parse_inventory(text, source="inv.yaml")
    assert f"inv.yaml{where}" in str(exc.value)


def test_reference_errors():
    with pytest.raises(UserError, match="unknown component 'nope'"):
        parse_inventory(GOOD.replace("requires: [py]", "requires: [nope]"), source="x")
    with pytest.raises(UserError, match="duplicate"):
        parse_inventory(GOOD.replace("name: poet", "name: py"), source="x")
    with pytest.raises(UserError, match="cannot read"):
        load_inventory("/nonexistent/inv.yaml")


def test_bm25_ranks_matching_descriptions_first():
    docs = ["weather forecast tool", "sql database query agent for tables", "poem writer",
            "database backup tool"]
    bm = BM25(docs)
    assert bm.rank("query the sales database tables")[:2] == [1, 3]
    assert bm.scores("unrelated words")[2] == 0.0
