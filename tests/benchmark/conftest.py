"""Fixtures for the benchmark tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchmark.helpers import write_math_jsonl


@pytest.fixture
def math_jsonl(tmp_path: Path) -> Path:
    """300 addition problems in a JSONL file."""
    return write_math_jsonl(tmp_path / "math.jsonl", 300)
