"""`testtime bench` end to end: plots read back, `bench report DIR`, --json, errors, the --sim alias."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.benchmark.helpers import write_math_jsonl
from testtime.benchmark.plots import BOM_COLOR, PALETTE
from testtime.cli import main

STRATS = ["single", "best_of_n", "beam"]  # registry order, as the report sorts them


@pytest.fixture(scope="module")
def sim_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("simbench")
    assert main(["bench", "--dataset", "sim:calibrated", "--strategies", ",".join(STRATS), "--budgets",
                 "tokens=1k,3k,8k", "--problems", "6", "--out", str(out), "--json"]) == 0
    return out


def _palette_colours_in(png: Path) -> set[str]:
    import matplotlib.image as mpimg
    import numpy as np

    img = mpimg.imread(str(png))
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    rgb = (img[..., :3] * 255).round().astype(int).reshape(-1, 3)
    present = {tuple(c) for c in np.unique(rgb, axis=0)}
    found = set()
    # Black and grey also draw axes, text and antialiased edges: only the hues tell lines apart.
    for hexc in (c for c in PALETTE if c not in (BOM_COLOR, "#7f7f7f")):
        c = tuple(int(hexc[i:i + 2], 16) for i in (1, 3, 5))
        if c in present:
            found.add(hexc)
    return found


def test_plots_are_pngs_with_one_line_per_strategy(sim_store: Path) -> None:
    meta = json.loads((sim_store / "plots.json").read_text())
    for name in ("accuracy_vs_tokens.png", "accuracy_vs_usd.png"):
        assert (sim_store / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert [line["label"] for line in meta[name]["lines"]] == STRATS
        assert _palette_colours_in(sim_store / name) == set(PALETTE[: len(STRATS)])
    pk = meta["pass_at_k.png"]["lines"]
    assert [line["label"] for line in pk][:-1] == [s for s in STRATS]
    assert pk[-1]["label"].startswith("best_of_majority[")
    assert _palette_colours_in(sim_store / "pass_at_k.png") == set(PALETTE[: len(STRATS)])


def test_bench_report_redraws_the_same_report_from_the_store(sim_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = json.loads((sim_store / "report.json").read_text())
    for name in ("report.json", "report.md", "accuracy_vs_tokens.png", "plots.json"):
        (sim_store / name).unlink()
    capsys.readouterr()
    assert main(["bench", "report", str(sim_store), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == before == json.loads((sim_store / "report.json").read_text())
    assert (sim_store / "accuracy_vs_tokens.png").exists() and "| beam | tokens=8000 |" in (sim_store / "report.md").read_text()
    # Accuracy is the fraction of correct rows: recompute it from the store.
    rows = [json.loads(line) for line in (sim_store / "results.jsonl").read_text().splitlines()]
    for r in printed["rows"]:
        mine = [x for x in rows if x["strategy"] == r["strategy"] and x["budget"] == r["budget"]]
        assert r["cells"] == len(mine) == 6
        assert r["accuracy"] == round(sum(bool(x["correct"]) for x in mine) / 6, 4)
        assert r["max_spend_ratio"] <= 1.0


def test_json_prints_one_object_and_a_rerun_runs_nothing(sim_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["bench", "--dataset", "sim:calibrated", "--strategies", ",".join(STRATS), "--budgets",
                 "tokens=1k,3k,8k", "--problems", "6", "--out", str(sim_store), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["run"]["ran"] == 0 and out["run"]["skipped_done"] == 54
    assert {"rows", "match_best_of_n", "pass_at_k", "plots"} <= set(out)
    match = {(m["strategy"], m["reference_budget"]): m for m in out["match_best_of_n"]}
    assert set(match) == {(s, b) for s in ("single", "beam") for b in ("tokens=1000", "tokens=3000", "tokens=8000")}


@pytest.mark.parametrize("argv,needle", [
    (["bench"], "needs --dataset"),
    (["bench", "--dataset", "nope.jsonl", "--model", "local"], "no such file"),
    (["bench", "--dataset", "sim:calibrated", "--strategies", "telepathy"], "unknown strategy"),
    (["bench", "--dataset", "sim:calibrated", "-o", "beam=4"], "STRATEGY.KEY=VALUE"),
    (["bench", "report", "/nonexistent-dir"], "no results.jsonl"),
    (["bench", "frobnicate"], "bench report DIR"),
])
def test_bad_input_exits_2_with_one_line(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_dataset_without_model_and_bad_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_math_jsonl(tmp_path / "m.jsonl", 2)
    assert main(["bench", "--dataset", str(data), "--out", str(tmp_path / "o")]) == 2
    assert "--model is required" in capsys.readouterr().err
    data.write_text(data.read_text() + '{"id": "x", "question": "q"}\n')
    assert main(["bench", "--dataset", str(data), "--model", "scripted", "--out", str(tmp_path / "o")]) == 2
    assert f"{data}:3: field 'answer'" in capsys.readouterr().err
