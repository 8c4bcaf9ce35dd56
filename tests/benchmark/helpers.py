"""Helpers for the benchmark tests: a math JSONL and models right with a known probability."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from testtime.benchmark.store import cell_key
from testtime.models.base import GenerationRequest
from testtime.models.scripted import FunctionModel

_Q = re.compile(r"What is (\d+) \+ (\d+)\?")


def write_math_jsonl(path: Path, n: int, *, seed: int = 0) -> Path:
    """``n`` addition problems ``{"id", "question", "answer"}``, one per line."""
    rng = random.Random(seed)
    with path.open("w") as fh:
        for i in range(n):
            a, b = rng.randrange(100, 1000), rng.randrange(100, 1000)
            fh.write(json.dumps({"id": f"add-{i}", "question": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n")
    return path


def coin_reply(request: GenerationRequest, p: float) -> str:
    """Right with probability ``p`` (decided by the request's seed); a distinct wrong answer otherwise."""
    a, b = map(int, _Q.search(request.prompt).groups())
    rng = random.Random(request.seed)
    right = rng.random() < p
    answer = a + b if right else a + b + 1 + rng.randrange(10_000)
    return f"Adding {a} and {b} step by step.\n\nThe answer is {answer}."


def coin_model(p: float, name: str = "coin") -> FunctionModel:
    """A model that answers ``What is A + B?`` correctly with probability ``p``."""
    return FunctionModel(lambda req: coin_reply(req, p), name=f"{name}-{p}")


def rows_without_timings(rows: list[dict]) -> list[dict]:
    """Store rows without their wall-clock fields, in cell order (for comparing two runs)."""
    out = []
    for r in rows:
        r = json.loads(json.dumps(r))
        r.pop("seconds")
        r["usage"].pop("seconds")
        out.append(r)
    return sorted(out, key=cell_key)
