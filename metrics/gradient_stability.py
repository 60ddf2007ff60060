"""Gradient stability of an attack's optimisation: the mean cosine of consecutive gradients.

Struppek, Hintersdorf & Kersting (ICLR 2024, Sec. 4.3, Fig. 5) explain part of negative label
smoothing's protection by the attack's optimisation: on a target trained with negative smoothing,
the gradients of two consecutive optimisation steps (with respect to the optimised latents) are less
aligned, so the attack makes less consistent progress; positive smoothing gives stable, well
aligned gradients.

``grad_cosine`` is the mean over the optimisation steps of the attack's trace ``grad_cosine``
(:mod:`inversion_bench.attacks.common.trace`: per step, the cosine similarity between each latent's
gradient and its gradient one step earlier, averaged over the latents; the first step has none).
Lower = less aligned gradients = better for the defender. Attacks without gradients (black-box,
label-only) or with zero steps have no such trace; the metric is then unavailable, never a number.
"""

from __future__ import annotations

import math

from inversion_bench.errors import MetricUnavailableError
from inversion_bench.interfaces import Metric, MetricContext, MetricResult, Reconstruction
from inversion_bench.registry import metrics


def traced_cosines(series: list[float | None] | None) -> list[float]:
    """The finite values of a ``grad_cosine`` trace (None entries skipped); raises
    MetricUnavailableError when there are none."""
    values = [float(v) for v in (series or []) if v is not None and math.isfinite(float(v))]
    if not values:
        raise MetricUnavailableError("gradient stability: the attack traced no gradients "
                                     "(black-box/label-only or 0 steps)")
    return values


@metrics.register("gradient_stability")
class GradientStability(Metric):
    """Mean cosine similarity of consecutive attack gradients (Struppek et al., ICLR 2024, Sec. 4.3)."""

    better = {"grad_cosine": "lower"}

    def compute(self, rec: Reconstruction, ctx: MetricContext) -> MetricResult:
        values = traced_cosines(rec.trace.get("grad_cosine"))
        return MetricResult(values={"grad_cosine": sum(values) / len(values)},
                            details={"steps": len(values), "first": values[0], "last": values[-1]})
