"""The inversion-specific GAN of KED-MI (Chen et al., ICCV 2021): networks and losses.

Follows github.com/SCccc21/Knowledge-Enriched-DMI at 1ec92f4 (``generator.py: Generator``,
``discri.py: MinibatchDiscriminator``, ``k+1_gan.py``, ``utils.py: softXEnt, HLoss, log_sum_exp``),
written anew for any power-of-two resolution of at least 16 px (the reference is fixed at 64 px).

* :class:`KEDGenerator`: ``z`` -> Linear (no bias) + BatchNorm1d + ReLU to a 4x4 map of
  ``width * 2**(n-1)`` channels, then ``n - 1`` transposed 5x5 convolutions (stride 2, batch norm,
  ReLU) halving the channels, a last transposed 5x5 convolution to RGB and a sigmoid: images in
  [0, 1] (64 px: 8w, 4w, 2w, w channels, as the reference).
* :class:`KEDDiscriminator`: ``n`` stride-2 convolutions (5x5, the last 3x3) with affine instance
  norm and LeakyReLU(0.2), channels ``w, 2w, 4w, 4w, ...`` (capped at 4w), down to 4x4; the
  flattened features go through :class:`MinibatchDiscrimination` (Salimans et al., NeurIPS 2016;
  64 kernels of 50 dimensions) into a linear layer with one logit per target class (no extra
  "fake" logit: the real/fake score is ``logsumexp`` of the class logits). It takes images in
  [0, 1] (the reference feeds it un-normalised images) and returns ``(features, logits)``; the
  features (before minibatch discrimination) are what the generator's feature matching compares.

The losses, as in ``k+1_gan.py`` (each a small pure function below):

* discriminator: ``L_lab + L_unlab`` with ``L_lab = soft_cross_entropy(D(x_pub), T(x_pub))`` (the
  target's softmax as soft labels) and ``L_unlab = 0.5 * (mean softplus(lse(D(x))) - mean lse(D(x))
  + mean softplus(lse(D(G(z)))))``;
* generator: ``mean_d |mean_batch f(G(z)) - mean_batch f(x')| + 1e-4 * H(D(G(z)))`` with ``H`` the
  entropy of the class prediction summed over the batch (``HLoss``), ``x'`` another public batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inversion_bench.errors import ConfigError


def stages(resolution: int) -> int:
    """Number of stride-2 stages between 4 px and ``resolution`` (a power of two >= 16)."""
    n = round(math.log2(max(resolution, 1))) - 2
    if resolution < 16 or 4 * 2**n != resolution:
        raise ConfigError(f"ked-mi: resolution {resolution} is not supported; the GAN needs a power of two of "
                          "at least 16 px (set dataset.resolution to e.g. 32 or 64)")
    return n


# ------------------------------------------------------------------------------------------------
# losses (pure functions)
# ------------------------------------------------------------------------------------------------
def log_sum_exp(logits: Tensor) -> Tensor:
    """``log sum_k exp(l_k)`` per row ([N, K] -> [N]): the discriminator's real/fake logit."""
    return torch.logsumexp(logits.float(), dim=1)


def soft_cross_entropy(logits: Tensor, target_logits: Tensor) -> Tensor:
    """Cross-entropy of ``logits`` against the soft labels ``softmax(target_logits)``, batch mean
    (the labelled loss, ``softXEnt``)."""
    p = target_logits.float().softmax(dim=1)
    return -(p * logits.float().log_softmax(dim=1)).sum() / logits.shape[0]


def unlabeled_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The unlabelled real/fake loss of the semi-supervised discriminator.

    ``0.5 * (mean softplus(lse(real)) - mean lse(real) + mean softplus(lse(fake)))``, i.e. the binary
    cross-entropy with ``D(x) = sigmoid(lse(logits))`` (real: ``-log D``, fake: ``-log(1 - D)``).
    """
    lr, lf = log_sum_exp(real_logits), log_sum_exp(fake_logits)
    return 0.5 * (F.softplus(lr).mean() - lr.mean() + F.softplus(lf).mean())


def prior_loss_per_sample(logits: Tensor) -> Tensor:
    """The recovery's prior loss per sample: ``softplus(lse) - lse = -log sigmoid(lse)`` ([N])."""
    lse = log_sum_exp(logits)
    return F.softplus(lse) - lse


def feature_matching_loss(fake_features: Tensor, real_features: Tensor) -> Tensor:
    """Mean absolute difference of the batch-mean discriminator features of fake and real images."""
    return (fake_features.float().mean(dim=0) - real_features.float().mean(dim=0)).abs().mean()


def entropy_sum(logits: Tensor) -> Tensor:
    """Entropy of ``softmax(logits)`` summed over the batch (``HLoss``): ``-sum p log p``."""
    x = logits.float()
    return -(x.softmax(dim=1) * x.log_softmax(dim=1)).sum()


def reparameterize(mu: Tensor, log_var: Tensor, eps: Tensor) -> Tensor:
    """``mu + exp(log_var / 2) * eps``: a sample of N(mu, exp(log_var)) from standard noise ``eps``."""
    return mu + torch.exp(0.5 * log_var) * eps


def minibatch_features(x: Tensor, kernels: Tensor) -> Tensor:
    """Minibatch discrimination: ``o[i, b] = sum_{j != i} exp(-||M_ib - M_jb||_1)``, ``M = x T``.

    Args:
        x: [N, A] features.
        kernels: [A, B, C] the learned tensor T.

    Returns:
        [N, B] closeness of each sample to the rest of its batch (per kernel).
    """
    a, b, c = kernels.shape
    m = (x @ kernels.reshape(a, b * c)).view(-1, b, c).transpose(0, 1)  # [B, N, C]
    dist = torch.cdist(m, m, p=1.0)  # [B, N, N] L1 distances
    return (torch.exp(-dist).sum(dim=2) - 1.0).t()  # the self term exp(0) = 1 removed


# ------------------------------------------------------------------------------------------------
# networks
# ------------------------------------------------------------------------------------------------
class KEDGenerator(nn.Module):
    """[N, z_dim] -> [N, 3, R, R] in [0, 1] (sigmoid)."""

    def __init__(self, z_dim: int, width: int, resolution: int) -> None:
        super().__init__()
        n = stages(resolution)
        chans = [width * 2 ** (n - 1 - i) for i in range(n)]
        self.z_dim, self.c0 = z_dim, chans[0]
        self.project = nn.Sequential(nn.Linear(z_dim, chans[0] * 16, bias=False),
                                     nn.BatchNorm1d(chans[0] * 16), nn.ReLU())
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.ConvTranspose2d(cin, cout, 5, 2, padding=2, output_padding=1, bias=False),
                       nn.BatchNorm2d(cout), nn.ReLU()]
        layers += [nn.ConvTranspose2d(chans[-1], 3, 5, 2, padding=2, output_padding=1), nn.Sigmoid()]
        self.up = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.up(self.project(z).view(z.shape[0], self.c0, 4, 4))


class MinibatchDiscrimination(nn.Module):
    """Appends :func:`minibatch_features` ([N, out_features]) to [N, in_features] features."""

    def __init__(self, in_features: int, out_features: int, kernel_dims: int) -> None:
        super().__init__()
        self.kernels = nn.Parameter(torch.randn(in_features, out_features, kernel_dims))  # N(0, 1) as the reference

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, minibatch_features(x, self.kernels)], dim=1)


class KEDDiscriminator(nn.Module):
    """[N, 3, R, R] in [0, 1] -> (features [N, F], class logits [N, num_classes])."""

    def __init__(self, width: int, resolution: int, num_classes: int, mbd_kernels: int = 64,
                 mbd_kernel_dim: int = 50) -> None:
        super().__init__()
        n = stages(resolution)
        chans = [3] + [width * min(2**i, 4) for i in range(n)]
        layers: list[nn.Module] = []
        for i in range(n):
            k = 3 if i == n - 1 else 5
            layers += [nn.Conv2d(chans[i], chans[i + 1], k, 2, k // 2), nn.InstanceNorm2d(chans[i + 1], affine=True),
                       nn.LeakyReLU(0.2)]
        self.convs = nn.Sequential(*layers)
        self.resolution = resolution
        feat = chans[-1] * 16
        self.mbd = MinibatchDiscrimination(feat, mbd_kernels, mbd_kernel_dim)
        self.fc = nn.Linear(feat + mbd_kernels, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.resolution)
        feat = self.convs(x).flatten(1)
        return feat, self.fc(self.mbd(feat))


def build_networks(config: dict) -> tuple[KEDGenerator, KEDDiscriminator]:
    """The generator and discriminator described by a trained state's ``config``."""
    c = config
    return (KEDGenerator(c["z_dim"], c["g_width"], c["resolution"]),
            KEDDiscriminator(c["d_width"], c["resolution"], c["num_classes"], c["mbd_kernels"], c["mbd_kernel_dim"]))


# ------------------------------------------------------------------------------------------------
# training (``k+1_gan.py``)
# ------------------------------------------------------------------------------------------------
class BatchStream:
    """Endless batches of positions in ``range(n)``, reshuffled with ``generator`` after each pass
    (the last partial batch of a pass is dropped: batch norm needs full batches)."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.bs, self.g = n, min(batch_size, n), generator
        self._order, self._at = torch.randperm(n, generator=generator), 0

    def next(self) -> Tensor:
        if self._at + self.bs > self.n:
            self._order, self._at = torch.randperm(self.n, generator=self.g), 0
        pos = self._order[self._at : self._at + self.bs]
        self._at += self.bs
        return pos


def discriminator_loss(d: KEDDiscriminator, labeled: Tensor, soft_logits: Tensor, unlabeled: Tensor,
                       fake: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(L_lab + L_unlab, L_lab, accuracy of D on the target's top-1 labels)`` of one D step."""
    _, out_label = d(labeled)
    _, out_unlabel = d(unlabeled)
    _, out_fake = d(fake)
    loss_lab = soft_cross_entropy(out_label, soft_logits)
    acc = (out_label.argmax(1) == soft_logits.argmax(1)).float().mean()
    return loss_lab + unlabeled_loss(out_unlabel, out_fake), loss_lab, acc


def generator_loss(d: KEDDiscriminator, fake: Tensor, unlabeled: Tensor, entropy_weight: float) -> Tensor:
    """Feature matching against a public batch plus ``entropy_weight`` times the summed entropy."""
    feat_fake, out_fake = d(fake)
    with torch.no_grad():
        feat_real, _ = d(unlabeled)
    return feature_matching_loss(feat_fake, feat_real) + entropy_weight * entropy_sum(out_fake)
