"""Batched, differentiable image augmentations with per-sample randomness.

All functions take float NCHW images in [0, 1] and a ``torch.Generator`` (CPU) for their random
parameters, so the same seed gives the same augmentation on every device. They are used by the
trainer (random resized crop, flip, colour jitter) and by the attacks (PPA's transformations),
and are differentiable with respect to the images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> Tensor:
    return torch.rand(n, generator=g) * (hi - lo) + lo


def crop_boxes(n: int, scale: tuple[float, float], ratio: tuple[float, float], g: torch.Generator,
               ) -> Tensor:
    """Random crop boxes as [n, 4] (centre x, centre y, width, height) in fractions of the image.

    The area fraction is uniform in ``scale`` and the aspect ratio log-uniform in ``ratio``, as in
    torchvision's RandomResizedCrop; width and height are clipped to the image and the centre is
    uniform over the valid positions.
    """
    area = _uniform(n, scale[0], scale[1], g)
    log_r = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), g)
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(max=1.0)
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = w / 2 + torch.rand(n, generator=g) * (1 - w)
    cy = h / 2 + torch.rand(n, generator=g) * (1 - h)
    return torch.stack([cx, cy, w, h], dim=1)


def apply_crops(images: Tensor, boxes: Tensor, size: int | None = None, flip: Tensor | None = None) -> Tensor:
    """Crops each image to its box (see :func:`crop_boxes`) and resizes to ``size`` (bilinear).

    ``flip`` (bool [n]) mirrors the chosen images horizontally.
    """
    n, _, h, w = images.shape
    size = size or h
    boxes = boxes.to(images.device, images.dtype)
    theta = torch.zeros(n, 2, 3, device=images.device, dtype=images.dtype)
    sx = boxes[:, 2]
    if flip is not None:
        sx = torch.where(flip.to(images.device), -sx, sx)
    theta[:, 0, 0] = sx
    theta[:, 1, 1] = boxes[:, 3]
    theta[:, 0, 2] = boxes[:, 0] * 2 - 1
    theta[:, 1, 2] = boxes[:, 1] * 2 - 1
    grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_resized_crop(images: Tensor, g: torch.Generator, scale: tuple[float, float] = (0.85, 1.0),
                        ratio: tuple[float, float] = (1.0, 1.0), size: int | None = None,
                        flip_p: float = 0.0) -> Tensor:
    """Random resized crop (and optional horizontal flip with probability ``flip_p``) per sample."""
    n = images.shape[0]
    boxes = crop_boxes(n, scale, ratio, g)
    flip = torch.rand(n, generator=g) < flip_p if flip_p > 0 else None
    return apply_crops(images, boxes, size, flip)


def center_crop_resize(images: Tensor, crop_fraction: float, size: int) -> Tensor:
    """Centre crop keeping ``crop_fraction`` of the side, then bilinear resize to ``size``."""
    h, w = images.shape[-2:]
    ch, cw = round(h * crop_fraction), round(w * crop_fraction)
    top, left = (h - ch) // 2, (w - cw) // 2
    x = images[..., top : top + ch, left : left + cw]
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=x.shape[-1] > size)
    return x


def horizontal_flip(images: Tensor, g: torch.Generator, p: float = 0.5) -> Tensor:
    flip = (torch.rand(images.shape[0], generator=g) < p).to(images.device).view(-1, 1, 1, 1)
    return torch.where(flip, images.flip(-1), images)


_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}


def _yiq(dev: torch.device, dt: torch.dtype) -> tuple[Tensor, Tensor]:
    """RGB->YIQ and its inverse on ``dev`` in ``dt``, inverted there once (not per training step)."""
    key = (torch.device(dev), dt)
    if key not in _YIQ:
        m = _RGB2YIQ.to(dev, dt)
        _YIQ[key] = m, torch.linalg.inv(m)
    return _YIQ[key]


def color_jitter(images: Tensor, g: torch.Generator, brightness: float = 0.0, contrast: float = 0.0,
                 saturation: float = 0.0, hue: float = 0.0) -> Tensor:
    """Per-sample colour jitter with torchvision's parameter ranges.

    Brightness, contrast and saturation factors are uniform in [1 - v, 1 + v]; hue is a rotation
    of the chroma plane in YIQ space by an angle uniform in [-hue, hue] * 2 pi (hue <= 0.5).
    """
    n = images.shape[0]
    dev, dt = images.device, images.dtype
    x = images
    if brightness > 0:
        f = _uniform(n, max(0.0, 1 - brightness), 1 + brightness, g).to(dev, dt).view(-1, 1, 1, 1)
        x = (x * f).clamp(0, 1)
    if contrast > 0:
        f = _uniform(n, max(0.0, 1 - contrast), 1 + contrast, g).to(dev, dt).view(-1, 1, 1, 1)
        gray = (x * torch.tensor([0.299, 0.587, 0.114], device=dev, dtype=dt).view(1, 3, 1, 1)).sum(1, keepdim=True)
        mean = gray.mean(dim=(2, 3), keepdim=True)
        x = (mean + f * (x - mean)).clamp(0, 1)
    if saturation > 0:
        f = _uniform(n, max(0.0, 1 - saturation), 1 + saturation, g).to(dev, dt).view(-1, 1, 1, 1)
        gray = (x * torch.tensor([0.299, 0.587, 0.114], device=dev, dtype=dt).view(1, 3, 1, 1)).sum(1, keepdim=True)
        x = (gray + f * (x - gray)).clamp(0, 1)
    if hue > 0:
        angle = _uniform(n, -hue, hue, g) * 2 * math.pi
        m, minv = _yiq(dev, dt)
        cos, sin = torch.cos(angle).to(dev, dt), torch.sin(angle).to(dev, dt)
        rot = torch.zeros(n, 3, 3, device=dev, dtype=dt)
        rot[:, 0, 0] = 1
        rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
        full = minv @ rot @ m  # [n, 3, 3]
        x = torch.einsum("nij,njhw->nihw", full, x).clamp(0, 1)
    return x
