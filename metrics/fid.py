"""Fréchet Inception Distance between reconstructions and the private images of the attacked identities.

FID (Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium", NeurIPS 2017) fits a Gaussian to each feature set and reports

    ||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)).

The value is computed with ``pytorch_fid.fid_score.calculate_frechet_distance`` on float64 means
and covariances. Model inversion papers (Zhang et al., CVPR 2020; Struppek et al., ICML 2022)
compare the reconstructions of the attacked identities with the private training images of those
identities. ``fid_correct`` keeps only the reconstructions that the evaluation model assigns to the
attacked identity (top-1), as LOMMA (Nguyen et al., "Re-thinking Model Inversion Attacks Against
Deep Neural Networks", CVPR 2023) and PLG-MI (Yuan et al., AAAI 2023) report it.

A higher FID means worse reconstructions, i.e. less leakage: ``better`` is "higher".
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import numpy as np
import torch
from torch import Tensor

from inversion_bench.errors import MetricUnavailableError
from inversion_bench.interfaces import MetricContext, MetricResult, Reconstruction
from inversion_bench.metrics.accuracy import evaluation_logits, topk_hits
from inversion_bench.metrics.extractors import provenance
from inversion_bench.metrics.feature_metric import FeatureMetric, private_features, reconstruction_features
from inversion_bench.record_model import MetricOutput
from inversion_bench.registry import metrics

log = logging.getLogger(__name__)


def _as_float64(x: Tensor | np.ndarray, what: str) -> np.ndarray:
    arr = x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{what} features must be [N, D], got shape {arr.shape}")
    return arr


def common_subspace(real: np.ndarray, fake: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sets in coordinates of an orthonormal basis of the affine span of their union.

    The Fréchet distance is invariant under rigid motions, and the two means and both covariances
    live in the span of the centred samples, so the distance in these (at most N_r + N_f - 1)
    coordinates equals the distance in the full feature space. With fewer samples than dimensions
    (e.g. 2048-d Inception features of a few hundred images) this replaces a singular D x D matrix
    square root by a small one. Sets with at least D + 1 samples in all are returned unchanged.
    """
    n, dim = real.shape[0] + fake.shape[0], real.shape[1]
    if n - 1 >= dim:
        return real, fake
    both = np.concatenate([real, fake])
    centre = both.mean(axis=0)
    _, s, vt = np.linalg.svd(both - centre, full_matrices=False)
    if s.size == 0 or s[0] == 0.0:  # all samples identical: one point suffices
        return np.zeros((real.shape[0], 1)), np.zeros((fake.shape[0], 1))
    rank = int((s > s[0] * max(both.shape) * np.finfo(np.float64).eps).sum())
    basis = vt[:rank].T
    return (real - centre) @ basis, (fake - centre) @ basis


def gaussian_statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (as pytorch-fid computes them) in float64."""
    return feats.mean(axis=0), np.atleast_2d(np.cov(feats, rowvar=False))


def frechet_distance(real: Tensor | np.ndarray, fake: Tensor | np.ndarray) -> float:
    """FID between two feature sets ([N_r, D] and [N_f, D], at least 2 rows each).

    Raises:
        ValueError: on malformed input or when the matrix square root has a significant imaginary
            part (pytorch-fid's check).
    """
    from pytorch_fid.fid_score import calculate_frechet_distance

    r, f = _as_float64(real, "real"), _as_float64(fake, "fake")
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"feature dimensions differ: {r.shape[1]} (real) vs {f.shape[1]} (fake)")
    if r.shape[0] < 2 or f.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 samples per set, got {r.shape[0]} real and {f.shape[0]} fake")
    r, f = common_subspace(r, f)
    mu_r, sigma_r = gaussian_statistics(r)
    mu_f, sigma_f = gaussian_statistics(f)
    printed = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(printed):
        # pytorch-fid passes sqrtm's ``disp`` argument, deprecated since SciPy 1.16
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*disp.*")
        value = calculate_frechet_distance(mu_r, sigma_r, mu_f, sigma_f)
    if printed.getvalue().strip():
        log.warning("pytorch-fid: %s", printed.getvalue().strip())
    return float(value)


def _fid_or_unavailable(metric: str, real: Tensor, fake: Tensor) -> float:
    if real.shape[0] < 2 or fake.shape[0] < 2:
        raise MetricUnavailableError(
            f"{metric}: FID needs at least 2 samples on each side, got {real.shape[0]} private images "
            f"and {fake.shape[0]} reconstructions"
        )
    try:
        value = frechet_distance(real, fake)
    except ValueError as exc:
        raise MetricUnavailableError(f"{metric}: {exc}") from exc
    if not np.isfinite(value):
        raise MetricUnavailableError(f"{metric}: the Fréchet distance is not finite")
    return value


def _per_identity_counts(labels: Tensor) -> dict[int, int]:
    return {int(c): int((labels == c).sum()) for c in labels.unique()}


@metrics.register("fid")
class FID(FeatureMetric):
    """FID between the reconstructions and the private training images of the attacked identities."""

    outputs = {"fid": MetricOutput(better="higher", unit="distance")}

    def compute(self, rec: Reconstruction, ctx: MetricContext) -> MetricResult:
        ext = self.extractor(ctx)
        identities = rec.labels.unique()
        real, real_labels = private_features(ctx, ext, identities)
        fake = reconstruction_features(ctx, ext, rec, "fid")
        value = _fid_or_unavailable("fid", real, fake)
        details = {
            **provenance(ext),
            "n_real": int(real.shape[0]),
            "n_fake": int(fake.shape[0]),
            "identities": [int(c) for c in identities],
            "per_identity_n_real": _per_identity_counts(real_labels),
            "per_identity_n_fake": _per_identity_counts(rec.labels),
        }
        return MetricResult(values={"fid": value}, details=details)


@metrics.register("fid_correct")
class FIDCorrect(FeatureMetric):
    """FID of the reconstructions the evaluation model puts in the attacked class (top-1) only.

    The real side is the same as ``fid``'s (private training images of every attacked identity), so
    the two values differ only by the filter on the reconstructions.
    """

    outputs = {"fid_correct": MetricOutput(better="higher", unit="distance")}

    def compute(self, rec: Reconstruction, ctx: MetricContext) -> MetricResult:
        if rec.images.shape[0] == 0:
            raise MetricUnavailableError("fid_correct: the attack returned no images")
        ext = self.extractor(ctx)
        identities = rec.labels.unique()
        correct = topk_hits(evaluation_logits(ctx, rec.images), rec.labels, 1)
        real, real_labels = private_features(ctx, ext, identities)
        per_identity = {
            int(c): {"n": int((rec.labels == c).sum()), "n_correct": int(correct[rec.labels == c].sum())}
            for c in identities
        }
        details = {
            **provenance(ext),
            "n_real": int(real.shape[0]),
            "n_fake": int(correct.sum()),
            "n_reconstructions": int(rec.images.shape[0]),
            "correct_indices": torch.nonzero(correct).flatten().tolist(),
            "per_identity": per_identity,
            "per_identity_n_real": _per_identity_counts(real_labels),
        }
        if int(correct.sum()) < 2:
            raise MetricUnavailableError(
                f"fid_correct: only {int(correct.sum())} of {rec.images.shape[0]} reconstructions are "
                "classified as their attacked identity by the evaluation model; FID needs at least 2", details
            )
        fake = ctx.features.extract(ext, rec.images[correct])
        return MetricResult(values={"fid_correct": _fid_or_unavailable("fid_correct", real, fake)}, details=details)
