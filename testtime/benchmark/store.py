"""The results store: ``DIR/results.jsonl``, one row per finished cell.

A cell is one (problem, strategy, budget, seed). Its row is appended,
flushed and fsynced the moment the cell ends, so a crashed or killed sweep
loses at most the cells in flight; rerunning the same command reads the
store and skips every finished cell. ``DIR/config.json`` holds the sweep's
configuration and its hash: a rerun with a different configuration
(dataset content, model, strategy options, verifier, PRM, generation
settings) is refused unless ``--fresh``; more budgets, seeds, problems or
strategies only add cells.

Row schema (``v`` 1)::

    {"v": 1, "config_hash", "dataset", "problem_id", "strategy", "budget" (spec),
     "seed", "answer", "correct", "stopped_reason", "usage" (usage_report),
     "seconds", "trace_id", "samples": [{"answer", "correct", "score"}...],
     "difficulty" (simulator only, else null)}

A torn last line (the process died mid-write) is ignored on read and
rewritten by the rerun.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from testtime.errors import UserError

ROW_VERSION = 1
RESULTS = "results.jsonl"
CONFIG = "config.json"


def config_hash(config: dict[str, Any]) -> str:
    """A stable hash of a configuration dict (sorted-key JSON, sha256, 16 hex digits)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cell_key(row: dict[str, Any]) -> tuple[str, str, str, int]:
    """What identifies a cell: (problem_id, strategy, budget, seed)."""
    return (str(row["problem_id"]), str(row["strategy"]), str(row["budget"]), int(row["seed"]))


class ResultsStore:
    """Append-only JSONL rows in ``directory`` (see the module docstring).

    Args:
        directory: created if missing.
        config: the sweep configuration (None: read-only, for ``bench report``).
        fresh: discard an existing store whose configuration differs (or any store).
    """

    def __init__(self, directory: str | os.PathLike[str], config: dict[str, Any] | None = None, *,
                 fresh: bool = False) -> None:
        self.dir = Path(directory)
        self.path = self.dir / RESULTS
        self.config_path = self.dir / CONFIG
        if config is None:
            if not self.path.exists():
                raise UserError(f"{self.dir}: no {RESULTS} here; run `testtime bench --dataset ... --out {self.dir}` first")
            self.config = self._read_config()
            self.hash = self.config.get("config_hash", "")
            return
        self.config = dict(config)
        self.hash = config_hash(config)
        self.config["config_hash"] = self.hash
        self.dir.mkdir(parents=True, exist_ok=True)
        if fresh:
            for p in (self.path, self.config_path):
                if p.exists():
                    p.unlink()
            traces = self.dir / "traces"
            if traces.is_dir():
                shutil.rmtree(traces)
        if self.config_path.exists() or self.path.exists():
            old = self._read_config() if self.config_path.exists() else {}
            if old.get("config_hash") != self.hash:
                changed = sorted(k for k in set(old) | set(self.config)
                                 if k != "config_hash" and old.get(k) != self.config.get(k))
                raise UserError(
                    f"{self.dir} holds results of a different configuration (changed: "
                    f"{', '.join(changed) or 'unknown'}); rerun with --fresh to discard them, "
                    "or pick another --out")
        _write_atomic(self.config_path, json.dumps(self.config, indent=2, sort_keys=True) + "\n")

    def _read_config(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.config_path.read_text()))
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise UserError(f"{self.config_path}: not valid JSON ({exc}); remove it or rerun with --fresh") from None

    def rows(self) -> list[dict[str, Any]]:
        """Every complete row, in the order written (a torn last line is skipped)."""
        if not self.path.exists():
            return []
        out = []
        with self.path.open(encoding="utf-8") as fh:
            lines = fh.read().split("\n")
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                if i >= len(lines) - 1:  # the last line: a write cut by a crash
                    continue
                raise UserError(f"{self.path}:{i}: not valid JSON; the store is damaged "
                                "(remove that line, or rerun with --fresh)") from None
            if row.get("v") != ROW_VERSION:
                raise UserError(f"{self.path}:{i}: row version {row.get('v')!r}, this testtime reads {ROW_VERSION}")
            out.append(row)
        return out

    def done(self) -> set[tuple[str, str, str, int]]:
        """Keys of the finished cells of this configuration."""
        return {cell_key(r) for r in self.rows() if r.get("config_hash") == self.hash}

    def append(self, row: dict[str, Any]) -> None:
        """Append one row; it is on disk (fsynced) when this returns."""
        self.append_many([row])

    def append_many(self, rows: Iterable[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
        if not text:
            return
        self._repair_tail()
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    def _repair_tail(self) -> None:
        # A crash mid-write leaves a line without its newline: cut it so the
        # next row starts on a line of its own.
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with self.path.open("rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) == b"\n":
                return
            data = fh.seek(0) or fh.read()
            cut = data.rfind(b"\n") + 1
            fh.truncate(cut)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
