"""Per-step traces of latent optimisation: loss, target confidence and gradient stability.

The gradient cosine follows the gradient stability analysis of Struppek et al. (ICLR 2024, "Be
Careful What You Smooth For", Sec. 4.3/Fig. 5): for every optimised latent the cosine similarity
between the gradients of two consecutive steps, averaged over the latents. Smoothed targets give
noisier (less aligned) gradients, which is one of the mechanisms the paper studies.

:class:`StepTrace` accumulates per-step sums on the optimisation device without synchronising,
so recording costs a few tiny tensor operations per step; the values are read once at the end.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from inversion_bench.errors import DivergedError


def gradient_cosine(previous: Tensor, current: Tensor, eps: float = 1e-12) -> Tensor:
    """Cosine similarity between matching rows of two gradient batches.

    Args:
        previous: [N, ...] gradients of the previous step.
        current: [N, ...] gradients of the current step (same shape).
        eps: lower bound of the norms; a zero gradient gives a cosine of 0.

    Returns:
        [N] cosine per latent (each row flattened), in [-1, 1].
    """
    if previous.shape != current.shape:
        raise ValueError(f"gradient shapes differ: {tuple(previous.shape)} vs {tuple(current.shape)}")
    a = previous.reshape(previous.shape[0], -1).float()
    b = current.reshape(current.shape[0], -1).float()
    return F.cosine_similarity(a, b, dim=1, eps=eps)


def cosine_series(gradients: Sequence[Tensor]) -> list[float]:
    """Mean cosine between consecutive gradients of a sequence of [N, ...] gradient batches.

    Element ``i`` compares steps ``i`` and ``i + 1``, so the result has ``len(gradients) - 1``
    entries (the first step has no predecessor).
    """
    return [float(gradient_cosine(p, c).mean()) for p, c in zip(gradients[:-1], gradients[1:], strict=True)]


class StepTrace:
    """Accumulates per-step means over all optimised latents (summed over batches).

    ``record`` is called once per step of every batch; each batch restarts at step 0 and the
    values of the same step are averaged over every latent of every batch.

    Args:
        num_steps: optimisation steps per batch.
        device: where the sums live (the optimisation device: no host sync per step).
    """

    LOSS, CONF, COS = 0, 1, 2

    def __init__(self, num_steps: int, device: torch.device) -> None:
        self.num_steps = num_steps
        self._sums = torch.zeros(max(num_steps, 1), 3, dtype=torch.float32, device=device)
        self._count = 0  # latents seen in finished batches
        self._batch = 0  # latents in the current batch
        self._prev: Tensor | None = None

    def begin_batch(self, size: int) -> None:
        self._batch = size
        self._prev = None

    @torch.no_grad()
    def record(self, step: int, loss: Tensor, confidence: Tensor, grad: Tensor) -> None:
        """Adds one step of the current batch.

        Args:
            step: 0-based step index.
            loss: [B] per-latent loss.
            confidence: [B] target confidence of the attacked class.
            grad: [B, ...] gradient of the loss with respect to the latents (copied here, so the
                optimiser may change it in place afterwards).
        """
        row = self._sums[step]
        row[self.LOSS] += loss.detach().sum()
        row[self.CONF] += confidence.detach().sum()
        if self._prev is not None:
            row[self.COS] += gradient_cosine(self._prev, grad).sum()
        self._prev = grad.detach().clone()

    def end_batch(self, desc: str = "attack") -> None:
        """Closes the batch; raises DivergedError if its loss or confidence became NaN or inf."""
        self._count += self._batch
        self._prev = None
        bad = ~torch.isfinite(self._sums[: self.num_steps]).all(dim=1)
        if bool(bad.any()):
            step = int(torch.nonzero(bad).flatten()[0]) + 1
            raise DivergedError(f"{desc}: the optimisation diverged (NaN or inf loss) at step {step}")

    def as_dict(self) -> dict[str, list[float]]:
        """``loss`` and ``confidence`` (one value per step) and ``grad_cosine`` (from step 2 on)."""
        if self.num_steps == 0 or self._count == 0:
            return {"loss": [], "confidence": [], "grad_cosine": []}
        means = (self._sums[: self.num_steps] / self._count).cpu()
        return {
            "loss": [float(v) for v in means[:, self.LOSS]],
            "confidence": [float(v) for v in means[:, self.CONF]],
            "grad_cosine": [float(v) for v in means[1:, self.COS]],
        }
