"""Online label smoothing (OLS): smoothing with soft labels learned from the model's own predictions.

Zhang, Jiang, Wang, Zhang, Zhang and Cheng, "Delving Deep into Label Smoothing", IEEE Transactions
on Image Processing 30, 2021 (arXiv:2011.12562). Reference code by the authors:
github.com/zhangchbin/OnlineLabelSmoothing at commit 7eaf70c8da7c68ba2170cbd88e0d918e86fa3f14
(``cifar/scripts/train_cifar_all_methods.py``, method ``ols``).

Why this one. It sits next to the fixed-factor smoothing of Struppek et al., ICLR 2024 ("Be
Careful What You Smooth For", ``label-smoothing``): instead of one uniform smoothing mass
``alpha / C``, each class gets its own learned soft label. A search for a robust, learned or
adaptive smoothing variant evaluated against model inversion with public code (2024-2026) found
none, so this is the closest well-known adaptive variant with the authors' code; it tests whether
the *shape* of the smoothing distribution (similar identities get mass) changes the leakage that
Struppek et al. found for positive smoothing.

The method. A soft-label matrix ``S`` ([C, C], row ``y`` the soft label of class ``y``) is fixed
during an epoch and the loss is

    L = hard_weight * CE(logits, y) + (1 - hard_weight) * sum_k S[y, k] * (-log p_k),

averaged over the batch. During the epoch, the softmax output of every *correctly classified*
training sample is added to row ``y`` of an accumulator; at the end of the epoch ``S[y]`` becomes
the mean of those outputs, or the uniform ``1 / C`` for a class without a correct sample. As in
the reference CIFAR script, ``S`` starts at zero (the first epoch trains with ``hard_weight * CE``
only) and ``hard_weight = 0.5``. The reference's fine-grained script differs (``S`` starts uniform,
both losses weighted 1, rows whose target mass reached 0.88 frozen, "not for ImageNet or CIFAR" in
its own comment); that variant is not implemented.

Outputs of auxiliary heads (Inception-v3) enter the loss but not the statistics: only the first
criterion call after each batch is drawn is accumulated.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from inversion_bench.interfaces import Classifier, Defense
from inversion_bench.registry import PluginParams, defenses
from inversion_bench.training import Trainer, iterate


def soft_label_loss(logits: Tensor, targets: Tensor, soft_labels: Tensor) -> Tensor:
    """Mean over the batch of ``sum_k soft_labels[y, k] * (-log softmax(logits)_k)``."""
    logp = F.log_softmax(logits, dim=1)
    return -(soft_labels[targets] * logp).sum(dim=1).mean()


def ols_loss(logits: Tensor, targets: Tensor, soft_labels: Tensor, hard_weight: float) -> Tensor:
    """``hard_weight * CE + (1 - hard_weight) * soft_label_loss``."""
    hard = F.cross_entropy(logits, targets)
    return hard_weight * hard + (1.0 - hard_weight) * soft_label_loss(logits, targets, soft_labels)


def accumulate_correct(logits: Tensor, targets: Tensor, sums: Tensor, counts: Tensor) -> None:
    """Adds the softmax output of each correctly classified sample to row ``y`` of ``sums`` and 1
    to ``counts[y]`` (in place, no gradient)."""
    with torch.no_grad():
        probs = torch.softmax(logits.float(), dim=1)
        right = probs.argmax(dim=1) == targets
        sums.index_add_(0, targets[right], probs[right].to(sums.dtype))
        counts.index_add_(0, targets[right], torch.ones_like(targets[right], dtype=counts.dtype))


def updated_soft_labels(sums: Tensor, counts: Tensor) -> Tensor:
    """The next epoch's [C, C] soft labels: ``sums[y] / counts[y]``, uniform for classes with count 0."""
    c = sums.shape[0]
    uniform = torch.full_like(sums, 1.0 / c)
    seen = counts.view(-1, 1) > 0
    return torch.where(seen, sums / counts.clamp_min(1).view(-1, 1), uniform)


@defenses.register("online-label-smoothing", aliases=("online_label_smoothing",))
class OnlineLabelSmoothing(Defense):
    """Online label smoothing (Zhang et al., IEEE TIP 2021): per-class soft labels learned from correct predictions."""

    class Params(PluginParams):
        hard_weight: float = Field(
            0.5, ge=0.0, le=1.0, description="weight of the hard-label cross-entropy (the rest: the soft labels)")

    def __init__(self, params: PluginParams) -> None:
        super().__init__(params)
        self._soft: Tensor | None = None
        self._sums: Tensor | None = None
        self._counts: Tensor | None = None
        self._fresh_batch = False
        self._seconds = 0.0

    def _state(self, num_classes: int, device: torch.device) -> None:
        if self._soft is None:
            self._soft = torch.zeros(num_classes, num_classes, device=device)
            self._sums = torch.zeros_like(self._soft)
            self._counts = torch.zeros(num_classes, device=device)

    def end_epoch(self) -> None:
        """Turns the epoch's statistics into the soft labels of the next epoch and resets them."""
        if self._soft is None:
            return
        self._soft = updated_soft_labels(self._sums, self._counts)
        self._sums.zero_()
        self._counts.zero_()

    def criterion(self, logits: Tensor, targets: Tensor, progress: float) -> Tensor:
        self._state(logits.shape[1], logits.device)
        if self._fresh_batch:
            t0 = time.perf_counter()
            accumulate_correct(logits, targets, self._sums, self._counts)
            self._fresh_batch = False
            self._seconds += time.perf_counter() - t0
        return ols_loss(logits, targets, self._soft, self.params.hard_weight)

    def fit(self, model: Classifier, trainer: Trainer) -> Classifier:
        r, s = trainer.recipe, trainer.settings

        def batches(epoch: int, g: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
            if epoch > 0:
                self.end_epoch()
            # the trainer's own default batches (same shuffling), marking each new batch
            for batch in iterate(trainer.train, r.batch_size, shuffle=True, g=g, workers=r.workers,
                                 pin_memory=s.device.type == "cuda"):
                self._fresh_batch = True
                yield batch

        trainer.fit(model, self.criterion, batches=batches)
        return model

    def report(self) -> dict[str, float]:
        if self._soft is None:
            return {}
        diag = torch.diagonal(self._soft)
        return {"ols_target_mass": float(diag.mean()), "ols_seconds": self._seconds,
                "extra_parameters": 0, "soft_label_entries": int(self._soft.numel())}
