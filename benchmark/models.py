"""Classifier architectures, registered by name.

CPU scale: ``small-cnn`` and ``small-resnet``; ``mlp`` for the 2-D toy (``toy2d`` dataset). Paper
scale: torchvision ``resnet18``, ``resnet50``, ``resnet152`` and ``inception_v3`` (with auxiliary
logits), optionally initialised from a local ImageNet weights file (the suite's ``weights:`` section
or a path; nothing is downloaded).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
import torchvision
from pydantic import Field, SerializerFunctionWrapHandler, model_serializer
from torch import Tensor, nn

from inversion_bench.errors import ConfigError, MissingResourceError
from inversion_bench.interfaces import Classifier
from inversion_bench.registry import Plugin, PluginParams, architectures

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Where torchvision's ImageNet weights come from (download them elsewhere, then point weights: at them).
TORCHVISION_URLS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet152": "https://download.pytorch.org/models/resnet152-394f9c45.pth",
    "inception_v3": "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth",
}


class Architecture(Plugin, ABC):
    """Builds a :class:`Classifier` for ``num_classes`` classes.

    ``checkpoint_prefixes[format]`` maps the key names of checkpoints other code published in
    ``format`` to this package's (publisher prefix, this package's prefix; the first match wins;
    :mod:`inversion_bench.checkpoints`); ``native`` checkpoints need none.
    """

    checkpoint_prefixes: ClassVar[dict[str, tuple[tuple[str, str], ...]]] = {}
    mibench_name: ClassVar[str] = ""  # MIBench's model_name for the same network, checked when loading its files

    def required_weights(self) -> dict[str, str]:
        """Names of the suite's ``weights:`` entries this architecture needs -> description."""
        return {}

    @abstractmethod
    def build(self, num_classes: int, resolution: int, weights: Mapping[str, Path]) -> Classifier:
        """A freshly initialised classifier (with pretrained backbone weights where configured)."""


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = (nn.Identity() if stride == 1 and cin == cout else
                      nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.conv2(self.conv1(x)) + self.short(x))


class _SizedParams(PluginParams):
    input_size: int | None = Field(None, ge=16, description="input resolution (default: the dataset's)")
    width: int = Field(32, ge=4, description="channels of the first stage (doubled per stage)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the classifier head")


@architectures.register("small-cnn")
class SmallCNN(Architecture):
    """Four conv-BN-ReLU-pool stages and global average pooling (CPU-scale target)."""

    Params = _SizedParams

    def build(self, num_classes: int, resolution: int, weights: Mapping[str, Path]) -> Classifier:
        p = self.params
        w = p.width
        chans = [3, w, 2 * w, 4 * w, 8 * w]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            layers += [_conv_bn(cin, cout), nn.MaxPool2d(2)]
        body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(p.dropout))
        return Classifier(body, nn.Linear(8 * w, num_classes), feature_dim=8 * w,
                          num_classes=num_classes, input_size=p.input_size or resolution)


class _SmallResNetParams(_SizedParams):
    blocks: list[int] = Field([1, 1, 1, 1], description="residual blocks per stage")


@architectures.register("small-resnet")
class SmallResNet(Architecture):
    """A small ResNet (basic blocks, four stages) for CPU-scale evaluation models."""

    Params = _SmallResNetParams

    def build(self, num_classes: int, resolution: int, weights: Mapping[str, Path]) -> Classifier:
        p = self.params
        w = p.width
        layers: list[nn.Module] = [_conv_bn(3, w)]
        cin = w
        for stage, n in enumerate(p.blocks):
            cout = w * 2**stage
            for b in range(n):
                layers.append(_Block(cin, cout, 2 if (b == 0 and stage > 0) else 1))
                cin = cout
        body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(p.dropout))
        return Classifier(body, nn.Linear(cin, num_classes), feature_dim=cin,
                          num_classes=num_classes, input_size=p.input_size or resolution)


class MLPClassifier(Classifier):
    """A classifier on flattened inputs: the first ``in_channels`` channels, pooled to ``input_size``.

    ``prepare`` takes [N, C, H, W] images in [0, 1] (C >= ``in_channels``), keeps channels
    0..in_channels-1, average-pools (or nearest-upsamples) them to ``input_size`` x ``input_size``,
    maps [0, 1] to [-1, 1] and flattens. Channels it does not read get no gradient.
    """

    def __init__(self, body: nn.Module, head: nn.Module, *, in_channels: int, feature_dim: int,
                 num_classes: int, input_size: int) -> None:
        super().__init__(body, head, feature_dim=feature_dim, num_classes=num_classes, input_size=input_size)
        self.in_channels = in_channels

    def prepare(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] < self.in_channels:
            raise ValueError(f"the mlp expects [N, C >= {self.in_channels}, H, W] images, got {tuple(x.shape)}")
        x = x[:, : self.in_channels]
        s = self.input_size
        if x.shape[-2:] != (s, s):
            x = (F.adaptive_avg_pool2d(x, s) if x.shape[-1] >= s and x.shape[-2] >= s
                 else F.interpolate(x, size=(s, s), mode="nearest"))
        return ((x - 0.5) / 0.5).flatten(1)


class _MLPParams(PluginParams):
    width: int = Field(64, ge=1, description="units of each hidden layer")
    depth: int = Field(2, ge=1, description="hidden layers (Linear + activation each)")
    in_channels: int = Field(3, ge=1, le=3, description="leading input channels read (2 for toy2d's (x, y) points)")
    input_size: int | None = Field(
        None, ge=1, description="side the input is pooled to before flattening (default: the dataset's; 1 for toy2d)")
    activation: Literal["relu", "tanh", "gelu"] = Field("relu", description="hidden activation")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the classifier head")


_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


@architectures.register("mlp")
class MLP(Architecture):
    """A multilayer perceptron on the flattened, normalised input (the 2-D toy of Struppek et al., ICLR 2024)."""

    Params = _MLPParams

    def build(self, num_classes: int, resolution: int, weights: Mapping[str, Path]) -> Classifier:
        p = self.params
        size = p.input_size or resolution
        layers: list[nn.Module] = []
        d_in = p.in_channels * size * size
        for _ in range(p.depth):
            layers += [nn.Linear(d_in, p.width), _ACTIVATIONS[p.activation]()]
            d_in = p.width
        body = nn.Sequential(*layers, nn.Dropout(p.dropout))
        return MLPClassifier(body, nn.Linear(p.width, num_classes), in_channels=p.in_channels,
                             feature_dim=p.width, num_classes=num_classes, input_size=size)


class _TorchvisionParams(PluginParams):
    pretrained: str | None = Field(
        None, description="ImageNet weights: a name in the suite's weights: section or a file path"
    )
    input_size: int | None = Field(None, ge=32, description="input resolution (default 224, 299 for Inception)")
    normalize: Literal["imagenet", "ppa"] = Field(
        "imagenet", description="input normalisation: imagenet (ImageNet mean and std) or ppa (mean 0.5, std 0.5, as "
        "Plug & Play Attacks trains and evaluates its ResNet-152 and Inception-v3: utils/datasets.py)")

    @model_serializer(mode="wrap")
    def _drop_default(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leaves ``normalize`` out at its default, so the cache keys of suites without it stay as they were."""
        data = handler(self)
        if data.get("normalize") == "imagenet":
            data.pop("normalize")
        return data

    def mean_std(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """The per-channel mean and std the network's input is normalised with."""
        return (IMAGENET_MEAN, IMAGENET_STD) if self.normalize == "imagenet" else ((0.5,) * 3, (0.5,) * 3)


PPA_PREFIXES: tuple[tuple[str, str], ...] = (("model.fc.", "head."), ("model.", "body.net."))
"""Plug & Play Attacks' ``Classifier`` keeps the torchvision network as ``model`` (models/classifier.py at
LukasStruppek/Plug-and-Play-Attacks@3087a4f); its ``fc`` is this package's ``head``."""


def resolve_weights_path(ref: str, weights: Mapping[str, Path], what: str) -> Path:
    """A weights reference (name in ``weights:`` or a path) -> an existing file, or a clear error."""
    path = Path(weights[ref]) if ref in weights else Path(ref).expanduser()
    if not path.is_file():
        hint = f" (weights.{ref})" if ref in weights else ""
        raise MissingResourceError(
            f"{what}: weights file {path}{hint} not found; put the file there or change the path "
            "in the suite's weights: section"
        )
    return path


def load_state_dict_file(path: Path) -> dict[str, Tensor]:
    """Loads a state dict safely (``weights_only=True``); unwraps ``{"state_dict": ...}``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MissingResourceError(f"weights file {path} cannot be read as a PyTorch state dict: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise MissingResourceError(f"weights file {path} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


class _ResNetBody(nn.Module):
    def __init__(self, net: torchvision.models.ResNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        x = n.layer4(n.layer3(n.layer2(n.layer1(x))))
        return torch.flatten(n.avgpool(x), 1)


def _make_resnet(factory_name: str):
    factory = getattr(torchvision.models, factory_name)

    class _TorchvisionResNet(Architecture):
        Params = _TorchvisionParams
        checkpoint_prefixes = {"ppa": PPA_PREFIXES}

        def required_weights(self) -> dict[str, str]:
            ref = self.params.pretrained
            return ({ref: f"ImageNet {factory_name} weights (torchvision state dict, from "
                         f"{TORCHVISION_URLS[factory_name]})"} if ref else {})

        def build(self, num_classes: int, resolution: int, weights: Mapping[str, Path]) -> Classifier:
            net = factory(weights=None)
            if self.params.pretrained:
                path = resolve_weights_path(self.params.pretrained, weights, f"architecture {factory_name}")
                state = {k: v for k, v in load_state_dict_file(path).items() if not k.startswith("fc.")}
                missing, unexpected = net.load_state_dict(state, strict=False)
                if unexpected or [k for k in missing if not k.startswith("fc.")]:
                    raise ConfigError(f"{path}: not {factory_name} weights (missing {missing[:3]}, "
                                      f"unexpected {unexpected[:3]})")
            feat = net.fc.in_features
            net.fc = nn.Identity()
            mean, std = self.params.mean_std()
            return Classifier(_ResNetBody(net), nn.Linear(feat, num_classes), feature_dim=feat,
                              num_classes=num_classes, input_size=self.params.input_size or 224, mean=mean, std=std)

    _TorchvisionResNet.__doc__ = f"torchvision {factory_name} (optional local ImageNet weights)."
    _TorchvisionResNet.__name__ = _TorchvisionResNet.__qualname__ = f"TV_{factory_name}"
    return _TorchvisionResNet


for _n in ("resnet18", "resnet50", "resnet152"):
    architectures.add(_n, _make_resnet(_n))


class _InceptionBody(nn.Module):
    """Inception-v3 up to the pooled features; keeps the auxiliary logits of the last call."""

    def __init__(self, net: torchvision.models.Inception3) -> None:
        super().__init__()
        self.net = net
        self.last_aux: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        n = self.net
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
                     "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a",
                     "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
            x = getattr(n, name)(x)
        self.last_aux = n.AuxLogits(x) if (self.training and n.AuxLogits is not None) else None
        x = n.Mixed_7c(n.Mixed_7b(n.Mixed_7a(x)))
        return torch.flatten(n.dropout(n.avgpool(x)), 1)


class InceptionClassifier(Classifier):
    """Inception-v3 classifier whose training loss also sees the auxiliary logits."""

    def training_outputs(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        logits = self(x)
        aux = self.body.last_aux
        return logits, ([aux] if aux is not None else [])


@architectures.register("inception_v3")
class InceptionV3(Architecture):
    """torchvision Inception-v3 with auxiliary logits (299 px; optional local ImageNet weights)."""

    Params = _TorchvisionParams
    checkpoint_prefixes = {"ppa": PPA_PREFIXES}

    def required_weights(self) -> dict[str, str]:
        ref = self.params.pretrained
        return ({ref: f"ImageNet inception_v3 weights (torchvision state dict, from "
                      f"{TORCHVISION_URLS['inception_v3']})"} if ref else {})

    def build(self, num_classes: int, resolution: int, weights: Mapping[str, Path]) -> Classifier:
        net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=True)
        if self.params.pretrained:
            path = resolve_weights_path(self.params.pretrained, weights, "architecture inception_v3")
            state = {k: v for k, v in load_state_dict_file(path).items()
                     if not k.startswith(("fc.", "AuxLogits.fc."))}
            net.load_state_dict(state, strict=False)
        net.AuxLogits.fc = nn.Linear(net.AuxLogits.fc.in_features, num_classes)
        feat = net.fc.in_features
        net.fc = nn.Identity()
        mean, std = self.params.mean_std()
        return InceptionClassifier(_InceptionBody(net), nn.Linear(feat, num_classes), feature_dim=feat,
                                   num_classes=num_classes, input_size=self.params.input_size or 299,
                                   mean=mean, std=std)


def build_classifier(arch_name: str, params: dict, num_classes: int, resolution: int,
                     weights: Mapping[str, Path]) -> Classifier:
    """Looks up ``arch_name`` and builds a classifier with validated ``params``."""
    cls = architectures.get(arch_name)
    return cls(cls.Params(**params)).build(num_classes, resolution, weights)
