"""Feature extractor plugins for the feature-space metrics (FID, PRDC, KNN and FaceNet distance).

An extractor plugin turns a :class:`~inversion_bench.interfaces.MetricContext` into a
:class:`~inversion_bench.features.FeatureExtractor` whose ``key`` names the network and the sha256 of its
weights, so that the store-backed feature cache never mixes features of different weights.

Built-in extractors (registry ``inversion_bench.registry.extractors``):

* ``evaluation-model``: the penultimate features of the suite's evaluation model (offline; the
  default of every metric with an ``extractor`` parameter).
* ``inception``: the 2048-d pool3 features of the Inception-v3 that FID is defined with (Heusel et
  al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium",
  NeurIPS 2017), as ported to PyTorch by pytorch-fid. The weights come from a local file.
* ``facenet``: L2-normalised 512-d embeddings of FaceNet's Inception-ResNet-v1 (Schroff et al.,
  CVPR 2015) trained on VGGFace2 (Cao et al., FG 2018), the network of the FaceNet distance of
  Struppek et al., "Plug & Play Attacks", ICML 2022. The weights come from a local file.

This module holds the plugin base (:class:`ExtractorPlugin`), the extractors with provenance
(:class:`KeyedExtractor`), the ``evaluation-model`` extractor and the lookup of a registered
extractor by name. The extractors whose weights come from a local file (``inception`` and
``facenet``) are in :mod:`~inversion_bench.metrics.file_extractors`; the base of metrics that take
an ``extractor`` parameter and the helpers that select private features of the attacked
identities are in :mod:`~inversion_bench.metrics.feature_metric`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor, nn

from inversion_bench.errors import ConfigError
from inversion_bench.features import FeatureExtractor
from inversion_bench.interfaces import MetricContext
from inversion_bench.registry import PluginParams, extractors


# --------------------------------------------------------------------------------------------
# Extractors with provenance
# --------------------------------------------------------------------------------------------
class KeyedExtractor(FeatureExtractor):
    """A :class:`FeatureExtractor` that also records where its network and weights come from.

    Args:
        key: cache key (plugin name, version and weights hash).
        fn: images in [0, 1] -> features.
        module: the network (kept for device moves and inspection).
        plugin: the extractor's registry name.
        weights_sha256: sha256 prefix of the weights file, when the weights come from a file.
        weights_path: the weights file, when there is one.
        extra: further provenance (e.g. the evaluation model's store key).
    """

    def __init__(self, key: str, fn: Callable[[Tensor], Tensor], module: nn.Module | None, *, plugin: str,
                 weights_sha256: str | None = None, weights_path: Path | None = None,
                 extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(key, fn, module)
        self.plugin = plugin
        self.weights_sha256 = weights_sha256
        self.weights_path = weights_path
        self.extra = dict(extra or {})

    def provenance(self) -> dict[str, Any]:
        """What a metric result's details record about the feature space of a metric value."""
        return {
            "extractor": self.plugin,
            "extractor_key": self.key,
            "weights_sha256": self.weights_sha256,
            "weights_path": str(self.weights_path) if self.weights_path is not None else None,
            **self.extra,
        }


def provenance(extractor: FeatureExtractor) -> dict[str, Any]:
    """Provenance of any extractor (plain :class:`FeatureExtractor` objects only know their key)."""
    if isinstance(extractor, KeyedExtractor):
        return extractor.provenance()
    return {"extractor": extractor.key, "extractor_key": extractor.key, "weights_sha256": None,
            "weights_path": None}


class ExtractorPlugin(ABC):
    """A feature extractor plugin: parameters in, a :class:`KeyedExtractor` out.

    Instances keep what they built, so a metric that is run for many (defense, attack, seed) pairs
    reuses one extractor object (and its ``calls`` counter).
    """

    Params: ClassVar[type[PluginParams]] = PluginParams
    name: ClassVar[str]
    version: ClassVar[str] = "1"

    def __init__(self, params: PluginParams) -> None:
        self.params = params
        self._built: dict[tuple[str, str], KeyedExtractor] = {}

    def required_weights(self) -> dict[str, str]:
        """Weights names this extractor needs from the suite's ``weights:`` section -> what it is."""
        return {}

    def missing(self, weights: Mapping[str, Path]) -> list[str]:
        """Problems (each with its fix) that would stop ``build`` with these ``weights``."""
        return []

    @abstractmethod
    def build(self, ctx: MetricContext) -> KeyedExtractor:
        """The extractor for this context (on ``ctx.features.device``, in eval mode)."""


@extractors.register("evaluation-model")
class EvaluationModelExtractor(ExtractorPlugin):
    """Penultimate features of the suite's evaluation model (works offline)."""

    def build(self, ctx: MetricContext) -> KeyedExtractor:
        model = ctx.evaluation_model
        model_key = getattr(model, "cache_key", "evaluation-model")
        key = f"evaluation-model-{model_key}"
        cached = self._built.get((key, ""))
        if cached is not None and cached.module is model:
            return cached
        model.eval()
        ext = KeyedExtractor(key, model.features, model, plugin=self.name,
                             extra={"evaluation_model_key": model_key})
        self._built[(key, "")] = ext
        return ext


# --------------------------------------------------------------------------------------------
# Looking up an extractor
# --------------------------------------------------------------------------------------------
def extractor_plugin(name: str, weights: str | None = None) -> ExtractorPlugin:
    """The registered extractor ``name``, with ``weights`` (a weights name) when given.

    Raises:
        UnknownPluginError: for an unknown name.
        ConfigError: when ``weights`` is given for an extractor that takes no weights file.
    """
    cls = extractors.get(name)
    if weights is None:
        return cls(cls.Params())
    if "weights" not in cls.Params.model_fields:
        raise ConfigError(f"extractor {name!r} takes no weights file (got weights={weights!r})")
    return cls(cls.Params(weights=weights))
