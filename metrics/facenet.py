"""FaceNet distance δ_face (Struppek et al., "Plug & Play Attacks", ICML 2022).

The KNN distance of metrics/knn.py in the embedding space of FaceNet (Schroff et al., CVPR 2015):
facenet-pytorch's Inception-ResNet-v1 trained on VGGFace2, inputs resized to 160 x 160 and
standardised as ((255 x - 127.5) / 128), L2-normalised 512-d embeddings. For each reconstruction,
the minimum squared L2 distance to the embeddings of the private training images of its attacked
identity; averaged over all reconstructions. Being independent of the target and evaluation models,
it checks that a reconstruction resembles the identity and not only its class decision.

A larger distance means less leakage: ``better`` is "higher".
"""

from __future__ import annotations

from pydantic import Field

from inversion_bench.interfaces import MetricContext, MetricResult, Reconstruction
from inversion_bench.metrics.extractors import ExtractorPlugin, extractor_plugin
from inversion_bench.metrics.feature_metric import FeatureMetric
from inversion_bench.metrics.file_extractors import FACENET_FILE
from inversion_bench.metrics.knn import feature_distance
from inversion_bench.record_model import MetricOutput
from inversion_bench.registry import PluginParams, metrics


class _Params(PluginParams):
    weights: str = Field("facenet", description=f"name in the suite's weights: section (or a file path) of "
                                                f"{FACENET_FILE} (facenet-pytorch, VGGFace2)")


@metrics.register("facenet_distance")
class FaceNetDistance(FeatureMetric):
    """Mean min squared L2 distance to the attacked identity's private images in FaceNet space."""

    Params = _Params
    outputs = {"facenet_distance": MetricOutput(better="higher", unit="distance", per_identity=True)}

    def _make_plugin(self) -> ExtractorPlugin:
        return extractor_plugin("facenet", self.params.weights)

    def compute(self, rec: Reconstruction, ctx: MetricContext) -> MetricResult:
        value, details = feature_distance(rec, ctx, self.extractor(ctx), "facenet_distance")
        per = details.pop("per_identity")
        return MetricResult(values={"facenet_distance": value}, per_identity={"facenet_distance": per},
                            details=details)
