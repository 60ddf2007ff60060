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

The module also holds :class:`FeatureMetric`, the base of metrics that take an ``extractor``
parameter, and the helpers that select private features of the attacked identities.
"""

from __future__ import annotations

import logging
import os
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

import torch
import torch.nn.functional as F
from inversion_bench.errors import ConfigError, MetricUnavailableError, MissingResourceError
from inversion_bench.features import FeatureExtractor
from inversion_bench.interfaces import Metric, MetricContext, Reconstruction
from inversion_bench.models import load_state_dict_file
from inversion_bench.registry import PluginParams, extractors
from inversion_bench.store import file_sha256
from pydantic import Field, model_validator
from torch import Tensor, nn

log = logging.getLogger(__name__)

FID_INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_INCEPTION_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_INCEPTION_FILE}"
FACENET_FILE = "20180402-114759-vggface2.pt"
FACENET_URL = f"https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/{FACENET_FILE}"
FACENET_INPUT_SIZE = 160


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
        """What ``ctx.details`` records about the feature space of a metric value."""
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
# Extractors with a local weights file
# --------------------------------------------------------------------------------------------
_SHA_CACHE: dict[tuple[str, int, int], str] = {}
_NETWORKS: OrderedDict[tuple[str, str, str], nn.Module] = OrderedDict()
_MAX_NETWORKS = 4
_LOCK = threading.Lock()


def cached_file_sha256(path: Path) -> str:
    """``file_sha256(path)``, hashed once per (path, size, modification time) in this process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = file_sha256(path)
    return _SHA_CACHE[key]


def _cached_network(key: tuple[str, str, str], make: Callable[[], nn.Module]) -> nn.Module:
    """One network per (plugin, weights hash, device) in this process (a small LRU)."""
    with _LOCK:
        if key in _NETWORKS:
            _NETWORKS.move_to_end(key)
            return _NETWORKS[key]
    net = make()
    with _LOCK:
        _NETWORKS[key] = net
        while len(_NETWORKS) > _MAX_NETWORKS:
            _NETWORKS.popitem(last=False)
    return net


def _check_state_dict(net: nn.Module, state: Mapping[str, Tensor], path: Path, what: str) -> None:
    """Loads ``state`` strictly into ``net``, or raises ConfigError saying what does not match."""
    try:
        net.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        own = set(net.state_dict())
        missing = sorted(own - set(state))
        unexpected = sorted(set(state) - own)
        raise ConfigError(
            f"{path}: not {what} weights (missing keys {missing[:3]}, unexpected keys {unexpected[:3]}): "
            f"{str(exc).splitlines()[0]}"
        ) from exc


class FileWeightsExtractor(ExtractorPlugin):
    """Base of extractors whose network weights come from a local file.

    The file is found as the ``weights`` parameter's entry in the suite's ``weights:`` section (a
    name), else as a file path when the parameter is one, else at the usual download cache paths
    (``fallback_paths``). Nothing is ever downloaded.
    """

    file_name: ClassVar[str]
    url: ClassVar[str]
    description: ClassVar[str]

    def fallback_paths(self) -> list[Path]:
        """Where the file is looked for when the suite's ``weights:`` section does not name it."""
        return [Path(torch.hub.get_dir()) / "checkpoints" / self.file_name]

    def locate(self, weights: Mapping[str, Path]) -> Path:
        """The weights file for ``weights`` (the suite's section).

        Raises:
            MissingResourceError: naming the file, its download URL and where to put it.
        """
        ref: str = self.params.weights
        if ref in weights:
            path = Path(weights[ref]).expanduser()
            if path.is_file():
                return path
            raise MissingResourceError(
                f"extractor {self.name}: weights file {path} (weights.{ref}) not found. It should be "
                f"{self.file_name} ({self.description}), downloadable from {self.url}; put it at {path} "
                f"or change weights.{ref} in the suite"
            )
        as_path = Path(ref).expanduser()
        if as_path.is_file():
            return as_path
        fallbacks = self.fallback_paths()
        for path in fallbacks:
            if path.is_file():
                return path
        looked = " or ".join(str(p) for p in fallbacks)
        raise MissingResourceError(
            f"extractor {self.name}: weights file {self.file_name} ({self.description}) not found: the "
            f"suite's weights: section has no entry {ref!r} and there is no file at {looked}. Download "
            f"{self.url} and either add '{ref}: /path/to/{self.file_name}' to the suite's weights: "
            f"section or save it as {fallbacks[0]}"
        )

    def required_weights(self) -> dict[str, str]:
        """Weights name needed from the suite's ``weights:`` section -> what it is.

        Empty when the parameter is an existing file path or the file already lies at a fallback
        path (then the section needs no entry).
        """
        ref = self.params.weights
        if Path(ref).expanduser().is_file() or any(p.is_file() for p in self.fallback_paths()):
            return {}
        return {self.params.weights: f"{self.description}: {self.file_name}, from {self.url} "
                                     f"(or put it at {self.fallback_paths()[0]})"}

    def missing(self, weights: Mapping[str, Path]) -> list[str]:
        try:
            self.locate(weights)
        except MissingResourceError as exc:
            return [str(exc)]
        return []

    @abstractmethod
    def load_network(self, path: Path) -> nn.Module:
        """The network with the weights of ``path`` (eval mode, CPU)."""

    @abstractmethod
    def embed(self, net: nn.Module, images: Tensor) -> Tensor:
        """Images in [0, 1] -> features ([N, D] or [N, D, 1, 1])."""

    def build(self, ctx: MetricContext) -> KeyedExtractor:
        path = self.locate(ctx.weights)
        sha = cached_file_sha256(path)
        device = ctx.features.device
        key = f"{self.name}-v{self.version}-{sha}"
        cached = self._built.get((key, str(device)))
        if cached is not None:
            return cached

        def make() -> nn.Module:
            log.info("loading %s weights from %s (sha256 %s)", self.name, path, sha)
            return self.load_network(path).to(device).eval()

        net = _cached_network((self.name, sha, str(device)), make)
        ext = KeyedExtractor(key, lambda x: self.embed(net, x), net, plugin=self.name,
                             weights_sha256=sha, weights_path=path)
        self._built[(key, str(device))] = ext
        return ext


def fid_inception_architecture() -> nn.Module:
    """The Inception-v3 variant of TensorFlow's FID code, randomly initialised, nothing downloaded.

    Same modules as ``pytorch_fid.inception.fid_inception_v3`` (torchvision's Inception-v3 with 1008
    classes, no auxiliary head, and the FID-specific Mixed blocks); its state dict has the layout of
    ``pt_inception-2015-12-05-6726825d.pth``.
    """
    from pytorch_fid import inception as pfi

    net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfi.FIDInceptionE_1(1280)
    net.Mixed_7c = pfi.FIDInceptionE_2(2048)
    return net


def build_fid_inception(state_dict: Mapping[str, Tensor], source: Path | str = "state dict") -> nn.Module:
    """pytorch-fid's ``InceptionV3`` (pool3, 2048-d) with the given FID Inception weights.

    pytorch-fid's constructor downloads the weights through ``fid_inception_v3``; here that factory
    is replaced, for the duration of the constructor only, by one returning the locally loaded
    network, so the result is pytorch-fid's own module (its input resizing to 299 x 299 and its
    [0, 1] -> [-1, 1] scaling included).
    """
    from pytorch_fid import inception as pfi

    net = fid_inception_architecture()
    _check_state_dict(net, state_dict, Path(str(source)), "FID Inception-v3")
    with _LOCK, mock.patch.object(pfi, "fid_inception_v3", lambda: net):
        model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True,
                                normalize_input=True, use_fid_inception=True)
    return model.eval()


class _InceptionParams(PluginParams):
    weights: str = Field("fid_inception", description="name in the suite's weights: section (or a file path) "
                                                       f"of {FID_INCEPTION_FILE}")


@extractors.register("inception")
class InceptionExtractor(FileWeightsExtractor):
    """pytorch-fid's FID Inception-v3, 2048-d pool3 features (weights from a local file)."""

    Params = _InceptionParams
    file_name = FID_INCEPTION_FILE
    url = FID_INCEPTION_URL
    description = "the FID Inception-v3 weights of pytorch-fid"

    def load_network(self, path: Path) -> nn.Module:
        return build_fid_inception(load_state_dict_file(path), path)

    def embed(self, net: nn.Module, images: Tensor) -> Tensor:
        return net(images.float())[0]  # [N, 2048, 1, 1]; the module resizes and rescales itself


def build_facenet(state_dict: Mapping[str, Tensor], source: Path | str = "state dict") -> nn.Module:
    """facenet-pytorch's ``InceptionResnetV1`` (embeddings) with the given weights.

    facenet-pytorch's released state dicts also hold the classifier of the training identities
    (``logits.weight``, ``logits.bias``); it is dropped, every other key must match exactly.
    """
    from facenet_pytorch import InceptionResnetV1

    net = InceptionResnetV1(pretrained=None, classify=False)
    state = {k: v for k, v in state_dict.items() if not k.startswith("logits.")}
    _check_state_dict(net, state, Path(str(source)), "FaceNet InceptionResnetV1")
    return net.eval()


def facenet_preprocess(images: Tensor) -> Tensor:
    """[0, 1] images -> 160 x 160 inputs standardised as facenet-pytorch expects ((255 x - 127.5) / 128)."""
    x = images.float()
    if x.shape[-1] != FACENET_INPUT_SIZE or x.shape[-2] != FACENET_INPUT_SIZE:
        x = F.interpolate(x, size=(FACENET_INPUT_SIZE, FACENET_INPUT_SIZE), mode="bilinear",
                          align_corners=False, antialias=x.shape[-1] > FACENET_INPUT_SIZE)
    return (x * 255.0 - 127.5) / 128.0


class _FaceNetParams(PluginParams):
    weights: str = Field("facenet", description=f"name in the suite's weights: section (or a file path) of "
                                                f"{FACENET_FILE}")


@extractors.register("facenet")
class FaceNetExtractor(FileWeightsExtractor):
    """FaceNet (Inception-ResNet-v1, VGGFace2) L2-normalised 512-d embeddings (weights from a local file)."""

    Params = _FaceNetParams
    file_name = FACENET_FILE
    url = FACENET_URL
    description = "facenet-pytorch's InceptionResnetV1 trained on VGGFace2"

    def fallback_paths(self) -> list[Path]:
        # facenet-pytorch caches under $TORCH_HOME/checkpoints, torch.hub under $TORCH_HOME/hub/checkpoints
        torch_home = Path(os.path.expanduser(os.getenv(
            "TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))))
        return [torch_home / "checkpoints" / self.file_name, *super().fallback_paths()]

    def load_network(self, path: Path) -> nn.Module:
        return build_facenet(load_state_dict_file(path), path)

    def embed(self, net: nn.Module, images: Tensor) -> Tensor:
        return F.normalize(net(facenet_preprocess(images)), p=2, dim=1)


# --------------------------------------------------------------------------------------------
# Metrics in a chosen feature space
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
