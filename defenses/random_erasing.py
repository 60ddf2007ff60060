"""Random erasing as a training-time defense (MIDRE).

Tran, Nguyen, Mai, Vandierendonck, Assent, Kot and Cheung, "Random Erasing vs. Model Inversion: A
Promising Defense or a False Hope?", TMLR 2025 (arXiv:2409.01062). Reference code:
github.com/ngoc-nguyen-0/MIDRE_TMLR at commit eb1aba1b6242b689bd0287e0419e22a8930bd881
(``configs/training/targets/ResNet18_FaceScrub_midre_0.4.yaml``, ``utils/training_config_parser.py``).

Every training image has one rectangle erased (probability ``p = 1``) whose area is a uniform
fraction of the image in ``scale = (0.1, 0.4)``, with aspect ratio 1, at a uniform random position,
filled with the constant ``value = (0.485, 0.456, 0.406)``. The algorithm is torchvision's
``RandomErasing`` (Zhong et al., AAAI 2020), which the reference applies last in its training
transforms: after random resized crop, colour jitter and flip, *and after the normalisation*
(mean = std = 0.5), so the fill value is a value of the normalised image. Here the erasing runs as
a forward pre-hook on the classifier's ``body`` while the model trains: the body's input is the
augmented batch, resized and normalised by the model itself, which is exactly where the reference
erases. The hook is removed after training; evaluation and attacks never see erased images.

Randomness: the rectangles come from a CPU generator seeded with the training seed (separate from
the trainer's augmentation generator), so a seed reproduces the run on every device. The draws per
image, in order: one uniform for the probability; then up to ``attempts`` (10, torchvision's) tries
of (area uniform, log-ratio uniform), a try fitting when the rounded height and width are smaller
than the image's; then the top and left offsets, ``floor(u * (H - h + 1))``. No try fitting: the
image is left as it is (as torchvision does).

The reference also offers ``scale = (0.1, 0.8)`` (``..._midre_0.8.yaml``); the README points to the
0.4 file as the example, hence the default here.
"""

from __future__ import annotations

import math
import time

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from inversion_bench.errors import ConfigError
from inversion_bench.interfaces import Classifier, Defense
from inversion_bench.registry import PluginParams, defenses
from inversion_bench.training import Trainer

TORCHVISION_ATTEMPTS = 10


def _u(g: torch.Generator) -> float:
    return float(torch.rand(1, generator=g))


def erase_box(height: int, width: int, g: torch.Generator, p: float, scale: tuple[float, float],
              ratio: tuple[float, float], attempts: int = TORCHVISION_ATTEMPTS) -> tuple[int, int, int, int]:
    """The rectangle ``(top, left, h, w)`` erased from one ``height`` x ``width`` image; ``h = w = 0``
    when nothing is erased (not drawn with probability ``p``, or no try fitted). Draw order: see the
    module docstring."""
    if not _u(g) < p:
        return 0, 0, 0, 0
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        target = area * (scale[0] + _u(g) * (scale[1] - scale[0]))
        aspect = math.exp(log_lo + _u(g) * (log_hi - log_lo))
        h = int(round(math.sqrt(target * aspect)))
        w = int(round(math.sqrt(target / aspect)))
        if not (h < height and w < width):
            continue
        top = min(int(_u(g) * (height - h + 1)), height - h)
        left = min(int(_u(g) * (width - w + 1)), width - w)
        return top, left, h, w
    return 0, 0, 0, 0


def erase_boxes(n: int, height: int, width: int, g: torch.Generator, p: float, scale: tuple[float, float],
                ratio: tuple[float, float]) -> Tensor:
    """[n, 4] int64 rectangles (top, left, h, w), one per image, drawn in image order."""
    return torch.tensor([erase_box(height, width, g, p, scale, ratio) for _ in range(n)],
                        dtype=torch.int64).view(n, 4)


def erase_mask(boxes: Tensor, height: int, width: int) -> Tensor:
    """[n, 1, height, width] bool: True inside each image's rectangle."""
    rows = torch.arange(height).view(1, height, 1)
    cols = torch.arange(width).view(1, 1, width)
    top, left, h, w = (boxes[:, k].view(-1, 1, 1) for k in range(4))
    inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    return inside.unsqueeze(1)


def apply_erasing(images: Tensor, boxes: Tensor, value: tuple[float, ...]) -> Tensor:
    """``images`` [n, C, H, W] with each image's rectangle filled with the per-channel ``value``."""
    n, c, h, w = images.shape
    if len(value) != c:
        raise ValueError(f"random erasing: value has {len(value)} entries for {c} channels")
    mask = erase_mask(boxes, h, w).to(images.device)
    fill = torch.tensor(value, dtype=images.dtype, device=images.device).view(1, c, 1, 1)
    return torch.where(mask, fill, images)


def random_erase(images: Tensor, g: torch.Generator, p: float, scale: tuple[float, float],
                 ratio: tuple[float, float], value: tuple[float, ...]) -> tuple[Tensor, Tensor]:
    """Random erasing of a batch: (erased images, the [n, 4] rectangles)."""
    boxes = erase_boxes(images.shape[0], images.shape[-2], images.shape[-1], g, p, scale, ratio)
    return apply_erasing(images, boxes, value), boxes


@defenses.register("random-erasing", aliases=("random_erasing",))
class RandomErasing(Defense):
    """MIDRE (Tran et al., TMLR 2025): every training image has a random rectangle erased."""

    class Params(PluginParams):
        p: float = Field(1.0, ge=0.0, le=1.0, description="probability that an image has a rectangle erased")
        scale: tuple[float, float] = Field(
            (0.1, 0.4), description="range of the erased area, as a fraction of the image (uniform)")
        ratio: tuple[float, float] = Field(
            (1.0, 1.0), description="range of the rectangle's aspect ratio h/w (log-uniform)")
        value: tuple[float, float, float] = Field(
            (0.485, 0.456, 0.406), description="per-channel fill, in the model's normalised input space")

        @model_validator(mode="after")
        def _ranges(self):
            lo, hi = self.scale
            if not 0.0 < lo <= hi < 1.0:
                raise ValueError(f"scale {self.scale}: need 0 < min <= max < 1 (fractions of the image area)")
            if not 0.0 < self.ratio[0] <= self.ratio[1]:
                raise ValueError(f"ratio {self.ratio}: need 0 < min <= max")
            return self

    def __init__(self, params: PluginParams) -> None:
        super().__init__(params)
        self._stats = {"images": 0, "erased_pixels": 0.0, "seconds": 0.0}

    def _hook(self, g: torch.Generator):
        p = self.params

        def erase(module: nn.Module, args: tuple) -> tuple | None:
            if not module.training:
                return None
            x = args[0]
            if x.ndim != 4:
                raise ConfigError(f"random-erasing needs image input [N, C, H, W] to the classifier body, got "
                                  f"{tuple(x.shape)}: use an image architecture (small-cnn, resnet18, ...), "
                                  "not one that flattens its input")
            t0 = time.perf_counter()
            erased, boxes = random_erase(x, g, p.p, p.scale, p.ratio, p.value)
            self._stats["images"] += x.shape[0]
            self._stats["erased_pixels"] += float((boxes[:, 2] * boxes[:, 3]).sum()) / (x.shape[-2] * x.shape[-1])
            self._stats["seconds"] += time.perf_counter() - t0
            return (erased, *args[1:])

        return erase

    def fit(self, model: Classifier, trainer: Trainer) -> Classifier:
        g = torch.Generator().manual_seed(trainer.seed)
        handle = model.body.register_forward_pre_hook(self._hook(g))
        try:
            trainer.fit(model, self.criterion)
        finally:
            handle.remove()
        return model

    def report(self) -> dict[str, float]:
        n = self._stats["images"]
        if not n:
            return {}
        return {"erased_area_fraction": self._stats["erased_pixels"] / n,
                "erasing_seconds": self._stats["seconds"], "extra_parameters": 0}
