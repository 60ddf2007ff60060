"""Identity losses of the generative model inversion attacks, as small pure functions.

Every function takes the target's logits ``[N, C]`` and the attacked classes ``[N]`` (int64) and
returns one loss per sample (``[N]``), so the caller decides how to reduce them: the attacks sum
them, which gives every latent the gradient of its own loss whatever the batch composition.

* :func:`poincare_loss`: Plug & Play Attacks (Struppek et al., ICML 2022, Eq. 2), the hyperbolic
  distance between the L1-normalised logits and an (almost) one-hot target vector.
* :func:`cross_entropy_loss`: the identity loss of GMI (Zhang et al., CVPR 2020).
* :func:`logit_loss`: LOMMA's logit maximisation (Nguyen et al., CVPR 2023, "Re-thinking Model
  Inversion Attacks Against Deep Neural Networks", Eq. 4 without its feature regulariser): the
  negative logit of the attacked class, ``-z_y`` (as in the Struppek et al. ICLR 2024 loss
  comparison). LOMMA's feature regulariser ``lambda * mean_d (phi_d(x) - p_reg_d)^2``, with ``p_reg``
  estimated from public images passed through the target, and its model augmentation are in
  :mod:`inversion_bench.attacks.common.lomma` (attack parameters ``p_reg_weight``, ``augment_models``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

IdentityLossName = Literal["poincare", "cross_entropy", "logit"]
IdentityLoss = Callable[[Tensor, Tensor], Tensor]


def poincare_loss(logits: Tensor, targets: Tensor, xi: float = 1e-4) -> Tensor:
    """Poincaré distance between normalised logits and a shrunk one-hot vector (PPA, Eq. 2).

    ``u = logits / ||logits||_1``, ``v = clip(onehot(y) - xi, 0, 1)`` and
    ``d(u, v) = arccosh(1 + 2 ||u - v||^2 / ((1 - ||u||^2) (1 - ||v||^2)))``.

    Args:
        logits: [N, C] raw target outputs.
        targets: [N] attacked classes.
        xi: the amount subtracted from the one-hot vector so that ``||v|| < 1`` (1e-4 in PPA).

    Returns:
        [N] per-sample distances (>= 0), float32.

    The distance is computed in float64: ``1 - ||v||^2`` is about ``2 xi`` and loses most of its
    digits in float32 (the reference's float32 value differs by ~2e-5 relative).
    """
    x = logits.double()
    u = x / x.abs().sum(dim=1, keepdim=True).clamp_min(1e-12)
    v = (F.one_hot(targets, x.shape[1]).to(x.dtype) - xi).clamp(0.0, 1.0)
    u_sq = (u * u).sum(dim=1)
    v_sq = (v * v).sum(dim=1)
    diff_sq = ((u - v) ** 2).sum(dim=1)
    delta = 2.0 * diff_sq / ((1.0 - u_sq) * (1.0 - v_sq))
    return torch.arccosh(1.0 + delta).float()


def cross_entropy_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-sample cross-entropy of the attacked class (GMI's identity loss)."""
    return F.cross_entropy(logits.float(), targets, reduction="none")


def logit_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """LOMMA's logit loss: the negative raw logit of the attacked class, ``-z_y`` (per sample)."""
    return -logits.float().gather(1, targets.view(-1, 1)).squeeze(1)


IDENTITY_LOSSES: dict[str, IdentityLoss] = {
    "poincare": poincare_loss,
    "cross_entropy": cross_entropy_loss,
    "logit": logit_loss,
}


def identity_loss(name: str) -> IdentityLoss:
    """The per-sample identity loss called ``name`` (one of :data:`IDENTITY_LOSSES`)."""
    try:
        return IDENTITY_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown identity loss {name!r}; choose one of {sorted(IDENTITY_LOSSES)}") from None


def target_confidence(logits: Tensor, targets: Tensor) -> Tensor:
    """Softmax probability of the attacked class, per sample ([N])."""
    return logits.float().softmax(dim=1).gather(1, targets.view(-1, 1)).squeeze(1)
