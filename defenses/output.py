"""Output (inference-time) defenses: the target trains like hard labels, the attacker sees changed scores.

These defenses act through the ``postprocess`` hook: the runner wraps the target in a
``PostprocessedClassifier``, so every attack that reads the target's outputs (logits, softmax
scores, gradients through them) sees the processed values. The recorded test accuracy is the raw
model's (top-k keeps the argmax; rounding keeps it up to ties between classes rounded to the same
value).

- ``top_k_logits``: prediction truncation, releasing only the k highest scores. Salem et al.,
  "ML-Leaks: Model and Data Independent Membership Inference Attacks and Defenses on Machine
  Learning Models", NDSS 2019 (top-3 as their default restriction); the other logits are set to a
  large negative value so their softmax probability is ~0.
- ``confidence_rounding``: rounding the confidence scores. Fredrikson, Jha and Ristenpart, "Model
  Inversion Attacks that Exploit Confidence Information and Basic Countermeasures", CCS 2015,
  round to 0.001-0.05; the default here, 2 decimals (0.01), is one of their levels. The output is
  ``log(max(round(softmax(logits), decimals), floor))``, so a softmax over it gives the rounded
  probabilities (renormalised) and rounding hides the gradient (zero almost everywhere).
- ``gaussian_noise_logits``: Gaussian noise on the output probabilities, as the Adversarial
  Robustness Toolbox's ``GaussianNoise`` postprocessor (``art/defences/postprocessor/
  gaussian_noise.py``, github.com/Trusted-AI/adversarial-robustness-toolbox at commit
  23539e2c06045d78594b6b6da533eed57967e410): noise of std ``scale`` (ART's default 0.2) is added
  to each probability, negative values are set to 0 and each row is divided by its sum. The
  output is ``log(max(noised, floor))``, so a softmax over it gives the noised probabilities (up to
  the floor). A row whose noised values are all <= 0 (ART divides 0 by 0 there) comes out uniform.
  The gradient flows through the kept (positive) probabilities; the noise itself carries none
  (ART's estimators compute gradients without their postprocessors; here, as for every
  ``postprocess``, white-box attacks differentiate what they see).
  Seeding: each defense instance owns a CPU generator seeded with ``seed``; every call draws fresh
  noise from it (as ART draws from NumPy's global generator on every ``predict``). The runner
  builds a fresh instance for every attack job, so an attack's noise stream is reproducible and
  independent of what other attacks queried. The recorded test accuracy is the raw model's: the
  noise can change the argmax.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from inversion_bench.interfaces import Defense
from inversion_bench.registry import PluginParams, defenses

MASKED_LOGIT = -1e4  # exp(-1e4 - max logit) underflows to 0 in float32 and bfloat16


def top_k_logits(logits: Tensor, k: int, fill: float = MASKED_LOGIT) -> Tensor:
    """Keeps the ``k`` largest logits of each row and sets the others to ``fill``."""
    k = min(k, logits.shape[1])
    idx = logits.topk(k, dim=1).indices
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, idx, True)
    return torch.where(keep, logits, torch.full_like(logits, fill))


def rounded_log_confidences(logits: Tensor, decimals: int, floor: float = 1e-8) -> Tensor:
    """``log(max(round(softmax(logits), decimals), floor))``."""
    probs = torch.softmax(logits.float(), dim=1)
    rounded = torch.round(probs, decimals=decimals)
    return torch.log(rounded.clamp_min(floor)).to(logits.dtype)


def noised_probabilities(probs: Tensor, noise: Tensor) -> Tensor:
    """ART's GaussianNoise on probabilities: ``max(probs + noise, 0)`` divided by its row sum
    (rows that sum to 0 stay 0: the caller decides what they become)."""
    kept = (probs + noise).clamp_min(0.0)
    total = kept.sum(dim=1, keepdim=True)
    return kept / torch.where(total > 0, total, torch.ones_like(total))


def noised_log_probabilities(logits: Tensor, noise: Tensor, floor: float = 1e-8) -> Tensor:
    """``log(max(noised_probabilities(softmax(logits), noise), floor))``: logits whose softmax is the
    noised probabilities (a row noised to all zeros gives equal logits: uniform)."""
    probs = torch.softmax(logits.float(), dim=1)
    noised = noised_probabilities(probs, noise.to(probs.device, probs.dtype))
    return torch.log(noised.clamp_min(floor)).to(logits.dtype)


def gaussian_noise_logits(logits: Tensor, scale: float, g: torch.Generator, floor: float = 1e-8) -> Tensor:
    """:func:`noised_log_probabilities` with noise ``scale * N(0, 1)`` drawn from the CPU generator ``g``."""
    noise = torch.randn(tuple(logits.shape), generator=g) * scale
    return noised_log_probabilities(logits, noise, floor)


@defenses.register("top-k-logits", aliases=("top_k_logits",))
class TopKLogits(Defense):
    """Prediction truncation (Salem et al., NDSS 2019): the attacker sees only the k largest logits."""

    # 2: attacks query the target in eval mode (before, a white-box attack using ``frozen`` left the
    # wrapped target in training mode, so later attacks saw batch statistics)
    version = "2"

    class Params(PluginParams):
        k: int = Field(3, ge=1, description="number of logits kept per image")

    def postprocess(self, logits: Tensor) -> Tensor:
        return top_k_logits(logits, self.params.k)


@defenses.register("confidence-rounding", aliases=("confidence_rounding",))
class ConfidenceRounding(Defense):
    """Confidence rounding (Fredrikson et al., CCS 2015): the attacker sees log(rounded softmax scores)."""

    # 2: attacks query the target in eval mode (before, a white-box attack using ``frozen`` left the
    # wrapped target in training mode, so later attacks saw batch statistics)
    version = "2"

    class Params(PluginParams):
        decimals: int = Field(2, ge=0, le=8, description="decimals the probabilities are rounded to")
        floor: float = Field(1e-8, gt=0.0, lt=1.0, description="probabilities rounded to 0 become this before the log")

    def postprocess(self, logits: Tensor) -> Tensor:
        return rounded_log_confidences(logits, self.params.decimals, self.params.floor)


@defenses.register("gaussian-noise", aliases=("gaussian_noise",))
class GaussianNoise(Defense):
    """Gaussian noise on the output probabilities (ART's GaussianNoise postprocessor), fresh on every query."""

    class Params(PluginParams):
        scale: float = Field(0.2, gt=0.0, description="std of the noise added to each probability (ART's default)")
        seed: int = Field(0, ge=0, description="seed of the noise stream (each attack job starts it afresh)")
        floor: float = Field(1e-8, gt=0.0, lt=1.0, description="probabilities clipped to 0 become this before the log")

    def __init__(self, params: PluginParams) -> None:
        super().__init__(params)
        self._generator: torch.Generator | None = None

    def postprocess(self, logits: Tensor) -> Tensor:
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.params.seed)
        return gaussian_noise_logits(logits, self.params.scale, self._generator, self.params.floor)

    def report(self) -> dict[str, float]:
        return {"extra_parameters": 0, "training_overhead_seconds": 0.0}
