"""The leaderboard's bootstrap intervals and paired sign-flip permutation test, against hand-computed values
and scipy."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from inversion_bench.leaderboard.stats import (
    bootstrap_interval,
    exact_test,
    half_width,
    paired_permutation_test,
    resampled_means,
    seed_interval,
)


def scipy_p(a: np.ndarray, b: np.ndarray, n_resamples: float = np.inf) -> float:
    """scipy's two-sided paired permutation test of the mean difference (swapping the members of a pair is
    flipping the sign of its difference)."""
    res = sps.permutation_test((a, b), lambda x, y, axis: np.mean(x - y, axis=axis), vectorized=True,
                               permutation_type="samples", n_resamples=n_resamples, alternative="two-sided",
                               random_state=0)
    return float(res.pvalue)


# --------------------------------------------------------------------------------------------------
# bootstrap


def test_all_equal_values_give_a_zero_width_interval() -> None:
    low, high = bootstrap_interval([[0.4] * 7, [0.4] * 5, [0.4] * 9])
    assert low == pytest.approx(0.4) and high == pytest.approx(0.4)
    assert half_width(low, high) == pytest.approx(0.0)


def test_single_value_has_no_interval() -> None:
    for groups in ([[0.3]], [[], [0.3]], [], [[]]):
        low, high = bootstrap_interval(groups)
        assert math.isnan(low) and math.isnan(high)
    assert all(math.isnan(x) for x in seed_interval([0.3]))
    assert math.isnan(half_width(math.nan, math.nan))


def test_two_identities_by_hand() -> None:
    """One seed, identities 0 and 1: a resample of two identities has mean 0, 0.5 or 1 with probabilities
    1/4, 1/2, 1/4 (the four ordered draws 00, 01, 10, 11)."""
    rng = np.random.default_rng(7)
    means = resampled_means([[0.0, 1.0]], 20000, rng)
    assert set(np.unique(means)) == {0.0, 0.5, 1.0}
    for v, p in ((0.0, 0.25), (0.5, 0.5), (1.0, 0.25)):
        assert np.mean(means == v) == pytest.approx(p, abs=0.015)
    # 95 %: the 2.5 % and 97.5 % quantiles fall into the outer atoms (each 25 %)
    assert bootstrap_interval([[0.0, 1.0]], 0.95, 2000) == (0.0, 1.0)
    # 40 %: the 30 % and 70 % quantiles both fall into the middle atom (25 % .. 75 %)
    assert bootstrap_interval([[0.0, 1.0]], 0.40, 2000) == (0.5, 0.5)


def test_seeds_are_resampled_too() -> None:
    """Two seeds with one value each: the mean of a resample of seeds is 0.2, 0.3 or 0.4 (1/4, 1/2, 1/4)."""
    means = resampled_means([[0.2], [0.4]], 20000, np.random.default_rng(3))
    assert set(np.round(np.unique(means), 12)) == {0.2, 0.3, 0.4}
    assert np.mean(np.isclose(means, 0.3)) == pytest.approx(0.5, abs=0.015)
    assert seed_interval([0.2, 0.4]) == pytest.approx((0.2, 0.4))
    # identities within seeds: seed A {0, 1}, seed B {1, 1}: enumerate the 2 x 2 x 4 x 4 equally likely draws
    by_hand = []
    groups = [[0.0, 1.0], [1.0, 1.0]]
    for s1, s2 in itertools.product(range(2), repeat=2):
        for i1 in itertools.product(range(2), repeat=2):
            for i2 in itertools.product(range(2), repeat=2):
                g1, g2 = groups[s1], groups[s2]
                by_hand.append((np.mean([g1[i] for i in i1]) + np.mean([g2[i] for i in i2])) / 2)
    means = resampled_means(groups, 40000, np.random.default_rng(11))
    assert means.mean() == pytest.approx(np.mean(by_hand), abs=0.005)
    assert means.var() == pytest.approx(np.var(by_hand), rel=0.05)
    for v in np.unique(by_hand):
        assert np.mean(np.isclose(means, v)) == pytest.approx(np.mean(np.isclose(by_hand, v)), abs=0.01)


def test_bootstrap_is_reproducible_and_covers_the_mean() -> None:
    rng = np.random.default_rng(0)
    groups = [rng.uniform(size=30), rng.uniform(size=30), rng.uniform(size=30)]
    first = bootstrap_interval(groups, 0.95, 2000)
    assert bootstrap_interval(groups, 0.95, 2000) == first
    low, high = first
    mean = np.mean([g.mean() for g in groups])
    assert low < mean < high
    assert bootstrap_interval(groups, 0.5, 2000)[1] - bootstrap_interval(groups, 0.5, 2000)[0] < high - low


# --------------------------------------------------------------------------------------------------
# paired sign-flip permutation test


def test_identical_arrays_give_p_one() -> None:
    a = np.array([0.1, 0.5, 0.5, 0.9])
    assert paired_permutation_test(a, a) == 1.0  # exact
    big = np.linspace(0, 1, 40)
    assert paired_permutation_test(big, big, resamples=500) == 1.0  # Monte Carlo: (500 + 1) / (500 + 1)


def test_hand_computed_p_values() -> None:
    # d = (1, 2, 3): of the 8 sign vectors only +++ and --- reach |mean| >= 2
    assert paired_permutation_test([1, 2, 3], [0, 0, 0]) == pytest.approx(2 / 8)
    # d = (1, 2): means 1.5, 0.5, -0.5, -1.5; |mean| >= 1.5 on 2 of 4
    assert paired_permutation_test([1, 2], [0, 0]) == pytest.approx(2 / 4)
    # d = (1, -1): observed mean 0, every sign vector is at least as extreme
    assert paired_permutation_test([1, 0], [0, 1]) == 1.0
    assert exact_test(3, 2000) and exact_test(10, 1024) and not exact_test(11, 2000) and not exact_test(0, 10)


def test_exact_matches_scipy() -> None:
    rng = np.random.default_rng(5)
    for n in (2, 3, 5, 8, 10):
        a, b = rng.uniform(size=n), rng.uniform(size=n)
        b[: n // 2] = a[: n // 2] - 0.3  # some signal
        assert paired_permutation_test(a, b, resamples=2000) == pytest.approx(scipy_p(a, b), rel=1e-9), n
    # ties in the differences
    a, b = np.array([1.0, 1.0, 0.0, 0.5, 0.5]), np.array([0.0, 0.0, 0.0, 0.0, 1.0])
    assert paired_permutation_test(a, b) == pytest.approx(scipy_p(a, b), rel=1e-9)


def test_monte_carlo_close_to_scipy_exact_and_corrected() -> None:
    rng = np.random.default_rng(9)
    a = rng.uniform(size=16)
    b = a - rng.normal(0.05, 0.2, size=16)
    exact = scipy_p(a, b)  # 2 ** 16 sign vectors, enumerated by scipy
    mc = paired_permutation_test(a, b, resamples=20000)
    assert not exact_test(16, 20000)
    assert mc == pytest.approx(exact, abs=0.015)
    # every difference positive: (hits + 1) / (resamples + 1) > 0 even though hardly any vector is as extreme
    p = paired_permutation_test(np.ones(30), np.zeros(30), resamples=999)
    assert p == pytest.approx(1 / 1000)
    assert paired_permutation_test(a, b, resamples=3000) == paired_permutation_test(a, b, resamples=3000)


def test_bad_input() -> None:
    with pytest.raises(ValueError):
        paired_permutation_test([1, 2], [1])
    assert math.isnan(paired_permutation_test([], []))
