"""Uncertainty of a leaderboard cell and the paired test of a defense against the baseline.

Small pure functions over numpy arrays; every random draw comes from a generator seeded with
:data:`RNG_SEED` (or the seed passed), so a table rebuilt from the same records shows the same numbers.

* :func:`bootstrap_interval`: percentile bootstrap interval of the mean. ``groups`` holds one array of
  per-identity values per seed; a resample draws the seeds with replacement (when there are several)
  and, within each drawn seed, its identities with replacement; the statistic is the mean over the
  drawn seeds of each seed's mean. With a single value (one identity, one seed) there is no
  interval: both ends are NaN (the tables say so, never ``0``).
* :func:`paired_permutation_test`: two-sided paired sign-flip permutation test of the mean difference
  ``a - b`` (pairs are (seed, identity) of a defense and the baseline against the same attack):
  exact enumeration of every sign vector when ``2 ** n <= resamples``, Monte Carlo otherwise (with
  the ``+1`` correction, so ``p > 0``). Identical arrays give ``p = 1``.

Metrics without per-identity values (FID, PRDC, KNN distance without details, the target's test
accuracy and other target-level measures) get an interval over seeds only: :func:`bootstrap_interval`
with one single-value group per seed, NaN with one seed; they get no paired test. The worst-case
column is the maximum over attacks of each attack's *mean* accuracy per seed; the maximum over
attacks of each identity's accuracy is a different (larger) quantity, so the worst case gets the
seed-level interval only, and no paired test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

RNG_SEED = 0
"""Seed of every bootstrap and Monte Carlo draw (tables are reproducible)."""

SIGN_FLIP_TEST = "paired sign-flip permutation test"
"""Name of the paired test, as the tables and the page print it."""


def _clean(groups: Sequence[Sequence[float] | np.ndarray]) -> list[np.ndarray]:
    """The non-empty groups as float arrays."""
    out = [np.asarray(g, dtype=float).ravel() for g in groups]
    return [g for g in out if g.size]


def resampled_means(groups: Sequence[Sequence[float] | np.ndarray], resamples: int,
                    rng: np.random.Generator) -> np.ndarray:
    """``resamples`` bootstrap replicates of the mean over seeds of the per-seed mean (see module doc).

    Args:
        groups: one array of per-identity values per seed (empty groups are dropped).
        resamples: number of replicates.
        rng: the random generator.

    Returns:
        Array of shape ``(resamples,)``.
    """
    gs = _clean(groups)
    n_seeds = len(gs)
    if n_seeds == 0:
        return np.full(resamples, math.nan)
    if n_seeds > 1:
        drawn = rng.integers(0, n_seeds, size=(resamples, n_seeds))
    else:
        drawn = np.zeros((resamples, 1), dtype=int)
    total = np.zeros(resamples)
    for j in range(drawn.shape[1]):
        for s, g in enumerate(gs):
            rows = np.flatnonzero(drawn[:, j] == s)
            if rows.size == 0:
                continue
            if g.size == 1:
                total[rows] += g[0]
                continue
            idx = rng.integers(0, g.size, size=(rows.size, g.size))
            total[rows] += g[idx].mean(axis=1)
    return total / drawn.shape[1]


def bootstrap_interval(groups: Sequence[Sequence[float] | np.ndarray], confidence: float = 0.95,
                       resamples: int = 2000, seed: int = RNG_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over seeds of the per-seed mean.

    Args:
        groups: one array of per-identity values per seed; ``[[v_0], [v_1], ...]`` (one value per
            seed) is the interval over seeds.
        confidence: coverage, e.g. ``0.95``.
        resamples: bootstrap replicates.
        seed: seed of the random generator.

    Returns:
        ``(low, high)``; ``(nan, nan)`` without values or with a single value (one identity of one
        seed): no interval can be given.
    """
    gs = _clean(groups)
    if not gs or (len(gs) == 1 and gs[0].size == 1):
        return math.nan, math.nan
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    stats = resampled_means(gs, int(resamples), np.random.default_rng(seed))
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(low), float(high)


def seed_interval(values: Sequence[float], confidence: float = 0.95, resamples: int = 2000,
                  seed: int = RNG_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of one value per seed (NaN with fewer than two)."""
    if len(values) < 2:
        return math.nan, math.nan
    return bootstrap_interval([[v] for v in values], confidence, resamples, seed)


def _sign_matrix(n: int) -> np.ndarray:
    """Every sign vector of length ``n``: shape ``(2 ** n, n)``, entries ``+1``/``-1``."""
    codes = np.arange(2**n, dtype=np.int64)[:, None]
    bits = (codes >> np.arange(n, dtype=np.int64)[None, :]) & 1
    return 1.0 - 2.0 * bits


def paired_permutation_test(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                            resamples: int = 2000, seed: int = RNG_SEED) -> float:
    """Two-sided paired sign-flip permutation test of ``mean(a - b) == 0``.

    Under the null each difference ``a_i - b_i`` is as likely to have either sign; the p-value is the
    share of sign vectors whose mean difference is at least as far from 0 as the observed one.

    Args:
        a: values of the defense, one per pair (e.g. per (seed, identity)).
        b: the baseline's values of the same pairs, in the same order.
        resamples: Monte Carlo sign vectors; when ``2 ** n <= resamples`` every sign vector is
            enumerated instead (exact test).
        seed: seed of the random generator (Monte Carlo only).

    Returns:
        The p-value; NaN without pairs. Monte Carlo p-values are ``(k + 1) / (resamples + 1)``.

    Raises:
        ValueError: if ``a`` and ``b`` differ in length.
    """
    x = np.asarray(a, dtype=float).ravel()
    y = np.asarray(b, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.size} vs {y.size}")
    d = x - y
    n = d.size
    if n == 0:
        return math.nan
    observed = abs(float(d.mean()))
    tol = max(1e-12, 1e-9 * observed)
    if 2**n <= resamples:
        null = np.abs(_sign_matrix(n) @ d) / n
        return float(np.mean(null >= observed - tol))
    rng = np.random.default_rng(seed)
    hits = 0
    chunk = max(1, min(resamples, 4_000_000 // n))
    total = float(d.sum())
    done = 0
    while done < resamples:
        m = min(chunk, resamples - done)
        # one random bit per pair (bit 1: flip the sign): sum(signs * d) = sum(d) - 2 * sum(bits * d)
        bits = np.unpackbits(rng.integers(0, 256, size=(m, (n + 7) // 8), dtype=np.uint8), axis=1)[:, :n]
        hits += int(np.sum(np.abs(total - 2.0 * (bits @ d)) / n >= observed - tol))
        done += m
    return (hits + 1) / (resamples + 1)


def exact_test(n_pairs: int, resamples: int) -> bool:
    """Whether :func:`paired_permutation_test` enumerates every sign vector for ``n_pairs`` pairs."""
    return n_pairs > 0 and 2**n_pairs <= resamples


def half_width(low: float, high: float) -> float:
    """Half the width of an interval (NaN when either end is)."""
    return (high - low) / 2.0
