"""Write trace events as JSON Lines, one event per line, flushed as they come.

Flushing each line means a crashed run still leaves a readable trace.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import IO, Any

from testtime.errors import UserError
from testtime.trace.events import TraceEvent


class JsonlWriter:
    """A trace sink appending events to a file."""

    def __init__(self, path: str | Path, *, append: bool = False) -> None:
        self.path = Path(path)
        try:
            self._fh: IO[str] | None = open(self.path, "a" if append else "w", encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot write trace file {self.path}: {exc.strerror}") from exc
        self._lock = threading.Lock()

    def __call__(self, event: TraceEvent) -> None:
        line = json.dumps(event.to_dict(), default=_jsonable, ensure_ascii=False)
        with self._lock:
            if self._fh is not None:
                self._fh.write(line + "\n")
                self._fh.flush()

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    return repr(obj)


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """Load a JSONL trace; errors name the file and line."""
    events = []
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read trace file {p}: {exc.strerror}") from exc
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise UserError(f"{p}:{lineno}: not a JSON trace event ({exc.msg})") from exc
    return events
