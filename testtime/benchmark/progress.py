"""The sweep's progress bar: cells done with ETA, running accuracy per strategy, spend vs the sweep budget.

Drawn with rich on stderr, and only when stderr is a terminal (and not
``--json``): piped or logged output stays clean.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from typing import Any


class SweepProgress:
    """Context manager; call :meth:`start` with the number of cells to run, then :meth:`on_row` per row."""

    def __init__(self, *, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._progress: Any = None
        self._task: Any = None
        self._right: dict[str, int] = defaultdict(int)
        self._seen: dict[str, int] = defaultdict(int)

    def __enter__(self) -> SweepProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("bench"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.description}"),
                                      console=Console(stderr=True), transient=False)
            self._progress.__enter__()
        return self

    def start(self, cells: int) -> None:
        if self._progress is not None:
            self._task = self._progress.add_task("", total=max(cells, 0))

    def on_row(self, row: dict[str, Any], sweep: dict[str, Any]) -> None:
        s = row["strategy"]
        self._seen[s] += 1
        self._right[s] += bool(row.get("correct"))
        if self._progress is None or self._task is None:
            return
        acc = "  ".join(f"{k} {self._right[k] / n:.2f}" for k, n in self._seen.items())
        spent = sweep.get("spent", {})
        limits = sweep.get("limits", {})
        spend = ", ".join(f"{d} {spent.get(d, 0):.4g}/{lim:.4g}" for d, lim in limits.items() if d != "seconds")
        if not spend:
            spend = f"tokens {spent.get('tokens', 0):,}  ${spent.get('usd', 0.0):.4f}"
        self._progress.update(self._task, advance=1, description=f"{acc} | {spend}")

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
