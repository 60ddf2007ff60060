"""The evaluation model's audit: how often it accepts real images of somebody else (issue 14).

Attack accuracy counts a reconstruction as a success when the evaluation model's top-1 class is the
attacked identity. Ho et al. (arXiv 2505.03519) show that this rule produces many false positives:
the evaluation model never answers "nobody", so every image is accepted as *some* identity. The
audit feeds the evaluation model real images that are *not* the claimed identity, exactly as
reconstructions are fed (:func:`inversion_bench.metrics.accuracy.model_logits`, same batches,
device and eval mode; top-1 as in ``topk_hits(logits, labels, 1)``), and reports per impostor set:

``false_acceptance``
    the share of impostor images accepted as an identity they are not (top-1 != own label). For
    ``public`` images (identities the evaluation model never saw) every top-1 is a private identity,
    so under the top-1 rule this is 1.0 *by construction*: the rule never rejects.
``impostor_acc@1``
    the attack accuracy that a "reconstruction" which is a real face of somebody else scores: the
    mean over claimed identities ``c`` of the share of impostor images for ``c`` (images not of
    ``c``) with top-1 ``c``; directly comparable to an attack's ``attack_acc@1``. For ``public``
    images this is exactly ``1 / C`` under the top-1 rule (each image is accepted by exactly one of
    the ``C`` identities): chance level, the floor an attack must clear to show anything.
``impostor_acc@1_max`` (and ``impostor_acc@1_max_identity``)
    the highest per-identity impostor acceptance and its identity: where real strangers land most.
    Unlike the public set's mean, it is not fixed by the rule; an attack on that identity gets that
    much attack accuracy for free.

Impostor sets: ``private_other`` (the private test images, held out from the evaluation model's
training; each is an impostor for every identity other than its own) and ``public`` (real images
of the public identities, never in its training). Each set is capped at :data:`MAX_IMAGES` images
(a fixed random subset). The audit is computed once per evaluation model and stored under
``audits/<audit_key>`` (the evaluation model's key and :data:`AUDIT_VERSION`), so reruns are free.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from inversion_bench.data import LabeledImages
from inversion_bench.data.splits import Splits
from inversion_bench.metrics.accuracy import model_logits
from inversion_bench.products.data import splits
from inversion_bench.products.evaluator import evaluator, second_evaluator
from inversion_bench.run_context import RunContext
from inversion_bench.store import content_key

AUDIT_VERSION = "2"
"""Bump when the audit's definition changes (enters the store key)."""
MAX_IMAGES = 10_000
"""At most this many images per impostor set (a fixed random subset of larger sets)."""
AUDIT_SETS = ("private_other", "public")
NOT_PRIVATE = -1
"""The label of an image of no private identity (the public set)."""
_SUBSET_SEED = 0


def top1(logits: Tensor) -> Tensor:
    """The accepted identity per image: the top-1 class, the rule of ``attack_acc@1`` (``topk_hits``)."""
    return logits.topk(1, dim=1).indices[:, 0]


def false_acceptance_of(pred: Tensor, labels: Tensor) -> float | None:
    """The share of images whose accepted identity ``pred`` is not their own ``labels`` (None when empty).

    ``labels`` holds :data:`NOT_PRIVATE` for images of no private identity: those are always accepted
    as somebody they are not.
    """
    if labels.numel() == 0:
        return None
    return float((pred != labels).double().mean())


def impostor_rates(pred: Tensor, labels: Tensor, num_classes: int) -> Tensor | None:
    """Per claimed identity ``c`` [C]: the share of images not of ``c`` that are accepted as ``c``
    (NaN for identities without any impostor image; None when no identity has one)."""
    n = labels.numel()
    if n == 0:
        return None
    pred, labels = pred.long().cpu(), labels.long().cpu()

    def count(x: Tensor) -> Tensor:  # images per identity 0..C-1
        return torch.bincount(x[(x >= 0) & (x < num_classes)], minlength=num_classes)

    accepted = count(pred) - count(pred[pred == labels])  # accepted as c while not of c
    impostors = n - count(labels)
    if not bool((impostors > 0).any()):
        return None
    rates = accepted.double() / impostors.double().clamp_min(1)
    return torch.where(impostors > 0, rates, torch.full_like(rates, float("nan")))


def impostor_acc1_of(pred: Tensor, labels: Tensor, num_classes: int) -> float | None:
    """The mean over claimed identities ``c`` of the share of images not of ``c`` that are accepted as
    ``c`` (identities without any impostor image are left out; None when none has one)."""
    rates = impostor_rates(pred, labels, num_classes)
    return None if rates is None else float(rates[~rates.isnan()].mean())


def impostor_acc1_max_of(pred: Tensor, labels: Tensor, num_classes: int) -> tuple[float, int] | None:
    """(the highest per-identity impostor acceptance, that identity): the identity real strangers land
    on most. Under the top-1 rule the *mean* over identities of the public set is fixed (1/C); how
    unevenly the acceptances fall is not, and an attack on this identity gets that much for free."""
    rates = impostor_rates(pred, labels, num_classes)
    if rates is None:
        return None
    rates = torch.nan_to_num(rates, nan=-1.0)
    c = int(rates.argmax())
    return float(rates[c]), c


def false_acceptance(logits: Tensor, labels: Tensor) -> float | None:
    """:func:`false_acceptance_of` the top-1 decisions of ``logits`` [N, C]."""
    return false_acceptance_of(top1(logits), labels)


def impostor_acc1(logits: Tensor, labels: Tensor) -> float | None:
    """:func:`impostor_acc1_of` the top-1 decisions of ``logits`` [N, C] (C claimable identities)."""
    return impostor_acc1_of(top1(logits), labels, int(logits.shape[1]))


def set_scores(pred: Tensor, labels: Tensor, num_classes: int) -> dict[str, Any]:
    """The record's numbers of one impostor set: ``images``, ``false_acceptance``, ``impostor_acc@1``."""
    worst = impostor_acc1_max_of(pred, labels, num_classes)
    return {"images": int(labels.numel()), "false_acceptance": false_acceptance_of(pred, labels),
            "impostor_acc@1": impostor_acc1_of(pred, labels, num_classes),
            "impostor_acc@1_max": worst[0] if worst else None,
            "impostor_acc@1_max_identity": worst[1] if worst else None}


def _subset(n: int, cap: int) -> Tensor:
    if n <= cap:
        return torch.arange(n)
    g = torch.Generator().manual_seed(_SUBSET_SEED)
    return torch.randperm(n, generator=g)[:cap].sort().values


def predictions(model: nn.Module, part: LabeledImages, positions: Tensor, device: torch.device,
                batch_size: int) -> Tensor:
    """The top-1 identity of ``part``'s images at ``positions``, read a few batches at a time."""
    chunk = max(batch_size, 1) * 4
    out = [top1(model_logits(model, part.images(positions[i : i + chunk]), device, batch_size))
           for i in range(0, positions.numel(), chunk)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def audit_model(model: nn.Module, data: Splits, device: torch.device, batch_size: int,
                max_images: int = MAX_IMAGES) -> dict[str, Any]:
    """Both impostor sets' scores of the evaluation model ``model`` on the splits ``data``."""
    out: dict[str, Any] = {"num_classes": data.num_classes}
    for name, part in (("private_other", data.private_test), ("public", data.public)):
        pos = _subset(len(part), max_images)
        pred = predictions(model, part, pos, device, batch_size)
        labels = part.labels[pos] if name == "private_other" else torch.full((pos.numel(),), NOT_PRIVATE)
        out[name] = set_scores(pred, labels, data.num_classes)
    return out


def audit_key(ctx: RunContext) -> str:
    """The store key of the audit of the run's evaluation model."""
    return content_key({"job": "audit", "evaluator": ctx.plan.evaluator_key, "version": AUDIT_VERSION,
                        "max_images": MAX_IMAGES})


def _read_audit(path: Path) -> dict[str, Any]:
    result = json.loads((path / "audit.json").read_text(encoding="utf-8"))
    missing = [name for name in AUDIT_SETS if not isinstance(result.get(name), dict)]
    if missing:
        raise ValueError(f"audit.json lacks {missing}")
    return result


def audit(ctx: RunContext) -> dict[str, Any] | None:
    """The evaluation model's audit (computed once, stored under ``audits/<audit_key>``, held once
    loaded); None when the suite turns it off (``evaluation.audit: false``)."""
    if not ctx.suite.evaluation.audit:
        return None
    if ctx.held.audit is None:
        key = audit_key(ctx)
        result = ctx.store.load("audits", key, _read_audit)  # None: absent, or damaged and quarantined
        if result is None:
            model, _ = evaluator(ctx)
            result = audit_model(model, splits(ctx), ctx.device, ctx.suite.run.eval_batch_size)
            result.update(version=AUDIT_VERSION, evaluator=ctx.plan.evaluator_key, max_images=MAX_IMAGES)
            with ctx.store.writing("audits", key) as tmp:
                (tmp / "audit.json").write_text(json.dumps(result, indent=2, sort_keys=True), encoding="utf-8")
        ctx.held.audit = result
    return ctx.held.audit


def evaluator_summary(ctx: RunContext) -> dict[str, Any]:
    """The record's ``evaluator`` block: test accuracy and architecture, the audit (unless turned
    off) and, with ``evaluation.second``, the second evaluation model's architecture and test accuracy."""
    _, report = evaluator(ctx)
    out: dict[str, Any] = {"test_accuracy": report["test_accuracy"],
                           "architecture": ctx.suite.evaluation.architecture.name}
    result = audit(ctx)
    if result is not None:
        keys = ("images", "false_acceptance", "impostor_acc@1", "impostor_acc@1_max", "impostor_acc@1_max_identity")
        out["audit"] = {name: {k: result[name][k] for k in keys}
                        for name in AUDIT_SETS}
    second = second_evaluator(ctx)
    if second is not None and ctx.suite.evaluation.second is not None:
        out["second"] = {"architecture": ctx.suite.evaluation.second.architecture.name,
                         "test_accuracy": second[1]["test_accuracy"]}
    return out
