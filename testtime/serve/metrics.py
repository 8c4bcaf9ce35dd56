"""Prometheus metrics of one gateway process, written in the text exposition format.

Hand-written (no extra dependency): a few counters, one gauge, one
histogram. Labels are the model name the client asked for, the strategy
and the HTTP status -- never a key, a key hash or a prompt. Each worker
counts its own requests; with a shared store (``--workers N`` on SQLite or
Redis) every worker publishes :meth:`Metrics.snapshot` there
(:mod:`testtime.serve.shared_metrics`) and :meth:`Metrics.render` sums the
other workers' snapshots into its own, so any worker's ``/metrics`` is the
whole gateway's.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

#: Latency histogram bucket bounds in seconds.
BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                              120.0, 300.0)


Labels = tuple[tuple[str, str], ...]


def _rows(values: dict[Labels, float]) -> list[list[Any]]:
    return [[[list(p) for p in labels], v] for labels, v in values.items()]


def _key(raw: Any) -> Labels:
    return tuple((str(k), str(v)) for k, v in raw)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in pairs) + "}"


class Metrics:
    """The counters a gateway keeps; :meth:`render` gives the ``/metrics`` body."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[tuple[str, str], ...], float] = defaultdict(float)
        self.tokens: dict[tuple[tuple[str, str], ...], float] = defaultdict(float)
        self.usd: dict[tuple[tuple[str, str], ...], float] = defaultdict(float)
        self.refusals: dict[tuple[tuple[str, str], ...], float] = defaultdict(float)
        self.degraded = 0.0
        self.in_flight = 0
        self._hist: dict[tuple[tuple[str, str], ...], list[float]] = {}
        self._hist_sum: dict[tuple[tuple[str, str], ...], float] = defaultdict(float)
        self._hist_count: dict[tuple[tuple[str, str], ...], float] = defaultdict(float)
        #: Bumped on every change, so a publisher can skip writing an unchanged snapshot.
        self.changes = 0

    def started(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.changes += 1

    def finished(self, *, model: str, strategy: str, status: int, seconds: float,
                 input_tokens: int = 0, output_tokens: int = 0, usd: float = 0.0) -> None:
        """Count a finished request (every status, refusals included)."""
        base = (("model", model), ("strategy", strategy))
        with self._lock:
            self.in_flight -= 1
            self.changes += 1
            self.requests[(*base, ("status", str(status)))] += 1
            if input_tokens:
                self.tokens[(*base, ("kind", "input"))] += input_tokens
            if output_tokens:
                self.tokens[(*base, ("kind", "output"))] += output_tokens
            if usd:
                self.usd[base] += usd
            counts = self._hist.setdefault(base, [0.0] * len(BUCKETS))
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    counts[i] += 1
            self._hist_sum[base] += seconds
            self._hist_count[base] += 1

    def refused(self, reason: str, *, scope_kind: str = "", dimension: str = "") -> None:
        """Count a refusal: ``auth`` (401) or ``limit`` (429; scope kind key/global and dimension)."""
        labels: tuple[tuple[str, str], ...] = (("reason", reason),)
        if scope_kind:
            labels += (("scope", scope_kind),)
        if dimension:
            labels += (("dimension", dimension),)
        with self._lock:
            self.refusals[labels] += 1
            self.changes += 1

    def degrade(self) -> None:
        with self._lock:
            self.degraded += 1
            self.changes += 1

    def snapshot(self) -> dict[str, Any]:
        """Every counter as a JSON-able value (what a worker publishes to the shared store)."""
        with self._lock:
            return {
                "v": 1, "buckets": list(BUCKETS),
                "requests": _rows(self.requests), "tokens": _rows(self.tokens), "usd": _rows(self.usd),
                "refusals": _rows(self.refusals), "degraded": self.degraded, "in_flight": self.in_flight,
                "hist": [[[list(p) for p in labels], list(counts), self._hist_sum[labels],
                          self._hist_count[labels]] for labels, counts in self._hist.items()],
            }

    def _merged(self, others: Sequence[dict[str, Any]]) -> Metrics:
        """A new Metrics holding this one's counts plus ``others`` (snapshots), summed
        (histograms bucket by bucket; a snapshot with other bucket bounds is left out)."""
        total = Metrics()
        for snap in (self.snapshot(), *others):
            if snap.get("v") != 1 or list(snap.get("buckets", ())) != list(BUCKETS):
                continue
            for name in ("requests", "tokens", "usd", "refusals"):
                target = getattr(total, name)
                for labels, v in snap.get(name, ()):
                    target[_key(labels)] += float(v)
            total.degraded += float(snap.get("degraded", 0))
            total.in_flight += int(snap.get("in_flight", 0))
            for labels, counts, hsum, hcount in snap.get("hist", ()):
                key = _key(labels)
                acc = total._hist.setdefault(key, [0.0] * len(BUCKETS))
                for i, c in enumerate(counts):
                    acc[i] += float(c)
                total._hist_sum[key] += float(hsum)
                total._hist_count[key] += float(hcount)
        return total

    def render(self, others: Sequence[dict[str, Any]] | None = None, *, workers: int | None = None) -> str:
        """The Prometheus text format (version 0.0.4).

        Args:
            others: the other workers' snapshots (:meth:`snapshot`), summed into this one's counts
                (their ``in_flight`` should be zeroed by the caller when their snapshot is stale).
            workers: worker processes counted here; adds the ``testtime_workers`` gauge.
        """
        if others is not None:
            return self._merged(others).render(workers=workers)
        out: list[str] = []
        with self._lock:
            def family(name: str, kind: str, help_: str, values: dict[tuple[tuple[str, str], ...], float]) -> None:
                out.append(f"# HELP {name} {help_}")
                out.append(f"# TYPE {name} {kind}")
                for labels, v in sorted(values.items()):
                    out.append(f"{name}{_labels(labels)} {v:g}")

            family("testtime_requests_total", "counter", "Chat completion requests answered, by status.",
                   self.requests)
            family("testtime_tokens_total", "counter", "Tokens spent upstream (all samples, verifiers, PRMs).",
                   self.tokens)
            family("testtime_usd_total", "counter", "USD spent upstream.", self.usd)
            family("testtime_refusals_total", "counter", "Requests refused by auth (401) or a limit (429).",
                   self.refusals)
            family("testtime_degraded_total", "counter", "Requests run on less budget than they asked.",
                   {(): self.degraded})
            family("testtime_in_flight", "gauge", "Requests being served now.", {(): float(self.in_flight)})
            if workers is not None:
                family("testtime_workers", "gauge", "Worker processes whose counts are summed here "
                       "(live ones; the counts of workers gone are kept).", {(): float(workers)})
            name = "testtime_request_seconds"
            out.append(f"# HELP {name} Request latency in seconds.")
            out.append(f"# TYPE {name} histogram")
            for labels, counts in sorted(self._hist.items()):
                for bound, c in zip(BUCKETS, counts, strict=True):
                    out.append(f"{name}_bucket{_labels((*labels, ('le', f'{bound:g}')))} {c:g}")
                out.append(f"{name}_bucket{_labels((*labels, ('le', '+Inf')))} {self._hist_count[labels]:g}")
                out.append(f"{name}_sum{_labels(labels)} {self._hist_sum[labels]:.6f}")
                out.append(f"{name}_count{_labels(labels)} {self._hist_count[labels]:g}")
        return "\n".join(out) + "\n"
