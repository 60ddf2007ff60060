"""Metrics in a chosen feature space: the base :class:`FeatureMetric` and the feature helpers.

:class:`FeatureMetric` is the base of metrics that take an ``extractor`` parameter (FID, PRDC,
...): it resolves the extractor plugin (see :mod:`~inversion_bench.metrics.extractors`) and reports
the weights it needs. :func:`private_features` and :func:`reconstruction_features` compute the
features of the attacked identities' private images and of the reconstructions.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import torch
from pydantic import Field, model_validator
from torch import Tensor

from inversion_bench.errors import MetricUnavailableError
from inversion_bench.features import FeatureExtractor
from inversion_bench.interfaces import Metric, MetricContext, Reconstruction
from inversion_bench.metrics.extractors import ExtractorPlugin, KeyedExtractor, extractor_plugin
from inversion_bench.registry import PluginParams


class ExtractorParams(PluginParams):
    """Parameters of a metric computed in a chosen feature space."""

    extractor: str = Field("evaluation-model", description="feature space: evaluation-model, inception, "
                                                           "facenet or another registered extractor")
    weights: str | None = Field(None, description="name in the suite's weights: section of the extractor's "
                                                  "weights (default: fid_inception / facenet)")

    @model_validator(mode="after")
    def _known_extractor(self) -> ExtractorParams:
        extractor_plugin(self.extractor, self.weights)
        return self


class FeatureMetric(Metric):
    """Base of metrics with an ``extractor`` parameter: resolves it and reports its weights."""

    Params: ClassVar[type[PluginParams]] = ExtractorParams

    def __init__(self, params: PluginParams) -> None:
        super().__init__(params)
        self.plugin = self._make_plugin()

    def _make_plugin(self) -> ExtractorPlugin:
        return extractor_plugin(self.params.extractor, self.params.weights)

    def required_weights(self) -> dict[str, str]:
        return self.plugin.required_weights()

    def missing(self, weights: Mapping[str, Path]) -> list[str]:
        """Problems (with their fixes) that would stop this metric with the suite's ``weights``."""
        return self.plugin.missing(weights)

    def extractor(self, ctx: MetricContext) -> KeyedExtractor:
        """The feature extractor (built once per metric instance, weights file and device)."""
        return self.plugin.build(ctx)


def private_features(ctx: MetricContext, extractor: FeatureExtractor,
                     labels: Tensor) -> tuple[Tensor, Tensor]:
    """Features and labels of the private training images whose label is in ``labels``.

    The features of the whole private training split are computed once (per extractor and split)
    through ``ctx.features.of_split`` and the rows of the wanted identities are selected.
    """
    feats = ctx.features.of_split(extractor, ctx.private_train)
    all_labels = ctx.private_train.labels
    if feats.shape[0] != all_labels.shape[0]:
        raise MetricUnavailableError(
            f"cached features of {ctx.private_train.name!r} have {feats.shape[0]} rows for "
            f"{all_labels.shape[0]} images; the feature cache is stale"
        )
    mask = torch.isin(all_labels, labels.to(all_labels.device))
    return feats[mask], all_labels[mask]


def reconstruction_features(ctx: MetricContext, extractor: FeatureExtractor, rec: Reconstruction,
                            metric: str) -> Tensor:
    """Features of the reconstructions (batched through ``ctx.features``)."""
    if rec.images.shape[0] == 0:
        raise MetricUnavailableError(f"{metric}: the attack returned no images")
    return ctx.features.extract(extractor, rec.images)
