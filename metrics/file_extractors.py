"""Feature extractor plugins whose network weights come from a local file (``inception``, ``facenet``).

* ``inception``: the 2048-d pool3 features of the Inception-v3 that FID is defined with (Heusel et
  al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium",
  NeurIPS 2017), as ported to PyTorch by pytorch-fid.
* ``facenet``: L2-normalised 512-d embeddings of FaceNet's Inception-ResNet-v1 (Schroff et al.,
  CVPR 2015) trained on VGGFace2 (Cao et al., FG 2018), the network of the FaceNet distance of
  Struppek et al., "Plug & Play Attacks", ICML 2022.

The weights file is found through the suite's ``weights:`` section or the usual download cache
paths (nothing is ever downloaded), hashed once per process, and the loaded networks are kept in a
small per-process cache. The plugin base and the ``evaluation-model`` extractor are in
:mod:`~inversion_bench.metrics.extractors`.
"""

from __future__ import annotations

import logging
import os
import threading
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import ClassVar
from unittest import mock

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from inversion_bench.errors import ConfigError, MissingResourceError
from inversion_bench.interfaces import MetricContext
from inversion_bench.metrics.extractors import ExtractorPlugin, KeyedExtractor
from inversion_bench.models import load_state_dict_file
from inversion_bench.registry import PluginParams, extractors
from inversion_bench.store import file_sha256

log = logging.getLogger(__name__)

FID_INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_INCEPTION_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_INCEPTION_FILE}"
FACENET_FILE = "20180402-114759-vggface2.pt"
FACENET_URL = f"https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/{FACENET_FILE}"
FACENET_INPUT_SIZE = 160

# Per-process caches: weights file hashes, and loaded networks (a small LRU).
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
