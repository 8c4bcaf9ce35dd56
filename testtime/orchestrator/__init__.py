"""testtime.orchestrator: LangGraph workflows of solvers, verifiers and PRMs under one budget.

Public names: :class:`Workflow` (builder, ``arun`` / ``run`` / ``astream``),
:class:`Stage`, :class:`Route`, :class:`WorkflowResult`, :func:`load_task`
(YAML task files), :func:`default_checkpoint_path`.
"""

from testtime.orchestrator.checkpoint import default_checkpoint_path
from testtime.orchestrator.definition import END, Route, Stage, parse_condition
from testtime.orchestrator.taskfile import load_task, parse_task
from testtime.orchestrator.workflow import Workflow, WorkflowResult

__all__ = ["END", "Route", "Stage", "Workflow", "WorkflowResult", "default_checkpoint_path", "load_task",
           "parse_condition", "parse_task"]
