"""Outcome verifiers, generative verifiers and process reward models."""

from testtime.verifiers.answer import extract_answer, has_final_answer, normalize_answer
from testtime.verifiers.base import AGGREGATIONS, ProcessRewardModel, Verdict, Verifier, aggregate

__all__ = [
    "AGGREGATIONS", "ProcessRewardModel", "Verdict", "Verifier", "aggregate",
    "extract_answer", "has_final_answer", "normalize_answer",
]
