"""``toy2d``: Gaussian clusters in the plane, the toy data of Struppek et al. (ICLR 2024), Fig. 1.

Struppek, Hintersdorf and Kersting, "Be Careful What You Smooth For: Label Smoothing Can Be a
Privacy Shield but Also a Catalyst for Model Inversion Attacks", ICLR 2024, illustrate their finding
on a 2-D toy problem: small classifiers trained with hard labels, label smoothing (alpha = 0.1) and
negative label smoothing (alpha = -0.05) on a few Gaussian clusters, with the trajectory of a model
inversion attack drawn over the decision regions. This module generates such data; ``suites/
toy2d.yaml`` runs the experiment and ``leaderboard/toy2d.py`` draws the figure.

Encoding. Every tensor passed between modules is an image batch (float NCHW, 3 channels, in [0, 1];
see benchmark/interfaces.py), so a point ``(x, y)`` in the unit square becomes a flat image of
3 channels: channel 0 holds ``x``, channel 1 holds ``y`` and channel 2 the constant
:data:`PAD_VALUE`; every pixel is the same. At resolution 1 that is a [3, 1, 1] tensor. The
``mlp`` architecture with ``in_channels: 2`` and ``input_size: 1`` reads exactly the two
coordinates (the spatial mean of channels 0 and 1), so attacks move the point in the plane and
the padding channel never receives a gradient. :func:`decode_points` inverts the encoding.

Layout. The ``num_classes`` private clusters (identities 0..C-1, chosen by the split with
``selection: first``) have their centres evenly spaced on a circle of radius ``radius`` around
(0.5, 0.5), rotated by a seeded angle; the ``public_classes`` clusters (identities C..C+P-1, the
attacker's auxiliary data for the split machinery) lie on an outer circle, between them. Points are
``centre + spread * N(0, I)``, clipped to the unit square.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from pydantic import Field
from torch import Tensor

from inversion_bench.data import DatasetPlugin, FaceCollection
from inversion_bench.errors import ConfigError
from inversion_bench.registry import PluginParams, datasets

PAD_VALUE = 0.5  # the constant third channel of an encoded point (MI-Face's neutral start value)


def encode_points(points: Tensor, resolution: int = 1) -> Tensor:
    """Points [N, 2] in [0, 1] -> flat images [N, 3, R, R]: (x, y, :data:`PAD_VALUE`) per pixel."""
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must be [N, 2], got {tuple(points.shape)}")
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    pts = points.float()
    pad = torch.full((pts.shape[0], 1), PAD_VALUE, dtype=pts.dtype, device=pts.device)
    return torch.cat([pts, pad], dim=1).view(-1, 3, 1, 1).expand(-1, 3, resolution, resolution).contiguous()


def decode_points(images: Tensor) -> Tensor:
    """Encoded images [..., C >= 2, H, W] -> points [..., 2]: the spatial mean of channels 0 and 1."""
    if images.ndim < 3 or images.shape[-3] < 2:
        raise ValueError(f"expected images [..., C >= 2, H, W], got {tuple(images.shape)}")
    return images[..., :2, :, :].float().mean(dim=(-2, -1))


def cluster_centres(num_classes: int, public_classes: int, radius: float, seed: int) -> Tensor:
    """[C + P, 2] cluster centres: private ones on the inner circle, public ones on the outer one."""
    g = torch.Generator().manual_seed(seed)
    offset = float(torch.rand(1, generator=g)) * 2 * math.pi
    angles = [offset + 2 * math.pi * k / num_classes for k in range(num_classes)]
    radii = [radius] * num_classes
    outer = min(0.45, 1.7 * radius)
    angles += [offset + 2 * math.pi * (j + 0.5) / max(public_classes, 1) for j in range(public_classes)]
    radii += [outer] * public_classes
    a, r = torch.tensor(angles), torch.tensor(radii)
    return torch.stack([0.5 + r * torch.cos(a), 0.5 + r * torch.sin(a)], dim=1)


def make_points(num_classes: int, public_classes: int, points_per_class: int, spread: float,
                radius: float, seed: int) -> tuple[Tensor, Tensor]:
    """Points [N, 2] in [0, 1] and their classes [N] (class-major order), deterministic in ``seed``."""
    centres = cluster_centres(num_classes, public_classes, radius, seed)
    g = torch.Generator().manual_seed(seed + 1)
    n_cls = centres.shape[0]
    noise = torch.randn(n_cls, points_per_class, 2, generator=g) * spread
    points = (centres.view(n_cls, 1, 2) + noise).reshape(-1, 2).clamp(0.0, 1.0)
    labels = torch.arange(n_cls).repeat_interleave(points_per_class)
    return points, labels


class PointCollection(FaceCollection):
    """Points in the unit square, handed out as encoded images (see :func:`encode_points`)."""

    def __init__(self, points: Tensor, targets: Tensor, identity_names: list[str], resolution: int) -> None:
        if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] != targets.numel():
            raise ValueError("PointCollection expects points [N, 2] and targets [N]")
        self.points = points.float()
        self.targets = targets.long()
        self.identity_names = list(identity_names)
        self.resolution = resolution

    def __len__(self) -> int:
        return int(self.targets.numel())

    def get(self, indices: Sequence[int] | Tensor) -> Tensor:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return encode_points(self.points[idx], self.resolution)


@datasets.register("toy2d")
class Toy2D(DatasetPlugin):
    """Gaussian clusters in 2-D encoded as flat images, the toy of Struppek et al. (ICLR 2024), Fig. 1."""

    version = "1"
    generated = True  # nothing read from disk: the resolved identities follow from the parameters

    class Params(PluginParams):
        num_classes: int = Field(3, ge=2, le=64, description="private clusters (the target's classes)")
        public_classes: int = Field(
            2, ge=0, le=64, description="extra clusters for the split's public identities (the attacker's data)")
        points_per_class: int = Field(100, ge=2, le=100_000, description="points drawn per cluster")
        spread: float = Field(0.05, gt=0.0, le=0.5, description="std of each cluster, in unit-square coordinates")
        radius: float = Field(
            0.25, gt=0.0, le=0.45, description="distance of the private cluster centres from (0.5, 0.5)")
        seed: int = Field(0, ge=0, description="seed of the layout and of every point")

    def listing(self) -> tuple[list[str], list[int]]:
        p = self.params
        assert isinstance(p, Toy2D.Params)
        names = [f"class{k}" for k in range(p.num_classes)] + [f"public{j}" for j in range(p.public_classes)]
        return names, [p.points_per_class] * len(names)

    def load(self, resolution: int) -> FaceCollection:
        """The clusters as a collection of flat ``resolution`` x ``resolution`` images."""
        p = self.params
        assert isinstance(p, Toy2D.Params)
        if resolution < 1:
            raise ConfigError(f"dataset.resolution: toy2d needs a resolution >= 1, got {resolution}")
        points, labels = make_points(p.num_classes, p.public_classes, p.points_per_class, p.spread,
                                     p.radius, p.seed)
        names = [f"class{k}" for k in range(p.num_classes)] + [f"public{j}" for j in range(p.public_classes)]
        return PointCollection(points, labels, names, resolution)
