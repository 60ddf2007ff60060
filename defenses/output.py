"""Output (inference-time) defenses: the target trains like hard labels, the attacker sees changed scores.

Both defenses act through the ``postprocess`` hook: the runner wraps the target in a
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
