"""Label smoothing as a training-time defense (and as an attack amplifier).

Struppek, Hintersdorf and Kersting, "Be Careful What You Smooth For: Label Smoothing Can Be a
Privacy Shield but Also a Catalyst for Model Inversion Attacks", ICLR 2024.

Smoothed targets ``y_LS = (1 - alpha) * y + alpha / C`` give the loss

    L = (1 - alpha) * NLL(y) + alpha * mean_k(-log p_k).

``alpha = 0`` is hard labels; ``alpha > 0`` is standard smoothing (identical to
``torch.nn.CrossEntropyLoss(label_smoothing=alpha)``); ``alpha < 0`` is negative smoothing, which
the paper trains with a warm-up: hard labels for the first half of training, then a linear ramp to
``alpha`` by three quarters of training, then ``alpha``.
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor

from inversion_bench.interfaces import Defense
from inversion_bench.registry import PluginParams, defenses


def smoothing_loss(logits: Tensor, targets: Tensor, alpha: float) -> Tensor:
    """Mean of ``(1 - alpha) * NLL(y) + alpha * mean_k(-log p_k)`` over the batch."""
    logp = F.log_softmax(logits, dim=1)
    nll = -logp.gather(1, targets.view(-1, 1)).squeeze(1)
    uniform = -logp.mean(dim=1)
    return ((1.0 - alpha) * nll + alpha * uniform).mean()


def warmup_alpha(alpha: float, progress: float, start: float = 0.5, end: float = 0.75) -> float:
    """The effective smoothing factor at ``progress`` (fraction of training done, in [0, 1]).

    0 before ``start``, a linear ramp from 0 to ``alpha`` between ``start`` and ``end``, then
    ``alpha``. With ``start == end`` the factor jumps to ``alpha`` at ``start``.
    """
    if progress < start:
        return 0.0
    if progress >= end:
        return alpha
    return alpha * (progress - start) / (end - start)


@defenses.register("label-smoothing", aliases=("label_smoothing",))
class LabelSmoothing(Defense):
    """Label smoothing with factor alpha; alpha < 0 is negative smoothing with the paper's warm-up."""

    class Params(PluginParams):
        alpha: float = Field(0.0, le=1.0, description="smoothing factor: 0 hard labels, > 0 smoothing, < 0 negative")
        warmup: bool | None = Field(
            None, description="ramp alpha in during training (default: on for alpha < 0, off otherwise)")
        warmup_start: float = Field(0.5, ge=0.0, le=1.0, description="fraction of training with alpha = 0")
        warmup_end: float = Field(0.75, ge=0.0, le=1.0, description="fraction of training where alpha is reached")

        @model_validator(mode="after")
        def _order(self):
            if self.warmup_end < self.warmup_start:
                raise ValueError(f"warmup_end ({self.warmup_end}) must be >= warmup_start ({self.warmup_start})")
            return self

    def alpha_at(self, progress: float) -> float:
        p = self.params
        use_warmup = p.warmup if p.warmup is not None else p.alpha < 0
        if not use_warmup:
            return p.alpha
        return warmup_alpha(p.alpha, progress, p.warmup_start, p.warmup_end)

    def criterion(self, logits: Tensor, targets: Tensor, progress: float) -> Tensor:
        return smoothing_loss(logits, targets, self.alpha_at(progress))
