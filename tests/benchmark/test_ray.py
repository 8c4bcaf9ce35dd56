"""`--executor ray` on a local Ray runtime: the same rows as local, and one sweep budget for all workers."""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.benchmark.helpers import rows_without_timings
from testtime.benchmark.store import ResultsStore
from testtime.benchmark.sweep import SweepSpec, run_sweep
from testtime.errors import UserError


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    ray = pytest.importorskip("ray", reason="needs ray (extra `ray`)")
    import os

    root = str(Path(__file__).resolve().parents[2])
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [before])])  # workers import this tree
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = before
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_rows_equal_local_rows_and_the_sweep_budget_holds_across_workers(local_ray: Any, tmp_path: Path) -> None:
    spec = dict(dataset="sim:calibrated", strategies="single,best_of_n,beam", budgets="tokens=1k,3k", problems=4,
                seeds="0,1")
    local = run_sweep(SweepSpec(**spec, out=tmp_path / "local"))
    remote = run_sweep(SweepSpec(**spec, out=tmp_path / "ray", executor="ray"))
    assert local.ran == remote.ran == 4 * 3 * 2 * 2
    assert rows_without_timings(ResultsStore(tmp_path / "ray").rows()) == rows_without_timings(ResultsStore(tmp_path / "local").rows())

    # 24 cells of at most 3000 tokens against a 20k sweep budget, two workers at once.
    capped = run_sweep(SweepSpec(dataset="sim:calibrated", strategies="best_of_n", budgets="tokens=3k", problems=12,
                                 seeds="0,1", out=tmp_path / "capped", executor="ray", sweep_budget="tokens=20k"))
    rows = ResultsStore(tmp_path / "capped").rows()
    spent = sum(r["usage"]["tokens"] for r in rows)
    assert spent <= 20_000
    assert capped.sweep["spent"]["tokens"] == spent and capped.sweep["closed"]
    assert 0 < len(rows) < 24 and capped.stopped and f"{len(rows)} of 24 cells are done" in capped.stopped


def test_ray_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_import = builtins.__import__

    def no_ray(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(UserError, match=r"testtime\[ray\]"):
        run_sweep(SweepSpec(dataset="sim:calibrated", strategies="single", budgets="tokens=1k", problems=1,
                            out=tmp_path / "o", executor="ray"))
