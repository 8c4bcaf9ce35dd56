"""Search strategies (one module each) behind one interface."""

from testtime.search.base import (
    Candidate,
    Problem,
    SearchResult,
    SearchStrategy,
    SearchTree,
    join_steps,
    prm_wants_logprobs,
    split_steps,
    vote,
)
from testtime.search.registry import STRATEGIES, available_strategies, make_strategy
from testtime.search.stream_watch import generate_watched, streams_deltas

__all__ = [
    "STRATEGIES", "Candidate", "Problem", "SearchResult", "SearchStrategy", "SearchTree",
    "available_strategies", "generate_watched", "join_steps", "make_strategy", "prm_wants_logprobs",
    "split_steps", "streams_deltas", "vote",
]
