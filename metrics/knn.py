"""KNN distance (Struppek et al., ICML 2022, "Plug & Play Attacks"; Peng et al., KDD 2022).

For each reconstruction, the minimum squared L2 distance between its features and the features of
the private training images of its attacked identity; averaged over all reconstructions. Here the
features are the evaluation model's penultimate features (``knn_distance``); the FaceNet variant is
``facenet_distance`` (metrics/facenet.py), which shares :func:`feature_distance`.

A larger distance means the reconstructions are further from the private images: ``better`` is
"higher".
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from inversion_bench.errors import MetricUnavailableError
from inversion_bench.features import FeatureExtractor
from inversion_bench.interfaces import Metric, MetricContext, MetricResult, Reconstruction
from inversion_bench.metrics.extractors import extractor_plugin, provenance
from inversion_bench.metrics.feature_metric import private_features, reconstruction_features
from inversion_bench.record_model import MetricOutput
from inversion_bench.registry import PluginParams, metrics


def min_sq_distances(fake: Tensor, fake_labels: Tensor, real: Tensor, real_labels: Tensor) -> Tensor:
    """[N]: for each fake feature, the min squared L2 distance to real features of its label.

    Distances are computed exactly (float64, no ``|a|^2 + |b|^2 - 2ab`` shortcut), so identical
    features are at distance 0.

    Raises:
        MetricUnavailableError: when a label has no real sample.
    """
    out = torch.empty(fake.shape[0], dtype=torch.float64)
    for c in fake_labels.unique():
        fm = fake_labels == c
        rm = real_labels == c
        if not rm.any():
            raise MetricUnavailableError(f"no private training image of identity {int(c)} to compare with")
        d = torch.cdist(fake[fm].double(), real[rm].double(), compute_mode="donot_use_mm_for_euclid_dist")
        out[fm] = d.pow(2).min(dim=1).values
    return out


def feature_distance(rec: Reconstruction, ctx: MetricContext, extractor: FeatureExtractor,
                     metric: str) -> tuple[float, dict[str, Any]]:
    """Mean min squared L2 distance in ``extractor``'s space, and the details to record."""
    fake = reconstruction_features(ctx, extractor, rec, metric)
    real, real_labels = private_features(ctx, extractor, rec.labels.unique())
    d = min_sq_distances(fake, rec.labels, real, real_labels)
    details = {
        **provenance(extractor),
        "n_real": int(real.shape[0]),
        "n_fake": int(fake.shape[0]),
        "per_identity": {int(c): float(d[rec.labels == c].mean()) for c in rec.labels.unique()},
    }
    return float(d.mean()), details


def evaluation_extractor(ctx: MetricContext) -> FeatureExtractor:
    """The registered ``evaluation-model`` extractor for ``ctx``."""
    return extractor_plugin("evaluation-model").build(ctx)


@metrics.register("knn_distance")
class KNNDistance(Metric):
    """Mean min squared L2 distance to the attacked identity's private images (evaluation-model features)."""

    outputs = {"knn_distance": MetricOutput(better="higher", unit="distance", per_identity=True)}

    def __init__(self, params: PluginParams) -> None:
        super().__init__(params)
        self.plugin = extractor_plugin("evaluation-model")

    def extractor(self, ctx: MetricContext) -> FeatureExtractor:
        """The evaluation-model extractor (one object per metric instance and model)."""
        return self.plugin.build(ctx)

    def compute(self, rec: Reconstruction, ctx: MetricContext) -> MetricResult:
        value, details = feature_distance(rec, ctx, self.extractor(ctx), "knn_distance")
        per = details.pop("per_identity")
        return MetricResult(values={"knn_distance": value}, per_identity={"knn_distance": per},
                            details={"space": "evaluation-model penultimate features", **details})
