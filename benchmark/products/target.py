"""The target product: one classifier per (defense, seed), trained with the defense's hooks."""

from __future__ import annotations

from typing import Any

from torch import nn

from inversion_bench.config import entry_label
from inversion_bench.interfaces import Classifier, PostprocessedClassifier
from inversion_bench.products.classifier import train_or_load
from inversion_bench.registry import REGISTRIES
from inversion_bench.run_context import RunContext


def defense(ctx: RunContext, di: int) -> Any:
    """A fresh instance of defense ``di`` with its validated parameters (no state shared between
    the instance that trains a target and the one whose ``postprocess`` wraps it for an attack)."""
    return REGISTRIES["defenses"].get(ctx.suite.defenses[di].name)(ctx.loaded.defense_params[di])


def target(ctx: RunContext, di: int, seed: int) -> tuple[Classifier, dict[str, Any]]:
    """The target of defense ``di`` and ``seed`` with its training report (stored under
    ``plan.target_keys[(di, seed)]``; held in memory until released)."""
    k = (di, seed)
    held = ctx.held.target(k)
    if held is None:
        d = ctx.suite.defenses[di]
        held = train_or_load(ctx, "targets", ctx.plan.target_keys[k], ctx.suite.target.architecture,
                             ctx.loaded.target_arch_params, ctx.suite.target.training, d.checkpoint, seed,
                             desc=f"target {entry_label(d)} seed {seed}", defense=defense(ctx, di))
        ctx.held.hold_target(k, held)
    return held


def attacked_target(ctx: RunContext, di: int, seed: int) -> tuple[Classifier, dict[str, Any], nn.Module]:
    """(target, its training report, the target as attacks see it: behind the defense's postprocess)."""
    model, report = target(ctx, di, seed)
    d = defense(ctx, di)
    attacked = PostprocessedClassifier(model, d.postprocess) if d.has_postprocess else model
    return model, report, attacked


def known_test_accuracy(ctx: RunContext, di: int, seed: int) -> float | None:
    """The target's test accuracy when it was trained (held here or, by another worker, in the store)."""
    held = ctx.held.targets.get((di, seed))
    if held is not None:
        return float(held[1]["test_accuracy"])
    key = ctx.plan.target_keys[(di, seed)]
    if ctx.store.has("targets", key):
        value = ctx.store.load_meta("targets", key).get("test_accuracy")
        return float(value) if value is not None else None
    return None
