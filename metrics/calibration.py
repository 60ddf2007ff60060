"""Calibration of the target: expected calibration error (ECE) on the private test images.

Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural Networks", ICML 2017, Eq. 3: the
top-1 confidences (largest softmax probability) are put into ``bins`` equal-width bins
(``((m-1)/M, m/M]``, M = 15 as in the paper), and

    ECE = sum over bins B of |B| / n * |accuracy(B) - mean confidence(B)|

(empty bins add nothing). 0 is perfectly calibrated.

Why here: label smoothing is known to improve calibration (Müller, Kornblith & Hinton, NeurIPS
2019), and Struppek et al. (ICLR 2024) contrast that benefit with its privacy cost; negative
smoothing makes the target over-confident. ECE is a utility property of the target, not a privacy
measure: direction ``lower`` means a better model, not a better defense. ``scope = "target"``.

The target is evaluated as trained (eval mode, no gradients), behind no output postprocessing: a
``PostprocessedClassifier`` is unwrapped, so the value describes the classifier's own softmax.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from inversion_bench.errors import MetricUnavailableError
from inversion_bench.interfaces import Metric, MetricContext, MetricResult, Reconstruction
from inversion_bench.registry import PluginParams, metrics


def expected_calibration_error(probs: Tensor, labels: Tensor, bins: int = 15) -> float:
    """ECE of class probabilities ``probs`` [N, C] (rows sum to 1) against ``labels`` [N].

    Bin m (1-based) holds the samples whose top-1 confidence lies in ((m-1)/bins, m/bins].
    """
    if probs.ndim != 2 or labels.shape != (probs.shape[0],) or probs.shape[0] == 0:
        raise ValueError(f"expected probs [N, C] and labels [N] with N > 0, got {tuple(probs.shape)} "
                         f"and {tuple(labels.shape)}")
    conf, pred = probs.detach().double().cpu().max(dim=1)
    correct = (pred == labels.cpu()).double()
    # bin index: ceil(conf * bins) - 1, so conf in ((m-1)/M, m/M] -> m-1; conf 0 (impossible for a softmax) -> 0
    idx = (torch.ceil(conf * bins).long() - 1).clamp(0, bins - 1)
    conf_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, conf)
    acc_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, correct)
    return float((acc_sum - conf_sum).abs().sum() / probs.shape[0])


@torch.no_grad()
def probabilities_on_test(ctx: MetricContext) -> tuple[Tensor, Tensor]:
    """Softmax of the (unwrapped) target on ``ctx.private_test``, in eval mode: ([N, C], [N])."""
    model = getattr(ctx.target, "classifier", ctx.target)  # behind a defense's postprocess
    was_training = model.training
    model.eval()
    try:
        probs = [torch.softmax(model(x.to(ctx.device)).float(), dim=1).cpu()
                 for x, _ in ctx.private_test.batches(ctx.batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(probs), ctx.private_test.labels


class CalibrationParams(PluginParams):
    bins: int = Field(15, ge=1, description="equal-width confidence bins (15 in Guo et al., 2017)")


@metrics.register("calibration")
class Calibration(Metric):
    """Expected calibration error (top-1, equal-width bins) of the target on the private test images."""

    Params = CalibrationParams
    better = {"ece": "lower"}
    scope = "target"

    def compute(self, rec: Reconstruction, ctx: MetricContext) -> MetricResult:
        if ctx.private_test is None or len(ctx.private_test) == 0:
            raise MetricUnavailableError("calibration: no private test images")
        probs, labels = probabilities_on_test(ctx)
        ece = expected_calibration_error(probs, labels, self.params.bins)
        conf = probs.max(dim=1).values
        details = {
            "n": int(labels.numel()), "bins": self.params.bins,
            "mean_confidence": float(conf.mean()),
            "accuracy": float((probs.argmax(dim=1) == labels).float().mean()),
        }
        return MetricResult(values={"ece": ece}, details=details)
