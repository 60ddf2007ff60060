"""MID: mutual information regularisation through a variational information bottleneck.

Wang, Zhang, Jia, Kifer and Chaudhuri, "Improving Robustness to Model Inversion Attacks via
Mutual Information Regularization", AAAI 2021.

The classifier head is replaced by a stochastic bottleneck: a linear layer maps the features to
the mean ``mu`` and the scale of a Gaussian ``q(z|x)`` of dimension ``bottleneck``; training
samples ``z = mu + sigma * eps`` (eps ~ N(0, I)), inference uses ``z = mu``; a linear classifier
maps ``z`` to logits. The loss bounds I(X; Z) from above with the KL divergence to the prior:

    L = CE(logits, y) + beta * KL(q(z|x) || N(0, I)),
    KL = 1/2 * sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2)   (summed over z, averaged over the batch)

As in the authors' implementation (github.com/Jiachen-T-Wang/mi-defense), sigma is
``softplus(s - 5)`` of the second half of the linear layer's output, so training starts with a
small sigma (about 0.0067); the log-variance handed to the KL is ``2 * log(sigma)``.

Defaults from the authors' code for VGG16 on CelebA: ``beta = 0.003`` (``train_vib.py``; the BiDO
paper, Peng et al. KDD 2022, also evaluates MID at 0.003, 0.01 and 0.02) and a bottleneck of half
the feature dimension (``k = feat_dim // 2``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from inversion_bench.interfaces import Classifier, Defense
from inversion_bench.registry import PluginParams, defenses
from inversion_bench.training import Trainer

SIGMA_SHIFT = 5.0  # sigma = softplus(s - 5), as in the reference implementation


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)): summed over dimensions, averaged over the batch."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1).mean()


class VIBHead(nn.Module):
    """Features -> (mu, log-variance) of z -> logits. Keeps the KL term of its last training forward in ``last_kl``."""

    def __init__(self, in_features: int, bottleneck: int, num_classes: int) -> None:
        super().__init__()
        self.bottleneck = bottleneck
        self.stats = nn.Linear(in_features, 2 * bottleneck)
        self.classifier = nn.Linear(bottleneck, num_classes)
        self.last_kl: Tensor | None = None

    def encode(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """The mean and log-variance of q(z | features)."""
        s = self.stats(features)
        mu, raw = s[:, : self.bottleneck], s[:, self.bottleneck :]
        sigma = F.softplus(raw - SIGMA_SHIFT)
        return mu, 2.0 * torch.log(sigma.clamp_min(1e-20))

    def forward(self, features: Tensor) -> Tensor:
        mu, logvar = self.encode(features)
        if self.training:
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            self.last_kl = gaussian_kl(mu.float(), logvar.float())
        else:  # inference: the mean, and no graph kept on the module (attacks, deepcopy)
            z = mu
            self.last_kl = None
        return self.classifier(z)

    def pop_kl(self) -> Tensor | None:
        """The KL term of the last forward, once (a second call returns None)."""
        kl, self.last_kl = self.last_kl, None
        return kl


@defenses.register("mid")
class MID(Defense):
    """MID (Wang et al., AAAI 2021): information bottleneck head, loss CE + beta * KL(q(z|x) || N(0, I))."""

    class Params(PluginParams):
        beta: float = Field(0.003, ge=0.0, description="weight of the KL term (authors' VGG16/CelebA value)")
        bottleneck: int | None = Field(
            None, ge=1, description="dimension of z (default: half the feature dimension, as in the reference)")

    def __init__(self, params: PluginParams) -> None:
        super().__init__(params)
        self.head: VIBHead | None = None

    def configure_model(self, model: Classifier) -> Classifier:
        k = self.params.bottleneck or max(1, model.feature_dim // 2)
        self.head = VIBHead(model.feature_dim, k, model.num_classes)
        model.head = self.head
        return model

    def fit(self, model: Classifier, trainer: Trainer) -> Classifier:
        if isinstance(model.head, VIBHead):
            self.head = model.head
        return super().fit(model, trainer)

    def criterion(self, logits: Tensor, targets: Tensor, progress: float) -> Tensor:
        loss = F.cross_entropy(logits, targets)
        kl = self.head.pop_kl() if self.head is not None else None
        if kl is not None:  # None for a second loss on the same forward (e.g. Inception's auxiliary logits)
            loss = loss + self.params.beta * kl
        return loss
