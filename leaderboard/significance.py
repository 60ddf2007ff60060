"""Tests of a defense against the baseline, and their correction for multiplicity: pure functions.

The unit of a defense effect is the trained model. A defense's cell holds one value per seed (the
seed's mean over the attacked identities, or the target's test accuracy, or the worst case); the
defense test compares those per-seed values with the baseline's:

* :func:`sign_flip_test`: exact paired sign-flip permutation test of the mean of the per-seed
  differences (defense − baseline on the same seed: same data order, initialisation scheme and attack
  seed). Zero differences carry no sign and are dropped; every sign vector of the non-zero ones is
  counted up to :data:`MAX_EXACT_NONZERO` of them, Monte Carlo beyond. Its smallest
  two-sided p-value with ``k`` non-zero differences is ``2 / 2 ** k`` (:func:`min_p_paired`): at
  ``0.05`` it needs 6 seeds.
* :func:`two_sample_test`: exact two-sample permutation test of the difference of the per-seed means
  (every split of the pooled values into groups of the two sizes, Monte Carlo beyond the limit). It
  ignores the seed pairing, which makes it conservative when same-seed models correlate positively,
  and it works with different seed sets. Smallest p-value ``2 / C(2n, n)`` for ``n`` seeds each
  (:func:`min_p_two_sample`): at ``0.05`` it needs 4 seeds.
* :func:`paired_permutation_test` is the sign-flip test on any paired values; on (seed, identity)
  pairs it asks whether *these two trained models* differ on these identities, not whether the
  defense changes leakage (identities of one model are not replicates of a defense).
* :func:`adjust`: Benjamini–Hochberg (false discovery rate) or Holm (family-wise error) adjusted
  p-values over a table's tests.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from inversion_bench.leaderboard.stats import RNG_SEED

SIGN_FLIP_TEST = "paired sign-flip permutation test"
"""Name of the paired test, as the tables and the page print it."""

TWO_SAMPLE_TEST = "two-sample permutation test"
"""Name of the unpaired test over seeds."""

SEED_TESTS = ("two-sample", "paired")
"""``report.seed_test`` values (the first is the default)."""

CORRECTIONS = ("bh", "holm", "none")
"""``report.correction`` values."""

CORRECTION_NAMES = {"bh": "Benjamini–Hochberg (false discovery rate)", "holm": "Holm (family-wise error rate)",
                    "none": "no correction"}

MIN_ENUMERATION = 2**18
"""The two-sample test enumerates up to this many splits (10 + 10 seeds), or ``resamples`` if that is
larger, in chunks of :data:`_CHUNK`."""

MAX_EXACT_NONZERO = 32
"""The sign-flip test is exact up to this many non-zero differences (2^32 sign vectors, counted by meeting
in the middle: 2^16 partial sums per half), or while ``2 ** n <= resamples``."""

_CHUNK = 2**15


def enumeration_limit(resamples: int) -> int:
    """Largest number of sign vectors or splits enumerated exactly."""
    return max(int(resamples), MIN_ENUMERATION)


def _signs(start: int, stop: int, n: int) -> np.ndarray:
    """Sign vectors number ``start .. stop - 1`` of length ``n`` (the bits of the number; 1 flips a sign)."""
    codes = np.arange(start, stop, dtype=np.int64)[:, None]
    return 1.0 - 2.0 * ((codes >> np.arange(n, dtype=np.int64)[None, :]) & 1)


def sign_flip_exact(n_nonzero: int, resamples: int) -> bool:
    """Whether :func:`sign_flip_test` counts every sign vector of ``n_nonzero`` differences."""
    return n_nonzero <= MAX_EXACT_NONZERO or 2**n_nonzero <= resamples


def _count_extreme(x: np.ndarray, threshold: float) -> int:
    """The number of sign vectors ``s`` with ``|s @ x| >= threshold > 0``, meeting in the middle: every partial
    sum of the first half against the sorted partial sums of the second."""
    half = x.size // 2
    left = _signs(0, 2**half, half) @ x[:half]
    right = np.sort(_signs(0, 2 ** (x.size - half), x.size - half) @ x[half:])
    upper = right.size - np.searchsorted(right, threshold - left, side="left")  # left + r >= threshold
    lower = np.searchsorted(right, -threshold - left, side="right")  # left + r <= -threshold
    return int(upper.sum() + lower.sum())


def sign_flip_test(d: Sequence[float] | np.ndarray, resamples: int = 2000, seed: int = RNG_SEED) -> float:
    """Two-sided sign-flip permutation test of ``mean(d) == 0`` for paired differences ``d``.

    Returns:
        The p-value: the share of sign vectors whose ``|sum|`` is at least the observed one (exact), or
        ``(k + 1) / (resamples + 1)`` (Monte Carlo). ``1.0`` when every difference is zero; NaN without
        differences.
    """
    x = np.asarray(d, dtype=float).ravel()
    if x.size == 0:
        return math.nan
    x = x[x != 0.0]
    n = x.size
    if n == 0:
        return 1.0
    observed = abs(float(x.sum()))
    tol = max(1e-12, 1e-9 * observed)
    if observed - tol <= 0:
        return 1.0  # every sign vector is at least as far from 0
    if sign_flip_exact(n, resamples):
        return _count_extreme(x, observed - tol) / 2**n
    rng = np.random.default_rng(seed)
    hits, done, total = 0, 0, float(x.sum())
    chunk = max(1, min(resamples, 4_000_000 // n))
    while done < resamples:
        m = min(chunk, resamples - done)
        bits = np.unpackbits(rng.integers(0, 256, size=(m, (n + 7) // 8), dtype=np.uint8), axis=1)[:, :n]
        hits += int(np.sum(np.abs(total - 2.0 * (bits @ x)) >= observed - tol))
        done += m
    return (hits + 1) / (resamples + 1)


def paired_permutation_test(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                            resamples: int = 2000, seed: int = RNG_SEED) -> float:
    """:func:`sign_flip_test` of ``a - b``.

    Raises:
        ValueError: if ``a`` and ``b`` differ in length.
    """
    x = np.asarray(a, dtype=float).ravel()
    y = np.asarray(b, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.size} vs {y.size}")
    return sign_flip_test(x - y, resamples, seed)


def two_sample_exact(n_a: int, n_b: int, resamples: int) -> bool:
    """Whether :func:`two_sample_test` enumerates every split of ``n_a + n_b`` values."""
    return math.comb(n_a + n_b, n_a) <= enumeration_limit(resamples)


def two_sample_test(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, resamples: int = 2000,
                    seed: int = RNG_SEED) -> float:
    """Two-sided permutation test of ``mean(a) == mean(b)`` for two independent samples.

    Returns:
        The share of splits of the pooled values into groups of ``len(a)`` and ``len(b)`` whose
        ``|mean difference|`` is at least the observed one (exact), or ``(k + 1) / (resamples + 1)``
        (Monte Carlo); NaN when either sample is empty.
    """
    x = np.asarray(a, dtype=float).ravel()
    y = np.asarray(b, dtype=float).ravel()
    if x.size == 0 or y.size == 0:
        return math.nan
    pooled = np.concatenate([x, y])
    n, n_a = pooled.size, x.size
    total = float(pooled.sum())

    def diffs(sum_a: np.ndarray) -> np.ndarray:
        return np.abs(sum_a / n_a - (total - sum_a) / (n - n_a))

    observed = float(diffs(np.array([x.sum()]))[0])
    tol = max(1e-12, 1e-9 * observed)
    if two_sample_exact(n_a, y.size, resamples):
        combos = itertools.combinations(range(n), n_a)
        hits = total_splits = 0
        while chunk := list(itertools.islice(combos, _CHUNK)):
            idx = np.array(chunk, dtype=np.int64)
            hits += int(np.sum(diffs(pooled[idx].sum(axis=1)) >= observed - tol))
            total_splits += len(chunk)
        return hits / total_splits
    rng = np.random.default_rng(seed)
    perms = rng.permuted(np.tile(pooled, (int(resamples), 1)), axis=1)
    hits = int(np.sum(diffs(perms[:, :n_a].sum(axis=1)) >= observed - tol))
    return (hits + 1) / (resamples + 1)


def min_p_paired(n: int) -> float:
    """Smallest two-sided p-value of the exact sign-flip test with ``n`` non-zero differences."""
    return 1.0 if n <= 0 else min(1.0, 2.0 / 2**n)


def min_p_two_sample(n_a: int, n_b: int) -> float:
    """Smallest two-sided p-value of the exact two-sample test (two mirror splits when ``n_a == n_b``)."""
    if n_a <= 0 or n_b <= 0:
        return 1.0
    return min(1.0, (2.0 if n_a == n_b else 1.0) / math.comb(n_a + n_b, n_a))


def seeds_needed(test: str, level: float, limit: int = 64) -> int:
    """Fewest seeds per row (the same number in both rows) for ``test`` to reach ``p < level``."""
    for n in range(1, limit + 1):
        if (min_p_paired(n) if test == "paired" else min_p_two_sample(n, n)) < level:
            return n
    return limit


def choose_test(seed_test: str, seeds_a: Sequence[int], seeds_b: Sequence[int]) -> str:
    """The test of two rows: ``"paired"`` when it is asked for and the rows share a seed (unshared seeds are
    left out of it), ``"two-sample"`` otherwise."""
    return "paired" if seed_test == "paired" and set(seeds_a) & set(seeds_b) else "two-sample"


def adjust(pvalues: Sequence[float], method: str) -> np.ndarray:
    """Adjusted p-values (NaN stays NaN and is not counted in the family).

    Args:
        pvalues: the family's p-values.
        method: ``"bh"`` (Benjamini–Hochberg step-up), ``"holm"`` (Holm step-down) or ``"none"``.

    Returns:
        The adjusted p-values, capped at 1, in the input order.
    """
    p = np.asarray(pvalues, dtype=float)
    out = p.copy()
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if method == "none" or m == 0:
        return out
    if method not in CORRECTIONS:
        raise ValueError(f"unknown correction {method!r}; expected one of {', '.join(CORRECTIONS)}")
    q = p[ok]
    order = np.argsort(q, kind="stable")
    ranked = q[order]
    ranks = np.arange(1, m + 1)
    if method == "bh":
        adj = np.minimum.accumulate((ranked * m / ranks)[::-1])[::-1]
    else:
        adj = np.maximum.accumulate(ranked * (m - ranks + 1))
    back = np.empty(m)
    back[order] = np.minimum(adj, 1.0)
    out[ok] = back
    return out


def seed_requirements(seeds: int, tests: int, level: float, seed_test: str, correction: str) -> list[str]:
    """What a suite's seeds allow the defense test to say (``bench validate``).

    Args:
        seeds: seeds per defense.
        tests: about how many Δs the table tests (non-baseline defenses × columns).
        level: ``report.significance``.
        seed_test: ``report.seed_test``.
        correction: ``report.correction``.

    Returns:
        Lines: the seeds the test needs to reach the level at all (under Holm: ``level / tests``), and the
        seeds one difference needs to be marked when every other Δ of the table is null
        (``level / tests`` under either correction).
    """
    name = SIGN_FLIP_TEST if seed_test == "paired" else TWO_SAMPLE_TEST
    needed = seeds_needed(seed_test, level / max(tests, 1) if correction == "holm" else level)
    alone = seeds_needed(seed_test, level / max(tests, 1)) if correction != "none" else needed
    state = "enough" if seeds >= needed else "not testable"
    lines = [f"defense test: {name} over seeds at {level:g}, {CORRECTION_NAMES[correction]} over about "
             f"{tests} Δ(s): needs {needed} seeds per defense; the suite runs {seeds} ({state})"]
    if correction != "none" and tests > 1:
        lines.append(f"  one difference among {tests} null Δs is marked only with p < {level:g}/{tests}: "
                     f"{alone} seeds per defense")
    return lines
