"""The evaluation model product: a classifier of another architecture, trained once per suite on the
private data, that judges every attack (attack accuracy, feature-space metrics); and the optional
second evaluation model (``evaluation.second``), trained the same way, for ``evaluator_agreement``."""

from __future__ import annotations

from typing import Any

from inversion_bench.interfaces import Classifier
from inversion_bench.plan import SECOND_EVALUATOR_SEED, second_arch_params
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


def second_evaluator(ctx: RunContext) -> tuple[Classifier, dict[str, Any]] | None:
    """The second evaluation model and its report (stored under ``plan.second_evaluator_key`` with the
    evaluators; held once loaded), or None when the suite has no ``evaluation.second``."""
    second = ctx.suite.evaluation.second
    key = ctx.plan.second_evaluator_key
    if second is None or key is None:
        return None
    if ctx.held.second_evaluator is None:
        ctx.held.second_evaluator = train_or_load(ctx, "evaluators", key, second.architecture,
                                                  second_arch_params(ctx.loaded), second.training,
                                                  second.checkpoint, seed=SECOND_EVALUATOR_SEED,
                                                  desc="second evaluation model")
    return ctx.held.second_evaluator
