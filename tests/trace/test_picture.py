"""`testtime trace render`: the search tree as a PNG/SVG, read back and counted."""

from __future__ import annotations

import sys
import tomllib
from collections import deque
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.trace.sim_traces import sim_trace
from testtime.cli import main
from testtime.trace.index import TraceIndex
from testtime.trace.picture import render_file


def _blobs(mask: np.ndarray, min_px: int = 12) -> int:
    """Connected regions (4-neighbour) of at least ``min_px`` pixels."""
    seen = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    count = 0
    for y, x in zip(*np.nonzero(mask), strict=True):
        if seen[y, x]:
            continue
        size, todo = 0, deque([(y, x)])
        seen[y, x] = True
        while todo:
            cy, cx = todo.popleft()
            size += 1
            for ny, nx_ in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < h and 0 <= nx_ < w and mask[ny, nx_] and not seen[ny, nx_]:
                    seen[ny, nx_] = True
                    todo.append((ny, nx_))
        count += size >= min_px
    return count


def _axes_pixels(png: Path, box: tuple[int, int, int, int]) -> np.ndarray:
    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    x0, y0, x1, y1 = box
    return img[y0:y1, x0:x1]


@pytest.mark.parametrize("strategy", ["beam", "particle_filter"])
def test_png_has_one_marker_per_node_and_rings_the_chosen_path(tmp_path: Path, strategy: str):
    trace = tmp_path / "t.jsonl"
    sim_trace(trace, strategy)
    idx = TraceIndex.from_file(trace)
    assert idx.nodes and all(n.score is not None for n in idx.nodes.values())
    out = tmp_path / "tree.png"
    drawn = render_file(trace, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as im:
        im.verify()
    assert drawn.nodes == len(idx.nodes)
    px = _axes_pixels(out, drawn.axes_px)
    # Markers are filled with viridis colours (saturated); edges and text are grey or black.
    saturated = (px.max(axis=2) - px.min(axis=2)) > 60
    assert _blobs(saturated) == len(idx.nodes)
    red = (px[..., 0] > 170) & (px[..., 1] < 90) & (px[..., 2] < 90)
    assert drawn.chosen == [n.key for n in idx.chosen_path()] and drawn.chosen
    assert _blobs(red, min_px=6) == len(drawn.chosen)


def test_cli_writes_svg_and_png(tmp_path: Path, capsys):
    trace = tmp_path / "t.jsonl"
    sim_trace(trace, "mcts")
    n = len(TraceIndex.from_file(trace).nodes)
    assert main(["trace", "render", str(trace), "--svg", str(tmp_path / "t.svg")]) == 0
    svg = (tmp_path / "t.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert main(["trace", "render", str(trace), "--png", str(tmp_path / "t.png")]) == 0
    assert f"{n} node(s)" in capsys.readouterr().out


def test_render_of_a_trace_without_nodes_says_why(tmp_path: Path, capsys):
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"kind": "run_start", "t": 0, "strategy": "single"}\n')
    assert main(["trace", "render", str(trace), "--png", str(tmp_path / "t.png")]) == 2
    assert "no search nodes" in capsys.readouterr().err
    assert not (tmp_path / "t.png").exists()


def test_render_without_matplotlib_names_what_to_install(tmp_path: Path, monkeypatch, capsys):
    trace = tmp_path / "t.jsonl"
    sim_trace(trace, "beam")
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["trace", "render", str(trace), "--png", str(tmp_path / "t.png")]) == 2
    err = capsys.readouterr().err
    assert 'pip install "testtime[bench]"' in err and "pip install matplotlib" in err
    assert not (tmp_path / "t.png").exists()
    # The extra it names does hold matplotlib.
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert any(d.startswith("matplotlib") for d in pyproject["project"]["optional-dependencies"]["bench"])
