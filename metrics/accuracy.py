"""Attack accuracy and target test accuracy.

Attack accuracy (Zhang et al., CVPR 2020; Struppek et al., ICML 2022): the fraction of
reconstructions that a separate evaluation model, trained on the same private data, assigns to the
attacked identity (top-1 and top-5); an attacked identity the attack returned no image for counts
as a miss. A separate model is essential: attacks overfit the target
(finding 3: pixel-space attacks reach 100 % target confidence and ~12 % evaluation accuracy).
"""

from __future__ import annotations

import torch
from torch import Tensor

from inversion_bench.errors import MetricUnavailableError
from inversion_bench.interfaces import Metric, MetricContext, MetricResult, Reconstruction
from inversion_bench.record_model import MetricOutput
from inversion_bench.registry import metrics


def topk_hits(logits: Tensor, labels: Tensor, k: int) -> Tensor:
    """Bool [N]: whether ``labels[i]`` is among the ``k`` largest ``logits[i]``."""
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels.view(-1, 1)).any(dim=1)


def per_identity_mean(values: Tensor, labels: Tensor) -> dict[int, float]:
    return {int(c): float(values[labels == c].float().mean()) for c in labels.unique()}


def accuracy_over_attacked(hits: Tensor, labels: Tensor, attacked: int) -> float:
    """The share of hits, counting an attacked identity without any image as a miss.

    When every attacked identity has images this is the plain mean over images. When an attack
    returns nothing for some identities (e.g. BREP-MI's initial search never hit them), it is the
    mean over attacked identities of each identity's accuracy, 0 for the missing ones, so an attack
    cannot raise its accuracy by leaving identities out.
    """
    present = int(labels.unique().numel())
    if attacked <= present:
        return float(hits.float().mean())
    return sum(per_identity_mean(hits, labels).values()) / attacked


@torch.no_grad()
def model_logits(model: torch.nn.Module, images: Tensor, device: torch.device, batch_size: int) -> Tensor:
    """``model``'s float logits of ``images`` on the CPU, in eval mode, ``batch_size`` images at a time on
    ``device``: the one path every judge of reconstructions (and the evaluation model's audit) takes."""
    model.eval()
    outs = [model(images[i : i + batch_size].to(device)).float().cpu() for i in range(0, images.shape[0], batch_size)]
    return torch.cat(outs)


def evaluation_logits(ctx: MetricContext, images: Tensor) -> Tensor:
    """The evaluation model's logits of ``images`` (:func:`model_logits` with the metric context's settings)."""
    return model_logits(ctx.evaluation_model, images, ctx.device, ctx.batch_size)


@metrics.register("attack_accuracy")
class AttackAccuracy(Metric):
    """Top-1 and top-5 accuracy of the evaluation model on the reconstructions."""

    outputs = {"attack_acc@1": MetricOutput(better="lower", unit="share", per_identity=True, label="attack accuracy"),
               "attack_acc@5": MetricOutput(better="lower", unit="share", per_identity=True,
                                            label="top-5 attack accuracy")}

    def compute(self, rec: Reconstruction, ctx: MetricContext) -> MetricResult:
        if rec.images.shape[0] == 0:
            raise MetricUnavailableError("attack accuracy: the attack returned no images")
        logits = evaluation_logits(ctx, rec.images)
        hits1, hits5 = topk_hits(logits, rec.labels, 1), topk_hits(logits, rec.labels, 5)
        present = int(rec.labels.unique().numel())
        attacked = max(int(rec.info.get("identities", present)), present)
        per1, per5 = per_identity_mean(hits1, rec.labels), per_identity_mean(hits5, rec.labels)
        for c in ctx.attacked:  # an attacked identity without images is a miss (0) in the per-identity values
            per1.setdefault(int(c), 0.0)
            per5.setdefault(int(c), 0.0)
        details = {"n": int(rec.images.shape[0]), "identities_attacked": attacked,
                   "identities_without_images": attacked - present}
        return MetricResult(values={"attack_acc@1": accuracy_over_attacked(hits1, rec.labels, attacked),
                                    "attack_acc@5": accuracy_over_attacked(hits5, rec.labels, attacked)},
                            per_identity={"attack_acc@1": per1, "attack_acc@5": per5}, details=details)


@metrics.register("test_accuracy")
class TestAccuracy(Metric):
    """The target's accuracy on the private test images (its utility; higher is better)."""

    __test__ = False  # not a pytest test class
    outputs = {"test_accuracy": MetricOutput(better="higher", unit="share", label="test accuracy")}
    scope = "target"

    def compute(self, rec: Reconstruction, ctx: MetricContext) -> MetricResult:
        if "test_accuracy" not in ctx.target_report:
            raise MetricUnavailableError("test accuracy: the target has no recorded test accuracy")
        return MetricResult(values={"test_accuracy": float(ctx.target_report["test_accuracy"])})
