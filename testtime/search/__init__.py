"""Search strategies (one module each) behind one interface."""

from testtime.search.base import (
    Candidate,
    Problem,
    SearchResult,
    SearchStrategy,
    SearchTree,
    join_steps,
    split_steps,
    vote,
)
from testtime.search.registry import STRATEGIES, available_strategies, make_strategy

__all__ = [
    "STRATEGIES", "Candidate", "Problem", "SearchResult", "SearchStrategy", "SearchTree",
    "available_strategies", "join_steps", "make_strategy", "split_steps", "vote",
]
