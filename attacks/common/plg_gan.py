"""PLG-MI's pieces as small functions and modules: top-n pseudo-labels, the conditional GAN, its losses.

Yuan, Chen, Zhang, Zhang, Yu, Zhang, "Pseudo Label-Guided Model Inversion Attack via Conditional
Generative Adversarial Network" (AAAI 2023). Reference code: github.com/LetheSec/PLG-MI-Attack,
commit 3cf8735198d88f3d24c077c6035da541b721de7b. What is followed here (written anew):

* :func:`top_n_selection` (``top_n_selection.py``): every target class keeps, independently, the n
  public images of highest softmax confidence for that class. An image may be kept by several
  classes (the reference copies it into every class folder that selects it). The reference streams
  the images through a bounded priority queue and replaces the queue's minimum when the new
  confidence is ``>=`` it, so among equal confidences the later image wins: the kept set is the top n
  by (confidence, position), exactly what the function computes.
* :class:`ConditionalGenerator` (``models/generators/resnet64.py``, ``resblocks.py``,
  ``links/conditional_batchnorm.py``): a linear layer to a ``bottom_width``^2 map of
  ``width * 2^blocks`` channels, residual up-blocks (bilinear x2) with categorical conditional batch
  norm (batch norm without affine, per-class scale and shift embeddings initialised to 1 and 0),
  halving the channels per block down to ``width``, then BN, ReLU, a 1x1 conv and tanh. The
  reference has 4 blocks (4 -> 64 px, 16w..w channels); here ``log2(resolution / bottom_width)``.
* :class:`ProjectionDiscriminator` (``models/discriminators/snresnet64.py``, ``resblocks.py``):
  spectrally normalised residual down-blocks (an optimised first block, then ``c1: in -> in``,
  ``c2: in -> out``, average pooling), channels ``width``, ``2 width``, ... doubling to a 2x2 map
  (the reference's 5 blocks at 64 px, ``log2(resolution) - 1`` here), ReLU, global sum pooling, a
  spectrally normalised linear output plus the projection ``<embed(y), h>``; Xavier initialisation
  as in the reference (gain sqrt(2) on the residual convs).
* :func:`dis_hinge`, :func:`gen_hinge` (``losses.py``) and the reference's default inversion loss
  :func:`max_margin_loss` (``losses.py: max_margin_loss``), per sample: ``-z_y + max_{j != y} z_j``.
* :func:`plg_augment`: the kornia pipeline of both stages (``RandomResizedCrop`` scale 0.8-1.0,
  ratio 1; ``ColorJitter`` brightness 0.2, contrast 0.2 with p 0.5 in the GAN training and p 1 in
  the latent search; ``RandomHorizontalFlip``; ``RandomRotation(5)``), per sample, with the
  project's differentiable augmentations. Jitter applies brightness then contrast (kornia 0.6.6
  draws their order at random).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from inversion_bench import augment
from inversion_bench.errors import ConfigError

__all__ = ["ConditionalGenerator", "ProjectionDiscriminator", "dis_hinge", "gen_hinge", "max_margin_loss",
           "plg_augment", "rotate", "top_n_selection"]


# --------------------------------------------------------------------------------------------
# Selection and losses
# --------------------------------------------------------------------------------------------
def top_n_selection(probs: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """The reference's top-n pseudo-labelling of public images.

    Args:
        probs: [N, C] the target's softmax confidences of N public images for its C classes.
        n: images kept per class.

    Returns:
        (positions, labels), each [C * n] int64: class ``c`` keeps rows ``positions[c*n:(c+1)*n]``
        (highest confidence first; equal confidences: the later image first), labelled ``c``. The
        same image may be kept by several classes.
    """
    num, classes = probs.shape
    if n > num:
        raise ConfigError(f"plg-mi: top_n={n} exceeds the {num} public images; lower top_n")
    # Sorting the reversed rows stably in descending order puts, among ties, the later image first.
    reversed_probs = probs.flip(0).T  # [C, N]
    order = torch.sort(reversed_probs, dim=1, descending=True, stable=True).indices[:, :n]
    positions = (num - 1 - order).reshape(-1)
    labels = torch.arange(classes).repeat_interleave(n)
    return positions.long(), labels


def max_margin_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """PLG-MI's inversion loss per sample: ``-z_y + max_{j != y} z_j`` (logits [N, C], targets [N])."""
    x = logits.float()
    real = x.gather(1, targets.view(-1, 1)).squeeze(1)
    others = x.scatter(1, targets.view(-1, 1), float("-inf"))
    return -real + others.max(dim=1).values


def dis_hinge(dis_fake: Tensor, dis_real: Tensor) -> Tensor:
    """Hinge loss of the discriminator: ``mean relu(1 - D(real)) + mean relu(1 + D(fake))``."""
    return F.relu(1.0 - dis_real.float()).mean() + F.relu(1.0 + dis_fake.float()).mean()


def gen_hinge(dis_fake: Tensor) -> Tensor:
    """Hinge loss of the generator: ``-mean D(fake)``."""
    return -dis_fake.float().mean()


# --------------------------------------------------------------------------------------------
# Augmentations
# --------------------------------------------------------------------------------------------
def rotate(images: Tensor, degrees: Tensor) -> Tensor:
    """Rotates each image about its centre by ``degrees[i]``, counter-clockwise for positive angles
    (bilinear, zeros outside, like kornia)."""
    rad = degrees.to(images.device, images.dtype) * (math.pi / 180.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    theta = torch.zeros(images.shape[0], 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def plg_augment(images: Tensor, g: torch.Generator, *, crop_scale: tuple[float, float] = (0.8, 1.0),
                brightness: float = 0.2, contrast: float = 0.2, jitter_p: float = 1.0, flip_p: float = 0.5,
                degrees: float = 5.0) -> Tensor:
    """Random resized crop (+ flip), colour jitter with probability ``jitter_p``, rotation; per sample."""
    n = images.shape[0]
    x = augment.random_resized_crop(images, g, scale=crop_scale, ratio=(1.0, 1.0), flip_p=flip_p)
    if jitter_p > 0 and (brightness > 0 or contrast > 0):
        jittered = augment.color_jitter(x, g, brightness=brightness, contrast=contrast)
        chosen = (torch.rand(n, generator=g) < jitter_p).to(x.device).view(-1, 1, 1, 1)
        x = torch.where(chosen, jittered, x)
    if degrees > 0:
        x = rotate(x, (torch.rand(n, generator=g) * 2 - 1) * degrees)
    return x


# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------
def num_blocks(resolution: int, start: int, what: str) -> int:
    """``log2(resolution / start)``; a ConfigError unless that is a positive integer."""
    ratio = resolution / start
    blocks = round(math.log2(ratio)) if ratio >= 2 else 0
    if blocks < 1 or start * 2**blocks != resolution:
        raise ConfigError(f"plg-mi: the {what} needs resolution / {start} to be a power of two >= 2, got "
                          f"resolution {resolution} (set gen_bottom_width to divide it)")
    return blocks


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm without affine parameters, then a per-class scale (init 1) and shift (init 0)."""

    def __init__(self, num_classes: int, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.weights = nn.Embedding(num_classes, channels)
        self.biases = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.weights.weight)
        nn.init.zeros_(self.biases.weight)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.bn(x) * self.weights(y)[:, :, None, None] + self.biases(y)[:, :, None, None]


class _GenBlock(nn.Module):
    def __init__(self, cin: int, cout: int, num_classes: int) -> None:
        super().__init__()
        self.b1 = ConditionalBatchNorm2d(num_classes, cin)
        self.c1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.b2 = ConditionalBatchNorm2d(num_classes, cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.c_sc = nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        up = lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)  # noqa: E731
        h = self.c1(up(F.relu(self.b1(x, y))))
        h = self.c2(F.relu(self.b2(h, y)))
        return self.c_sc(up(x)) + h


class ConditionalGenerator(nn.Module):
    """The reference's ResNet generator with conditional batch norm: ``forward(z, y)`` -> tanh images.

    The output is used as an image on the [0, 1] scale. The reference uses tanh itself (its
    discriminator sees real images in [0, 1] and its target takes [0, 1] input, so the generator must
    learn to avoid the negative half of its range; values below 0 are clamped only when images leave
    the attack); ``unit_output`` maps it to ``(tanh + 1) / 2`` instead, which covers [0, 1] exactly.
    """

    def __init__(self, num_classes: int, resolution: int, *, width: int = 64, z_dim: int = 128,
                 bottom_width: int = 4, unit_output: bool = False) -> None:
        super().__init__()
        self.unit_output = unit_output
        blocks = num_blocks(resolution, bottom_width, "generator")
        self.z_dim, self.bottom_width, self.num_classes = z_dim, bottom_width, num_classes
        channels = [width * 2 ** (blocks - i) for i in range(blocks + 1)]
        self.l1 = nn.Linear(z_dim, channels[0] * bottom_width**2)
        self.blocks = nn.ModuleList(_GenBlock(channels[i], channels[i + 1], num_classes) for i in range(blocks))
        self.bn = nn.BatchNorm2d(width)
        self.conv = nn.Conv2d(width, 3, 1, 1)

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        h = self.l1(z).view(z.shape[0], -1, self.bottom_width, self.bottom_width)
        for block in self.blocks:
            h = block(h, y)
        out = torch.tanh(self.conv(F.relu(self.bn(h))))
        return (out + 1) / 2 if self.unit_output else out


def _sn_conv(cin: int, cout: int, k: int, gain: float) -> nn.Module:
    conv = nn.Conv2d(cin, cout, k, 1, k // 2)
    nn.init.xavier_uniform_(conv.weight, gain)
    return spectral_norm(conv)


class _DisBlock(nn.Module):
    def __init__(self, cin: int, cout: int, first: bool) -> None:
        super().__init__()
        self.first = first
        self.c1 = _sn_conv(cin, cout if first else cin, 3, math.sqrt(2))
        self.c2 = _sn_conv(cout if first else cin, cout, 3, math.sqrt(2))
        self.c_sc = _sn_conv(cin, cout, 1, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        if self.first:  # the reference's OptimizedBlock: no activation before c1, pool before c_sc
            return self.c_sc(F.avg_pool2d(x, 2)) + F.avg_pool2d(self.c2(F.relu(self.c1(x))), 2)
        h = F.avg_pool2d(self.c2(F.relu(self.c1(F.relu(x)))), 2)
        return F.avg_pool2d(self.c_sc(x), 2) + h


class ProjectionDiscriminator(nn.Module):
    """The reference's spectrally normalised ResNet projection discriminator: ``forward(x, y)`` -> [N, 1]."""

    def __init__(self, num_classes: int, resolution: int, *, width: int = 64) -> None:
        super().__init__()
        blocks = num_blocks(resolution, 2, "discriminator")
        channels = [3] + [width * 2**i for i in range(blocks)]
        self.blocks = nn.Sequential(*(_DisBlock(channels[i], channels[i + 1], i == 0) for i in range(blocks)))
        linear = nn.Linear(channels[-1], 1)
        nn.init.xavier_uniform_(linear.weight)
        self.l6 = spectral_norm(linear)
        embed = nn.Embedding(num_classes, channels[-1])
        nn.init.xavier_uniform_(embed.weight)
        self.l_y = spectral_norm(embed)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        h = F.relu(self.blocks(x)).sum(dim=(2, 3))
        return self.l6(h) + (self.l_y(y) * h).sum(dim=1, keepdim=True)
