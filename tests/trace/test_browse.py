"""`testtime trace browse`: the Textual browser driven headless by its pilot."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.trace.sim_traces import asim_trace
from testtime.cli import main
from testtime.trace.browse import TraceBrowser
from testtime.trace.index import TraceIndex

SIZE = (180, 50)


def _detail(app: TraceBrowser) -> str:
    return str(app.query_one("#detail").render())


def _status(app: TraceBrowser) -> str:
    return str(app.query_one("#status").render())


def _cursor(app: TraceBrowser) -> str | None:
    node = app.query_one("#tree").cursor_node
    return None if node is None else node.data


async def test_jump_to_answer_shows_its_full_text_and_score(tmp_path: Path):
    path = tmp_path / "run.jsonl"
    result = await asim_trace(path, "beam")
    idx = TraceIndex.from_file(path)
    answer = idx.answer_node()
    assert answer is not None and answer.score is not None
    app = TraceBrowser(path, index=idx)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("a")
        await pilot.pause()
        assert _cursor(app) == f"node:{answer.key}"
        detail = _detail(app)
        assert f"node #{answer.node} of beam" in detail
        assert f"score: {answer.score:.3f}" in detail
        assert answer.text and answer.text in detail
        assert "selected: " in detail and "final" in detail
        # The row it jumped to is visible: every ancestor was expanded.
        row = app._tnodes[f"node:{answer.key}"]
        up = row.parent
        while up is not None:
            assert up.is_expanded
            up = up.parent
    # The chosen answer's path ends in the run's answer.
    assert result.answer in "\n".join(n.text for n in idx.chosen_path())


async def test_expand_all_and_best_key_find_the_highest_scored_node(tmp_path: Path):
    path = tmp_path / "run.jsonl"
    await asim_trace(path, "mcts")
    idx = TraceIndex.from_file(path)
    best = idx.best_node()
    assert best is not None
    app = TraceBrowser(path, index=idx)
    async with app.run_test(size=SIZE) as pilot:
        tree = app.query_one("#tree")
        before = tree.last_line
        await pilot.press("e")
        await pilot.pause()
        assert tree.last_line + 1 == len(idx.items())  # every row shown once expanded
        assert tree.last_line > before
        await pilot.press("b")
        await pilot.pause()
        assert _cursor(app) == f"node:{best.key}"
        assert f"score: {best.score:.3f}" in _detail(app)
        assert "visits=" in _detail(app)  # MCTS's own numbers reach the pane


async def test_next_incident_cycles_through_refusals_and_errors(tmp_path: Path):
    path = tmp_path / "run.jsonl"
    await asim_trace(path, "beam", budget="tokens=1200")
    # Two incidents, as the spend path writes them.
    path.write_text(path.read_text()
                    + '{"kind": "budget_refused", "run_id": "x", "t": 9.0, "stage": null, "role": "solve", '
                    '"dimension": "tokens", "requested": 900, "remaining": 12}\n'
                    '{"kind": "error", "run_id": "x", "t": 9.1, "stage": null, "where": "m", "error": "boom"}\n')
    idx = TraceIndex.from_file(path)
    assert len(idx.incidents) == 2
    app = TraceBrowser(path, index=idx)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        await pilot.pause()
        assert _cursor(app) == f"event:{idx.incidents[0]}"
        assert '"requested": 900' in _detail(app)
        await pilot.press("n")
        await pilot.pause()
        assert _cursor(app) == f"event:{idx.incidents[1]}" and "boom" in _detail(app)
        await pilot.press("n")
        await pilot.pause()
        assert _cursor(app) == f"event:{idx.incidents[0]}"  # wraps around


async def test_filter_by_score_keeps_matching_nodes_and_their_ancestors(tmp_path: Path):
    path = tmp_path / "run.jsonl"
    await asim_trace(path, "beam")
    idx = TraceIndex.from_file(path)
    scores = sorted(n.score for n in idx.nodes.values() if n.score is not None)
    cut = scores[len(scores) // 2]
    matching = {n.key for n in idx.nodes.values() if n.score is not None and n.score >= cut}
    app = TraceBrowser(path, index=idx)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("slash")
        await pilot.press(*f"score>={cut}")
        await pilot.press("enter")
        await pilot.pause()
        shown = {k[5:] for k in app._tnodes if k.startswith("node:")}
        assert matching <= shown
        for key in shown - matching:  # the rest are ancestors of a match
            assert any(_is_ancestor(idx, key, m) for m in matching)
        assert f"{len(matching)} match(es)" in _status(app)
        await pilot.press("escape")
        await pilot.pause()
        assert len([k for k in app._tnodes if k.startswith("node:")]) == len(idx.nodes)


def _is_ancestor(idx: TraceIndex, key: str, of: str) -> bool:
    n = idx.nodes[of]
    s = idx.strategies[n.strategy]
    while n.parent in s.nodes:
        n = s.nodes[n.parent]
        if n.key == key:
            return True
    return False


async def test_timeline_replays_the_run_event_by_event(tmp_path: Path):
    path = tmp_path / "run.jsonl"
    await asim_trace(path, "beam")
    idx = TraceIndex.from_file(path)
    first_node = next(i for i, e in enumerate(idx.events) if e["kind"] == "node_added")
    app = TraceBrowser(path, index=idx)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("t")
        await pilot.pause()
        assert "timeline 1/" in _status(app) and not [k for k in app._tnodes if k.startswith("node:")]
        await pilot.press(*["full_stop"] * first_node)
        await pilot.pause()
        assert f"timeline {first_node + 1}/{len(idx.events)}" in _status(app)
        assert len([k for k in app._tnodes if k.startswith("node:")]) == 1
        await pilot.press("comma")
        await pilot.pause()
        assert not [k for k in app._tnodes if k.startswith("node:")]
        await pilot.press("t")  # back to the whole run
        await pilot.pause()
        assert len([k for k in app._tnodes if k.startswith("node:")]) == len(idx.nodes)


async def test_follow_shows_events_appended_while_open(tmp_path: Path):
    full = tmp_path / "full.jsonl"
    await asim_trace(full, "beam")
    lines = full.read_bytes().split(b"\n")
    lines = [ln + b"\n" for ln in lines if ln]
    total = TraceIndex.from_file(full)
    live = tmp_path / "live.jsonl"
    half = len(lines) // 2
    live.write_bytes(b"".join(lines[:half]) + lines[half][:7])  # ends mid-line, as a writer may leave it
    app = TraceBrowser(live, follow=True, poll_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        assert len(app.index.events) == half
        nodes_before = len(app.index.nodes)
        assert nodes_before < len(total.nodes)
        _append(live, lines[half][7:] + b"".join(lines[half + 1:]))
        for _ in range(100):
            await pilot.pause(0.05)
            if len(app.index.events) == len(lines):
                break
        assert len(app.index.events) == len(lines)
        assert len([k for k in app._tnodes if k.startswith("node:")]) == len(total.nodes)
        assert "answer=" in str(app.query_one("#tree").root.label)
        await pilot.press("a")
        await pilot.pause()
        assert _cursor(app) == f"node:{total.answer_node().key}"


def _append(path: Path, data: bytes) -> None:
    """Append as a writer does (the browser must see the rest of the cut line)."""
    with open(path, "ab") as fh:
        fh.write(data)


def test_browse_without_textual_names_the_tui_extra(monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "textual" or m.startswith("textual.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "textual", None)
    monkeypatch.delitem(sys.modules, "testtime.trace.browse", raising=False)
    assert main(["trace", "browse", "whatever.jsonl"]) == 2
    assert 'pip install "testtime[tui]"' in capsys.readouterr().err


def test_browse_on_a_missing_file_is_a_user_error(tmp_path: Path, capsys):
    assert main(["trace", "browse", str(tmp_path / "nope.jsonl")]) == 2
    assert "nope.jsonl" in capsys.readouterr().err


@pytest.mark.parametrize("strategy", ["particle_filter", "astar"])
async def test_detail_pane_shows_each_strategys_numbers(tmp_path: Path, strategy: str):
    path = tmp_path / "run.jsonl"
    await asim_trace(path, strategy)
    idx = TraceIndex.from_file(path)
    best = idx.best_node()
    app = TraceBrowser(path, index=idx)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("b")
        await pilot.pause()
        assert f"score: {best.score:.3f}" in _detail(app)
        assert f"tokens: {best.tokens}" in _detail(app)


async def test_timeline_play_advances_on_its_own_and_pauses(tmp_path: Path):
    path = tmp_path / "run.jsonl"
    await asim_trace(path, "beam", budget="tokens=1200")
    app = TraceBrowser(path, index=TraceIndex.from_file(path))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("t", "p")
        for _ in range(60):
            await pilot.pause(0.05)
            if app.timeline >= 4:
                break
        await pilot.press("p")
        assert app.timeline >= 4
        stopped = app.timeline
        await pilot.pause(0.4)
        assert app.timeline == stopped
