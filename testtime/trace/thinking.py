"""The thinking/answer split of a trace, summed over its ``thinking`` events.

A thinking generation (``testtime.thinking``) emits one ``thinking`` event
after its answer: ``{model, role, thinking_tokens, answer_tokens, forced,
notices, segments, ended, budget, thinking}``. :class:`ThinkingSummary`
adds them up for ``trace show``, the browser and the live view; a trace
without such events (older traces, models that do not think) sums to
nothing and nothing is printed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from testtime.trace.numbers import number


def _count(v: Any) -> int:
    """A token count from an event field (anything else counts as 0)."""
    return int(number(v) or 0)


@dataclass(slots=True)
class ThinkingSummary:
    """Sums of ``thinking`` events; :meth:`add` takes one event dict."""

    generations: int = 0
    thinking_tokens: int = 0
    answer_tokens: int = 0
    forced: int = 0
    notices: int = 0
    #: How each generation's thinking ended: ``model`` | ``budget`` | ``budget_left``.
    ended: Counter[str] = field(default_factory=Counter)

    def add(self, e: dict[str, Any]) -> None:
        self.generations += 1
        self.thinking_tokens += _count(e.get("thinking_tokens"))
        self.answer_tokens += _count(e.get("answer_tokens"))
        self.forced += _count(e.get("forced"))
        self.notices += _count(e.get("notices"))
        self.ended[str(e.get("ended") or "?")] += 1

    def __bool__(self) -> bool:
        return self.generations > 0

    @property
    def share(self) -> float:
        """Fraction of the generations' tokens spent thinking (0 when none)."""
        total = self.thinking_tokens + self.answer_tokens
        return self.thinking_tokens / total if total else 0.0

    def line(self) -> str:
        """``thinking: 12 generations, 4,800 thinking + 380 answer tokens (93% thinking); ended: budget 9, model 3; forced 2``."""
        out = (f"thinking: {self.generations} generation{'s' if self.generations != 1 else ''}, "
               f"{self.thinking_tokens:,} thinking + {self.answer_tokens:,} answer tokens "
               f"({self.share:.0%} thinking)")
        if self.ended:
            out += "; ended: " + ", ".join(f"{k} {v}" for k, v in self.ended.most_common())
        out += f"; forced {self.forced}"
        if self.notices:
            out += f"; notices {self.notices}"
        return out


def event_detail(e: dict[str, Any]) -> str:
    """A ``thinking`` event as the browser's detail pane shows it (the thinking text last)."""
    budget = e.get("budget") if isinstance(e.get("budget"), dict) else {}
    think, answer = _count(e.get("thinking_tokens")), _count(e.get("answer_tokens"))
    total = think + answer
    lines = [f"thinking generation of {e.get('role', '')} on {e.get('model', '')}",
             f"thinking tokens: {think:,}" + (f" of {_count(budget.get('thinking')):,}" if _count(budget.get("thinking")) else ""),
             f"answer tokens: {answer:,}" + (f" of {_count(budget.get('answer')):,}" if _count(budget.get("answer")) else ""),
             f"share thinking: {think / total:.0%}" if total else "share thinking: -",
             f"ended: {e.get('ended', '?')}  segments: {_count(e.get('segments'))}  "
             f"forced (Wait continuations): {_count(e.get('forced'))}  notices: {_count(e.get('notices'))}",
             "", "thinking (first 2000 characters):", str(e.get("thinking") or "")]
    return "\n".join(lines)
