"""Graph rewrites as rules, and the manager that runs them over whole models.

What a caller or a third-party rule needs is exported here: the options, a rule's context and
verdicts (``Refusal``, ``Decision``), and the manager (``Pipeline``, ``Stage``, ``PassOutcome``).
The pipelines normonnx's own commands run are built in ``passes.registry``.
"""

from __future__ import annotations

from normonnx.passes.manager import PassOutcome, Pipeline, PipelineResult, Stage
from normonnx.passes.rules import NO_FAMILY, FoldOptions, NodePlan, PassContext, Plan, Refusal, Rule, run_rule
from normonnx.results import Decision

__all__ = [
    "NO_FAMILY",
    "Decision",
    "FoldOptions",
    "NodePlan",
    "PassContext",
    "PassOutcome",
    "Pipeline",
    "PipelineResult",
    "Plan",
    "Refusal",
    "Rule",
    "Stage",
    "run_rule",
]
