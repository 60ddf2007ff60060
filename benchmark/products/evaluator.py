"""The evaluation model product: a classifier of another architecture, trained once per suite on the
private data, that judges every attack (attack accuracy, feature-space metrics)."""

from __future__ import annotations

from typing import Any

from inversion_bench.interfaces import Classifier
from inversion_bench.products.classifier import train_or_load
from inversion_bench.run_context import RunContext


def evaluator(ctx: RunContext) -> tuple[Classifier, dict[str, Any]]:
    """The evaluation model and its report (stored under ``plan.evaluator_key``; held once loaded)."""
    if ctx.held.evaluator is None:
        ev = ctx.suite.evaluation
        ctx.held.evaluator = train_or_load(ctx, "evaluators", ctx.plan.evaluator_key, ev.architecture,
                                           ctx.loaded.eval_arch_params, ev.training, ev.checkpoint,
                                           seed=0, desc="evaluation model")
    return ctx.held.evaluator
