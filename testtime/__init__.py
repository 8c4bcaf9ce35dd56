"""testtime: agentic test-time scaling under one global budget.

Quick use::

    import testtime
    result = testtime.run("What is 17 * 23?", model="local", budget="tokens=4000")
    print(result.answer, result.usage)
"""

from typing import Any

from testtime.api import Result, arun, run
from testtime.budget import Budget, BudgetLedger, Reservation, Usage
from testtime.context import RunContext
from testtime.errors import (
    BudgetExhausted,
    CapabilityError,
    MissingDependency,
    ModelAPIError,
    TesttimeError,
    UserError,
)
from testtime.models import (
    FunctionModel,
    Generation,
    GenerationRequest,
    Model,
    Price,
    ScriptedModel,
    load_model,
    set_price,
)
from testtime.search import Candidate, Problem, SearchResult, SearchStrategy, make_strategy
from testtime.thinking import ThinkingModel, ThinkingPolicy, with_thinking
from testtime.trace import JsonlWriter, TraceEvent, Tracer
from testtime.verifiers import ProcessRewardModel, Verdict, Verifier, extract_answer

__version__ = "0.1.0"

# The orchestrator pulls in LangGraph; import it only when a name is used so
# `testtime run QUESTION` starts fast.
_LAZY = {"Route", "Stage", "Workflow", "WorkflowResult", "load_task"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from testtime import orchestrator

        return getattr(orchestrator, name)
    raise AttributeError(f"module 'testtime' has no attribute {name!r}")

__all__ = [
    "Budget", "BudgetExhausted", "BudgetLedger", "Candidate", "CapabilityError", "FunctionModel",
    "Generation", "GenerationRequest", "JsonlWriter", "MissingDependency", "Model", "ModelAPIError",
    "Price", "Problem", "ProcessRewardModel", "Reservation", "Result", "Route", "RunContext",
    "ScriptedModel", "Stage", "Workflow", "WorkflowResult", "load_task",
    "SearchResult", "SearchStrategy", "TesttimeError", "TraceEvent", "Tracer", "Usage", "UserError",
    "Verdict", "Verifier", "__version__", "arun", "extract_answer", "load_model", "make_strategy",
    "run", "set_price", "ThinkingModel", "ThinkingPolicy", "with_thinking",
]
