"""The 64 px protocol's classifiers as GMI, KED-MI and MIBench publish them.

Architectures ``vgg16-64``, ``ir152-64`` and ``facenet64`` (the targets of the 64 px CelebA protocol of
GMI, Zhang et al., CVPR 2020, and KED-MI, Chen et al., ICCV 2021) and ``facenet112`` (their evaluation
model: a face.evoLVe IR-50 at 112 px). Written here to match, module by module, the state-dict names
and shapes of

- KED-MI, ``SCccc21/Knowledge-Enriched-DMI`` @ ``1ec92f4697233028c74ad90fee75c69691948917``:
  ``classify.py`` (``VGG16``, ``IR152``, ``FaceNet64``, ``FaceNet``) and ``evolve.py`` (the IR backbones);
- MIBench, ``ffhibnese/Model-Inversion-Attack-ToolBox`` @ ``d9ad48f997aa204e28696b87ce49a25384fcf794``:
  ``src/modelinversion/models/classifiers/classifier64.py`` (``VGG16_64``, ``IR152_64``, ``FaceNet64``),
  ``classifier112.py`` (``FaceNet112``) and ``evolve/evolve.py``, which use the same module names;
- GMI, ``MKariya1998/GMI-Attack`` @ ``7b1b322527145080e3753a571db50ed52c8ee27c``: ``Celeba/classify.py``.

The reference models are ``feature`` (+ ``bn`` or ``output_layer``) followed by ``fc_layer``; here the
part before ``fc_layer`` is the classifier's ``body`` (same names below it) and ``fc_layer`` its
``head``, so a published file loads by renaming ``fc_layer.`` to ``head.`` and prefixing the rest with
``body.`` (:attr:`PublishedArchitecture.checkpoint_prefixes`, used by :mod:`inversion_bench.checkpoints`).

Preprocessing (as the references): images in [0, 1] enter the network without normalisation (mean 0,
std 1; the references' transforms end with ``ToTensor()``); other sizes are resized bilinearly to the
input size (64 px; 112 px for ``facenet112``, which KED-MI and GMI reach by resizing the 64 px images,
``utils.low2high``). The penultimate features are those the references return with the logits: after
``bn`` for VGG16, after ``output_layer`` for the IR models, the backbone's 512-d output for FaceNet-112.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import torchvision
from pydantic import Field
from torch import Tensor, nn

from inversion_bench.errors import ConfigError
from inversion_bench.interfaces import Classifier
from inversion_bench.models import Architecture, load_state_dict_file, resolve_weights_path
from inversion_bench.registry import PluginParams, architectures

IR_UNITS = {50: (3, 4, 14, 3), 152: (3, 8, 36, 3)}
"""Bottleneck units per stage of the IR backbones (evolve.py ``get_blocks``)."""
IR_DEPTHS = (64, 128, 256, 512)
KEDMI_PREFIXES: tuple[tuple[str, str], ...] = (("fc_layer.0.", "head."), ("fc_layer.", "head."), ("", "body."))
"""Publisher name prefix -> this package's, first match wins (``fc_layer.0.``: facenet.py's
``Sequential(Linear, Softmax)`` variant of the same head)."""
UNNORMALISED = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


class IRUnit(nn.Module):
    """evolve.py's ``bottleneck_IR``: BN-conv-PReLU-conv-BN plus a shortcut (1x1 conv + BN when the
    depth changes, else a stride-``stride`` max pool of kernel 1, i.e. subsampling)."""

    def __init__(self, in_channel: int, depth: int, stride: int) -> None:
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channel, depth, 1, stride, bias=False),
                                                nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel), nn.Conv2d(in_channel, depth, 3, 1, 1, bias=False), nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth))

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


def embedding_layer(side: int) -> nn.Sequential:
    """The IR models' ``output_layer``: BN2d, dropout 0.5, flatten, Linear(512 * side², 512), BN1d."""
    return nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(), nn.Flatten(), nn.Linear(512 * side * side, 512),
                         nn.BatchNorm1d(512))


class IRBackbone(nn.Module):
    """evolve.py's ``Backbone64`` (``output_side=None``: no ``output_layer``) and ``Backbone112``
    (``output_side=7``): ``input_layer`` (3x3 conv, BN, PReLU) and ``body`` (the IR units; four
    stages of stride 2: 64 px -> 4x4, 112 px -> 7x7)."""

    def __init__(self, num_layers: int, output_side: int | None = None) -> None:
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units: list[nn.Module] = []
        cin = 64
        for depth, n in zip(IR_DEPTHS, IR_UNITS[num_layers], strict=True):
            for k in range(n):
                units.append(IRUnit(cin, depth, 2 if k == 0 else 1))
                cin = depth
        self.body = nn.Sequential(*units)
        if output_side is not None:
            self.output_layer = embedding_layer(output_side)
        xavier_init(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.body(self.input_layer(x))
        return self.output_layer(x) if hasattr(self, "output_layer") else x


def xavier_init(module: nn.Module) -> None:
    """The references' ``_initialize_weights``: Xavier-uniform convs and linears, zero biases, BN at 1/0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class VGG16Body(nn.Module):
    """classify.py's ``VGG16`` before ``fc_layer``: vgg16_bn's ``features`` (64 px -> 512x2x2), flatten,
    ``bn`` (BatchNorm1d(2048) whose bias is frozen at 0: "no shift")."""

    def __init__(self) -> None:
        super().__init__()
        self.feature = torchvision.models.vgg16_bn(weights=None).features
        self.bn = nn.BatchNorm1d(512 * 2 * 2)
        self.bn.bias.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.feature(x).flatten(1))


class IR64Body(nn.Module):
    """classify.py's ``IR152`` / ``FaceNet64`` before ``fc_layer``: ``feature`` (IR-152 or IR-50
    backbone at 64 px) and ``output_layer`` (to 512-d features)."""

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        self.feature = IRBackbone(num_layers)
        self.output_layer = embedding_layer(4)

    def forward(self, x: Tensor) -> Tensor:
        return self.output_layer(self.feature(x))


class FaceNet112Body(nn.Module):
    """classify.py's ``FaceNet`` before ``fc_layer``: ``feature`` = IR-50 ``Backbone112`` with its
    ``output_layer`` (512-d)."""

    def __init__(self) -> None:
        super().__init__()
        self.feature = IRBackbone(50, output_side=7)

    def forward(self, x: Tensor) -> Tensor:
        return self.feature(x)


class PublishedArchitecture(Architecture):
    """A classifier of the 64 px protocol; subclasses give the body, sizes and the MIBench model name."""

    Params = PluginParams
    checkpoint_prefixes: ClassVar[dict[str, tuple[tuple[str, str], ...]]] = {
        "kedmi": KEDMI_PREFIXES, "mibench": KEDMI_PREFIXES, "gmi": KEDMI_PREFIXES}
    input_size: ClassVar[int] = 64
    feature_dim: ClassVar[int] = 512
    mibench_name: ClassVar[str] = ""
    """``model_name`` MIBench writes into its checkpoints (checked when the file has one)."""

    @abstractmethod
    def make_body(self) -> nn.Module:
        """The network before ``fc_layer``, with the reference's module names."""

    def build(self, num_classes: int, resolution: int, weights: Mapping[str, Path]) -> Classifier:
        body = self.make_body()
        head = nn.Linear(self.feature_dim, num_classes)
        xavier_init(head)
        mean, std = UNNORMALISED
        return Classifier(body, head, feature_dim=self.feature_dim, num_classes=num_classes,
                          input_size=self.input_size, mean=mean, std=std)


class _VGGParams(PluginParams):
    pretrained: str | None = Field(None, description="ImageNet vgg16_bn weights for the convolutions (as the "
                                   "references train): a name in the suite's weights: section or a file path")


@architectures.register("vgg16-64")
class VGG1664(PublishedArchitecture):
    """VGG16-BN at 64 px with a BatchNorm1d feature layer: the GMI / KED-MI / MIBench ``VGG16`` target."""

    Params = _VGGParams
    feature_dim = 512 * 2 * 2
    mibench_name = "vgg16_64"

    def required_weights(self) -> dict[str, str]:
        ref = self.params.pretrained
        return {ref: "ImageNet vgg16_bn weights (torchvision state dict, from "
                     "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth)"} if ref else {}

    def make_body(self) -> nn.Module:
        return VGG16Body()

    def build(self, num_classes: int, resolution: int, weights: Mapping[str, Path]) -> Classifier:
        model = super().build(num_classes, resolution, weights)
        if self.params.pretrained:
            path = resolve_weights_path(self.params.pretrained, weights, "architecture vgg16-64")
            state = {k.removeprefix("features."): v for k, v in load_state_dict_file(path).items()
                     if k.startswith("features.")}
            own = model.body.feature.state_dict()
            bad = sorted(set(own) ^ set(state)) + [k for k in own if k in state and state[k].shape != own[k].shape]
            if bad:
                raise ConfigError(f"architecture vgg16-64: {path} is not torchvision's vgg16_bn (features.* keys "
                                  f"differ: {bad[:3]}); give vgg16_bn-6c64b313.pth or check the path")
            model.body.feature.load_state_dict(state)
        return model


BACKBONE_FILES = {152: "Backbone_IR_152_Epoch_112_Batch_2547328_Time_2019-07-13-02-59_checkpoint.pth",
                  50: "backbone_ir50_ms1m_epoch120.pth"}
"""The face.evoLVe backbones the references start from (KED-MI train_classifier.py; MIBench ships them in
checkpoints_v2.0 under classifier/backbones/)."""


class _IRParams(PluginParams):
    backbone: str | None = Field(None, description="face.evoLVe backbone weights to start training from, as the "
                                 "references do (IR-152: " + BACKBONE_FILES[152] + ", IR-50: " + BACKBONE_FILES[50]
                                 + "): a name in the suite's weights: section or a file path")


def load_backbone(feature: IRBackbone, path: Path, layers: int) -> None:
    """Copies a face.evoLVe IR-``layers`` backbone file into ``feature``: every key of ``feature`` must be in the file
    with its shape; the file's ``output_layer`` is ignored by the 64 px backbones (as the references do).

    Raises:
        ConfigError: naming the file and the missing or mis-shaped keys.
    """
    state = load_state_dict_file(path)
    own = feature.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    shapes = [f"{k}: file {list(state[k].shape)}, model {list(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    if missing or shapes:
        raise ConfigError(f"backbone {path} is not a face.evoLVe IR-{layers} backbone: {len(missing)} missing "
                          f"key(s) {missing[:3]}, {len(shapes)} mis-shaped {shapes[:3]}; the references start "
                          f"IR-{layers} from {BACKBONE_FILES[layers]}: check the path")
    feature.load_state_dict({**own, **{k: state[k] for k in own if k in state}})


class _IRArchitecture(PublishedArchitecture):
    """The IR models: an optional face.evoLVe backbone to start from (``backbone``)."""

    Params = _IRParams
    layers: ClassVar[int] = 50

    def required_weights(self) -> dict[str, str]:
        ref = self.params.backbone
        return {ref: f"face.evoLVe IR-{self.layers} backbone ({BACKBONE_FILES[self.layers]}; MIBench "
                     "checkpoints_v2.0, classifier/backbones/)"} if ref else {}

    def build(self, num_classes: int, resolution: int, weights: Mapping[str, Path]) -> Classifier:
        model = super().build(num_classes, resolution, weights)
        if self.params.backbone:
            load_backbone(model.body.feature,
                          resolve_weights_path(self.params.backbone, weights, f"architecture {self.name}"), self.layers)
        return model


@architectures.register("ir152-64")
class IR15264(_IRArchitecture):
    """IR-152 (face.evoLVe) at 64 px with a 512-d embedding layer: the KED-MI / MIBench ``IR152`` target."""

    mibench_name = "ir152_64"
    layers = 152

    def make_body(self) -> nn.Module:
        return IR64Body(152)


@architectures.register("facenet64")
class FaceNet64(_IRArchitecture):
    """IR-50 (face.evoLVe) at 64 px with a 512-d embedding layer: the KED-MI / MIBench ``FaceNet64`` target."""

    mibench_name = "facenet64"

    def make_body(self) -> nn.Module:
        return IR64Body(50)


@architectures.register("facenet112")
class FaceNet112(_IRArchitecture):
    """IR-50 (face.evoLVe) at 112 px: the evaluation model of GMI and KED-MI (``FaceNet``, their
    ``FaceNet_95.88.tar``) and MIBench's ``FaceNet112``; 64 px images are resized to 112 px."""

    input_size = 112
    mibench_name = "facenet112"

    def make_body(self) -> nn.Module:
        return FaceNet112Body()
