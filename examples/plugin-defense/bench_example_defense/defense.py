"""Gaussian noise on the logits the attacker sees: an output-perturbation defense.

Output perturbation answers every query with randomly perturbed scores, so an attack that reads
the target's confidences or gradients works with a noisy signal. This is the simple random-noise
baseline of the output-perturbation defenses (e.g. Jia et al., "MemGuard: Defending against
Black-Box Membership Inference Attacks via Adversarial Examples", CCS 2019, who craft the noise
instead). The target trains like hard labels; only the released outputs change.

Noise is drawn from PyTorch's default random generator, which the benchmark seeds before every
attack, so runs are reproducible. Fresh noise per query means that an attacker who repeats a query
can average it away: a weakness the benchmark should show, not hide.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from inversion_bench import Defense, PluginParams, defenses


def noisy_logits(logits: Tensor, std: float, generator: torch.Generator | None = None) -> Tensor:
    """``logits + N(0, std^2)`` noise, drawn independently for every entry."""
    if std == 0:
        return logits
    noise = torch.randn(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    return logits + std * noise


@defenses.register("gaussian-logit-noise")
class GaussianLogitNoise(Defense):
    """Adds Gaussian noise to the logits the attacker sees (output perturbation); trains like hard labels."""

    version = "1"  # part of the cache key of every target trained with this defense: bump it on changes

    class Params(PluginParams):
        std: float = Field(1.0, ge=0.0, description="standard deviation of the noise added to each logit")

    def postprocess(self, logits: Tensor) -> Tensor:
        return noisy_logits(logits, self.params.std)

    def report(self) -> dict[str, float]:
        return {"logit_noise_std": self.params.std}
