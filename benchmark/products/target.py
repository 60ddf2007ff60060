"""The target product: one classifier per (defense, seed), trained with the defense's hooks."""

from __future__ import annotations

from typing import Any

from torch import nn

from inversion_bench.interfaces import Classifier, PostprocessedClassifier
from inversion_bench.products.classifier import train_or_load
from inversion_bench.run_context import RunContext


def target(ctx: RunContext, defense: str, seed: int) -> tuple[Classifier, dict[str, Any]]:
    """The target of the defense entry ``defense`` (its id) and ``seed`` with its training report (stored
    under ``plan.target_keys[(defense, seed)]``; held in memory until released)."""
    k = (defense, seed)
    held = ctx.held.target(k)
    if held is None:
        d = ctx.loaded.defenses[defense]
        # a fresh defense instance: no state shared with the one whose postprocess wraps the target for an attack
        held = train_or_load(ctx, "targets", ctx.plan.target_keys[k], ctx.suite.target.architecture,
                             ctx.loaded.target_arch_params, ctx.suite.target.training, d.checkpoint, seed,
                             desc=f"target {d.label} seed {seed}", defense=d.build())
        ctx.held.hold_target(k, held)
    return held


def attacked_target(ctx: RunContext, defense: str, seed: int) -> tuple[Classifier, dict[str, Any], nn.Module]:
    """(target, its training report, the target as attacks see it: behind the defense's postprocess)."""
    model, report = target(ctx, defense, seed)
    d = ctx.loaded.defenses[defense].build()
    d.bind(model)
    attacked = PostprocessedClassifier(model, d.postprocess) if d.has_postprocess else model
    return model, report, attacked


def known_test_accuracy(ctx: RunContext, defense: str, seed: int) -> float | None:
    """The target's test accuracy when it was trained (held here or, by another worker, in the store)."""
    held = ctx.held.targets.get((defense, seed))
    if held is not None:
        return float(held[1]["test_accuracy"])
    key = ctx.plan.target_keys[(defense, seed)]
    if ctx.store.has("targets", key):
        value = ctx.store.load_meta("targets", key).get("test_accuracy")
        return float(value) if value is not None else None
    return None
