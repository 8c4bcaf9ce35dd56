"""Outcome verifiers, generative verifiers and process reward models."""

from testtime.verifiers.answer import extract_answer, has_final_answer, normalize_answer
from testtime.verifiers.base import AGGREGATIONS, ProcessRewardModel, Verdict, Verifier, aggregate
from testtime.verifiers.registry import PRM_FORMS, VERIFIER_FORMS, load_prm, load_verifier

__all__ = [
    "AGGREGATIONS", "PRM_FORMS", "VERIFIER_FORMS", "ProcessRewardModel", "Verdict", "Verifier",
    "aggregate", "load_prm", "load_verifier",
    "extract_answer", "has_final_answer", "normalize_answer",
]
