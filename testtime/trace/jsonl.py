"""Write trace events as JSON Lines, one event per line, flushed as they come.

Flushing each line means a crashed run still leaves a readable trace.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from testtime.errors import UserError
from testtime.trace.events import TraceEvent


class JsonlWriter:
    """A trace sink appending events to a file."""

    def __init__(self, path: str | Path, *, append: bool = False) -> None:
        self.path = Path(path)
        try:
            # errors="replace": a lone surrogate (say from undecodable argv bytes)
            # is written as "?" instead of failing the run.
            self._fh: IO[str] | None = open(self.path, "a" if append else "w", encoding="utf-8",
                                            errors="replace")
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
    """Load a JSONL trace; the first unreadable line is an error naming the file and line."""
    events, skipped = load_events(path)
    if skipped:
        lineno, why = skipped[0]
        raise UserError(f"{path}:{lineno}: not a JSON trace event ({why})")
    return events


#: ``check(event) -> None`` if usable, else why not.
EventCheck = Callable[[dict[str, Any]], "str | None"]


def load_events(path: str | Path, *, check: EventCheck | None = None,
                ) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """Load a JSONL trace leniently: ``(events, skipped)``.

    A line is skipped, with ``(line number, why)`` in ``skipped``, when it is
    not UTF-8, not JSON (binary junk, truncated, nested too deeply), not an
    object with a string ``kind``, or when ``check`` says why not.

    Raises:
        UserError: the file cannot be read at all.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read trace file {p}: {exc.strerror}") from exc
    events: list[dict[str, Any]] = []
    skipped: list[tuple[int, str]] = []
    # Split on newlines only: the writer keeps U+2028 and friends raw inside strings.
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            skipped.append((lineno, f"not UTF-8 text at byte {exc.start}"))
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError as exc:
            skipped.append((lineno, exc.msg))
            continue
        except RecursionError:
            skipped.append((lineno, "nested too deeply"))
            continue
        except ValueError as exc:  # e.g. an integer with too many digits
            skipped.append((lineno, str(exc).split(";")[0][:80]))
            continue
        why = _check_event(event) or (check(event) if check is not None else None)
        if why:
            skipped.append((lineno, why))
            continue
        events.append(event)
    return events, skipped


def _check_event(event: Any) -> str | None:
    if not isinstance(event, dict):
        return f"a JSON {type(event).__name__}, not an event object"
    if not isinstance(event.get("kind"), str):
        return "no string 'kind' field"
    if event.get("stage") is not None and not isinstance(event["stage"], str):
        return "'stage' is not a string"
    if _too_deep(event):
        return f"nested deeper than {_MAX_DEPTH} levels"
    return None


#: Trace events are flat records; anything deeper is not one of ours (and
#: drawing it could exhaust the stack).
_MAX_DEPTH = 32


def _too_deep(obj: Any) -> bool:
    stack = [(obj, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > _MAX_DEPTH:
            return True
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return False
