"""Precision, recall, density and coverage (Naeem et al., "Reliable Fidelity and Diversity Metrics for
Generative Models", ICML 2020).

With k-nearest-neighbour balls (Euclidean, ``k`` = 3 by default) around each real sample
(radius: distance to its k-th nearest other real sample) and around each fake sample:

* precision: fraction of fake samples inside at least one real ball;
* recall: fraction of real samples inside at least one fake ball (Kynkäänniemi et al., 2019);
* density: mean number of real balls containing a fake sample, divided by k;
* coverage: fraction of real balls that contain at least one fake sample.

Struppek et al. ("Plug & Play Attacks", ICML 2022) compute them per attacked identity (fake = the
reconstructions of that identity, real = its private training images) and average over identities;
so does :class:`PRDC`. Higher values mean more faithful and more diverse reconstructions, i.e. more
leakage: ``better`` is "lower" for all four.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from inversion_bench.errors import MetricUnavailableError
from inversion_bench.interfaces import MetricContext, MetricResult, Reconstruction
from inversion_bench.metrics.extractors import provenance
from inversion_bench.metrics.feature_metric import (
    ExtractorParams,
    FeatureMetric,
    private_features,
    reconstruction_features,
)
from inversion_bench.registry import metrics

log = logging.getLogger(__name__)

PRDC_NAMES = ("precision", "recall", "density", "coverage")


def _pairwise(a: Tensor, b: Tensor) -> Tensor:
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def _kth_neighbour_radii(x: Tensor, k: int) -> Tensor:
    """Distance of each row to its k-th nearest other row (the row itself is the 0-th)."""
    return _pairwise(x, x).kthvalue(k + 1, dim=1).values


def prdc(real: Tensor | np.ndarray, fake: Tensor | np.ndarray, k: int = 3) -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake`` [N_f, D] with respect to ``real`` [N_r, D].

    Raises:
        ValueError: on malformed input or when a set has no more than ``k`` samples (the k-th
            nearest neighbour of a sample must be another sample).
    """
    r = torch.as_tensor(np.asarray(real) if not isinstance(real, Tensor) else real).detach().cpu().double()
    f = torch.as_tensor(np.asarray(fake) if not isinstance(fake, Tensor) else fake).detach().cpu().double()
    if r.ndim != 2 or f.ndim != 2 or r.shape[1] != f.shape[1]:
        raise ValueError(f"prdc needs [N, D] feature sets of equal D, got {tuple(r.shape)} and "
                         f"{tuple(f.shape)}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if r.shape[0] <= k or f.shape[0] <= k:
        raise ValueError(f"prdc with k={k} needs more than {k} samples per set, got {r.shape[0]} real "
                         f"and {f.shape[0]} fake")
    real_radii = _kth_neighbour_radii(r, k)  # [N_r]
    fake_radii = _kth_neighbour_radii(f, k)  # [N_f]
    d = _pairwise(r, f)  # [N_r, N_f]
    in_real_ball = d < real_radii[:, None]
    return {
        "precision": float(in_real_ball.any(dim=0).double().mean()),
        "recall": float((d < fake_radii[None, :]).any(dim=1).double().mean()),
        "density": float(in_real_ball.sum(dim=0).double().mean() / k),
        "coverage": float((d.min(dim=1).values < real_radii).double().mean()),
    }


class _Params(ExtractorParams):
    k: int = Field(3, ge=1, description="nearest neighbours defining the balls (Naeem et al.: k = 3 to 5)")


@metrics.register("prdc")
class PRDC(FeatureMetric):
    """Precision, recall, density, coverage per attacked identity (k-NN balls), averaged over identities."""

    Params = _Params
    better = {"precision": "lower", "recall": "lower", "density": "lower", "coverage": "lower"}

    def compute(self, rec: Reconstruction, ctx: MetricContext) -> MetricResult:
        k = self.params.k
        ext = self.extractor(ctx)
        fake = reconstruction_features(ctx, ext, rec, "prdc")
        real, real_labels = private_features(ctx, ext, rec.labels.unique())
        per_identity: dict[int, dict[str, float]] = {}
        skipped: dict[int, str] = {}
        for c in rec.labels.unique():
            rc, fc = real[real_labels == c], fake[rec.labels == c]
            if rc.shape[0] <= k or fc.shape[0] <= k:
                skipped[int(c)] = (f"{rc.shape[0]} private images and {fc.shape[0]} reconstructions; "
                                   f"needs more than k={k} of each")
                continue
            per_identity[int(c)] = prdc(rc, fc, k)
        details = {**provenance(ext), "k": k, "per_identity": per_identity, "skipped": skipped}
        if not per_identity:
            raise MetricUnavailableError(
                f"prdc: no attacked identity has more than k={k} private images and reconstructions "
                f"(e.g. identity {next(iter(skipped))}: {next(iter(skipped.values()))})", details
            )
        if skipped:
            log.warning("prdc: %d of %d identities skipped (too few samples for k=%d)",
                        len(skipped), len(skipped) + len(per_identity), k)
        return MetricResult(values={name: float(np.mean([v[name] for v in per_identity.values()]))
                                    for name in PRDC_NAMES}, details=details)
