"""Embedding separation: how tightly the target clusters the private identities in its feature space.

Struppek, Hintersdorf & Kersting (ICLR 2024, Sec. 4.2, Fig. 4) show t-SNE plots of the target's
penultimate-layer features of the private training images: positive label smoothing gives tight,
well separated identity clusters, negative label smoothing spread-out, overlapping ones; their
explanation of why positive smoothing helps attacks and negative smoothing hinders them. This
metric puts that picture into two numbers, computed on the target's penultimate features
(``Classifier.features``, the input of the classification head) of the private training images,
with Euclidean distances:

* ``silhouette`` (Rousseeuw, 1987): the mean over images of ``(b - a) / max(a, b)``, with ``a`` the
  mean distance to the other images of the same identity and ``b`` the smallest mean distance to the
  images of another identity (0 for an image that is alone in its identity), as
  ``sklearn.metrics.silhouette_score``. In [-1, 1]; higher = tighter, better separated clusters.
* ``intra_inter_ratio``: the mean distance over all pairs of distinct images of the same identity
  divided by the mean distance over all pairs of images of different identities. Lower = tighter
  clusters.

Directions (what the defender wants): following the paper's finding that tighter clusters go with
more successful attacks, a lower ``silhouette`` and a higher ``intra_inter_ratio`` count as better.
This is the paper's correlational claim, not a guarantee: the values describe the target alone
(``scope = "target"``), the same for every attack of a (defense, seed).

The distances are computed in row blocks (memory O(block x n)); above ``max_images`` images a random
subset (seeded with the pair's seed) is used.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from inversion_bench.data import LabeledImages
from inversion_bench.errors import MetricUnavailableError
from inversion_bench.interfaces import Metric, MetricContext, MetricResult, Reconstruction
from inversion_bench.registry import PluginParams, metrics


def class_distance_sums(features: Tensor, labels: Tensor, block: int = 1024) -> tuple[Tensor, Tensor]:
    """For every image, the sum of its Euclidean distances to the images of each class.

    Args:
        features: [N, D] feature vectors.
        labels: [N] class indices 0..C-1.
        block: rows of the distance matrix computed at once.

    Returns:
        ``sums`` [N, C] (float64; an image's distance to itself is 0, so it adds nothing) and
        ``counts`` [C], the number of images per class.
    """
    x = features.double()
    onehot = nn.functional.one_hot(labels.long(), int(labels.max()) + 1).double()
    sums = torch.cat([torch.cdist(x[i : i + block], x, compute_mode="donot_use_mm_for_euclid_dist") @ onehot
                      for i in range(0, x.shape[0], block)])
    return sums, onehot.sum(0)


def separation(features: Tensor, labels: Tensor, block: int = 1024) -> dict[str, float]:
    """``silhouette`` and ``intra_inter_ratio`` of ``features`` ([N, D]) grouped by ``labels`` ([N])."""
    _, labels = torch.unique(labels, return_inverse=True)
    n_classes = int(labels.max()) + 1 if labels.numel() else 0
    if n_classes < 2 or n_classes >= labels.numel():
        raise ValueError(f"separation needs 2 <= classes < images, got {n_classes} classes and "
                         f"{labels.numel()} images")
    sums, counts = class_distance_sums(features, labels, block)
    own = counts[labels]
    same = sums.gather(1, labels.view(-1, 1)).squeeze(1)
    a = same / (own - 1).clamp(min=1)
    means = sums / counts
    means.scatter_(1, labels.view(-1, 1), float("inf"))
    b = means.min(dim=1).values
    s = torch.where(own > 1, (b - a) / torch.maximum(a, b).clamp(min=1e-300), torch.zeros_like(a))
    intra_pairs = float((counts * (counts - 1)).sum())
    inter_pairs = float(labels.numel() ** 2 - (counts**2).sum())
    if intra_pairs == 0:
        raise ValueError("separation: no identity has two images, the intra-class distance is undefined")
    intra = float(same.sum()) / intra_pairs
    inter = float(sums.sum() - same.sum()) / inter_pairs
    return {"silhouette": float(s.mean()), "intra_inter_ratio": intra / inter if inter > 0 else float("nan")}


def unwrap(model: nn.Module) -> nn.Module:
    """The classifier behind a defense's output postprocessing (``PostprocessedClassifier``)."""
    return getattr(model, "classifier", model)


@torch.no_grad()
def penultimate_features(model: nn.Module, data: LabeledImages, positions: Tensor, ctx: MetricContext) -> Tensor:
    """``model.features`` of the images at ``positions`` of ``data`` in eval mode, loaded and run in
    batches of ``ctx.batch_size`` on ``ctx.device``; [N, D] on the CPU."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model.features(data.images(positions[i : i + ctx.batch_size]).to(ctx.device))
                          .float().flatten(1).cpu() for i in range(0, positions.numel(), ctx.batch_size)])
    finally:
        model.train(was_training)


class EmbeddingParams(PluginParams):
    max_images: int = Field(5000, ge=4, description="private training images used at most (random subset above)")


@metrics.register("embedding_separation")
class EmbeddingSeparation(Metric):
    """Silhouette and intra/inter-class distance ratio of the target's penultimate features of the
    private training images (Struppek et al., ICLR 2024, Sec. 4.2)."""

    Params = EmbeddingParams
    better = {"silhouette": "lower", "intra_inter_ratio": "higher"}
    scope = "target"

    def compute(self, rec: Reconstruction, ctx: MetricContext) -> MetricResult:
        model = unwrap(ctx.target)
        if not hasattr(model, "features"):
            raise MetricUnavailableError(f"embedding separation: the target ({type(model).__name__}) has no "
                                         "penultimate features (no features() method)")
        data = ctx.private_train
        n = len(data)
        if n > self.params.max_images:
            g = torch.Generator().manual_seed(ctx.seed)
            pos = torch.randperm(n, generator=g)[: self.params.max_images].sort().values
        else:
            pos = torch.arange(n)
        labels = data.labels[pos]
        feats = penultimate_features(model, data, pos, ctx)
        try:
            out = separation(feats, labels)
        except ValueError as exc:
            raise MetricUnavailableError(f"embedding separation: {exc}") from exc
        details = {
            "n_images": int(pos.numel()), "identities": int(labels.unique().numel()),
            "feature_dim": int(feats.shape[1]), "space": "target penultimate features, private training images",
        }
        return MetricResult(values=out, details=details)
