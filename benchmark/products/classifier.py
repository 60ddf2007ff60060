"""Training or loading a classifier product (the evaluation model and every target share this)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from inversion_bench.checkpoints import CheckpointRef, as_ref, checkpoint_json, load_into
from inversion_bench.interfaces import Classifier
from inversion_bench.products.data import splits
from inversion_bench.registry import REGISTRIES
from inversion_bench.run_context import RunContext
from inversion_bench.training import Trainer, accuracy, predict_logits


def load_checkpoint(ctx: RunContext, model: Classifier, ref: str | CheckpointRef, arch_name: str) -> None:
    """Loads the checkpoint ``ref`` (a suite path, or path and format) into ``model`` of architecture
    ``arch_name``, every key and shape checked (:func:`inversion_bench.checkpoints.load_into`)."""
    cref = as_ref(ref)
    arch = REGISTRIES["architectures"].get(arch_name)
    load_into(model, ctx.resolve_path(cref.path), cref.format, arch_name, arch.checkpoint_prefixes, arch.mibench_name)


def _build(ctx: RunContext, arch: Any, arch_params: Any, defense: Any) -> Classifier:
    cls = REGISTRIES["architectures"].get(arch.name)
    model = cls(arch_params).build(splits(ctx).num_classes, ctx.suite.dataset.resolution, ctx.weights)
    return defense.configure_model(model) if defense is not None else model


def _checkpoint_report(ctx: RunContext, model: Classifier, checkpoint: str | CheckpointRef,
                       arch_name: str) -> dict[str, Any]:
    """Loads ``checkpoint`` and measures it on the private test split (nothing is trained)."""
    test = splits(ctx).private_test
    load_checkpoint(ctx, model, checkpoint, arch_name)
    model.to(ctx.device)
    logits = predict_logits(model, test, ctx.settings)
    return {"test_accuracy": accuracy(logits, test.labels), "checkpoint": checkpoint_json(checkpoint),
            "logit_std": float(logits.std(dim=1).mean())}


def _train_report(ctx: RunContext, model: Classifier, recipe: Any, seed: int, desc: str,
                  defense: Any) -> dict[str, Any]:
    """Trains ``model`` on the private train split (through ``defense`` when given)."""
    sp = splits(ctx)
    trainer = Trainer(recipe, sp.private_train, sp.private_test, ctx.settings, seed, desc=desc, public=sp.public)
    if defense is not None:
        defense.fit(model, trainer)
        result = trainer.result
    else:
        result = trainer.fit(model, lambda lo, y, pr: torch.nn.functional.cross_entropy(lo, y))
    report = {"test_accuracy": result.test_accuracy, "train_accuracy": result.train_accuracy,
              "logit_std": result.logit_std, "images_per_second": result.images_per_second,
              "history": result.history}
    if defense is not None:
        report.update(defense.report())
    return report


def _load_stored(model: Classifier, path: Path) -> dict[str, Any]:
    """Loads the stored state of ``path`` into ``model``; returns its report (any failure: corrupt)."""
    state = torch.load(path / "data.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state["state_dict"])
    return dict(state["report"])


def train_or_load(ctx: RunContext, kind: str, key: str, arch: Any, arch_params: Any, recipe: Any,
                  checkpoint: str | CheckpointRef | None, seed: int, desc: str,
                  defense: Any = None) -> tuple[Classifier, dict]:
    """The classifier stored under ``(kind, key)``; trained (or read from ``checkpoint``) and stored when absent.

    Returns the model on the run's device in eval mode (``cache_key`` set to ``key``) and its
    report (test accuracy, training history, the defense's report, seconds). A stored classifier that
    cannot be read is quarantined by the store and trained again.
    """
    loaded = None
    if ctx.store.has(kind, key):
        model = _build(ctx, arch, arch_params, defense)
        loaded = ctx.store.load(kind, key, lambda path: _load_stored(model, path))  # None: quarantined
    if loaded is not None:
        report = loaded
    else:
        torch.manual_seed(seed)
        model = _build(ctx, arch, arch_params, defense)
        t0 = time.perf_counter()
        if checkpoint is not None:
            report = _checkpoint_report(ctx, model, checkpoint, arch.name)
        else:
            report = _train_report(ctx, model, recipe, seed, desc, defense)
        if defense is not None:  # after training or the checkpoint, before storing: what postprocess needs
            report.update(defense.calibrate(model, splits(ctx).private_test, ctx.settings))
        report["seconds"] = time.perf_counter() - t0
        report.update(ctx.compute_setting())
        ctx.store.save_torch(kind, key, {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                                         "report": report},
                             meta={"desc": desc, "test_accuracy": report["test_accuracy"]})
    model.to(ctx.device).eval()
    model.cache_key = key
    return model, report
