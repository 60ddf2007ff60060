"""The leaderboard's intervals, permutation tests and multiplicity corrections against hand-computed values,
scipy and brute-force enumeration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from inversion_bench.leaderboard.significance import (
    adjust,
    choose_test,
    min_p_paired,
    min_p_two_sample,
    paired_permutation_test,
    seeds_needed,
    sign_flip_exact,
    sign_flip_test,
    two_sample_exact,
    two_sample_test,
)
from inversion_bench.leaderboard.stats import (
    bootstrap_interval,
    crossed_interval,
    crossed_replicates,
    half_width,
    satterthwaite_df,
    t_interval,
)


def scipy_p(a: np.ndarray, b: np.ndarray, n_resamples: float = np.inf) -> float:
    """scipy's two-sided paired permutation test of the mean difference (swapping the members of a pair is
    flipping the sign of its difference)."""
    res = sps.permutation_test((a, b), lambda x, y, axis: np.mean(x - y, axis=axis), vectorized=True,
                               permutation_type="samples", n_resamples=n_resamples, alternative="two-sided",
                               random_state=0)
    return float(res.pvalue)


def scipy_two_sample_p(a: np.ndarray, b: np.ndarray) -> float:
    """scipy's exact permutation test of ``|mean(a) - mean(b)|`` (one-sided on the absolute difference: scipy's
    own two-sided p-value doubles the smaller tail, which differs for unequal group sizes)."""
    res = sps.permutation_test((a, b), lambda x, y, axis: np.abs(np.mean(x, axis=axis) - np.mean(y, axis=axis)),
                               vectorized=True, permutation_type="independent", n_resamples=np.inf,
                               alternative="greater")
    return float(res.pvalue)


# --------------------------------------------------------------------------------------------------
# intervals


def test_one_record_bootstrap_by_hand() -> None:
    """One record, identities 0 and 1: a resample's mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4."""
    assert bootstrap_interval([0.0, 1.0], 0.95, 2000) == (0.0, 1.0)  # 2.5 % and 97.5 % in the outer atoms
    assert bootstrap_interval([0.0, 1.0], 0.40, 2000) == (0.5, 0.5)  # 30 % and 70 % in the middle atom
    low, high = bootstrap_interval([0.4] * 7)
    assert low == pytest.approx(0.4) and high == pytest.approx(0.4) and half_width(low, high) == pytest.approx(0)
    assert all(math.isnan(x) for x in bootstrap_interval([0.3]))
    assert math.isnan(half_width(math.nan, math.nan))


def test_crossed_replicates_draw_identities_once_for_every_seed() -> None:
    """2 seeds x 2 identities: 4 equally likely seed draws x 4 identity draws, the same identities on both
    drawn seeds; the replicates' distribution equals the enumeration of those 16 outcomes."""
    y = np.array([[0.0, 1.0], [1.0, 1.0]])
    by_hand = [np.mean([y[s, i] for s in seeds for i in ids])
               for seeds in itertools.product(range(2), repeat=2) for ids in itertools.product(range(2), repeat=2)]
    reps = crossed_replicates(y, 40000, np.random.default_rng(11))
    for v in np.unique(by_hand):
        assert np.mean(np.isclose(reps, v)) == pytest.approx(np.mean(np.isclose(by_hand, v)), abs=0.01), v
    # independent identity draws per seed would give 0.25 with probability 1/16 * ... > 0; shared draws never
    # give a mean of 0.25 here (it needs identity 0 on one seed only)
    assert not np.any(np.isclose(reps, 0.25))
    # a missing cell is left out of its seed's mean
    z = np.array([[0.0, np.nan], [1.0, 1.0]])
    reps = crossed_replicates(z, 2000, np.random.default_rng(1))
    assert set(np.round(np.unique(reps[~np.isnan(reps)]), 12)) <= {0.0, 0.5, 1.0}
    # NaN only where no drawn seed has a drawn identity: seed 0 drawn twice, identity 1 drawn twice (1/16)
    assert np.mean(np.isnan(reps)) == pytest.approx(1 / 16, abs=0.02)


def test_satterthwaite_df_by_hand() -> None:
    y = np.array([[1.0, 2.0, 4.0], [2.0, 2.0, 5.0]])
    s, i = y.shape
    grand = y.mean()
    ms_a = i * ((y.mean(1) - grand) ** 2).sum() / (s - 1)
    ms_b = s * ((y.mean(0) - grand) ** 2).sum() / (i - 1)
    resid = y - y.mean(1)[:, None] - y.mean(0)[None, :] + grand
    ms_e = (resid**2).sum() / ((s - 1) * (i - 1))
    expected = (ms_a + ms_b - ms_e) ** 2 / (ms_a**2 / (s - 1) + ms_b**2 / (i - 1) + ms_e**2 / ((s - 1) * (i - 1)))
    assert satterthwaite_df(y) == pytest.approx(expected)
    assert satterthwaite_df(np.array([[1.0, 2.0, 3.0, 5.0]])) == 3.0  # one seed: identities - 1
    assert satterthwaite_df(np.array([[1.0], [2.0], [4.0]])) == 2.0  # one identity: seeds - 1
    assert satterthwaite_df(np.array([[1.0, np.nan, 2.0], [2.0, 5.0, 3.0]])) == pytest.approx(
        satterthwaite_df(np.array([[1.0, 2.0], [2.0, 3.0]])))  # identities present on every seed


def test_crossed_interval_is_reproducible_and_centred() -> None:
    rng = np.random.default_rng(0)
    y = rng.uniform(size=(4, 30))
    first = crossed_interval(y, 0.95, 2000)
    assert crossed_interval(y, 0.95, 2000) == first
    low, high, nu = first
    assert low < y.mean() < high and (low + high) / 2 == pytest.approx(y.mean())
    assert crossed_interval(y, 0.5, 2000)[1] - crossed_interval(y, 0.5, 2000)[0] < high - low
    assert 1.0 <= nu
    assert all(math.isnan(v) for v in crossed_interval(np.array([[0.3]])))


def test_t_interval_equals_scipy_and_needs_three_seeds() -> None:
    values = [0.61, 0.55, 0.70, 0.66]
    expected = sps.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=sps.sem(values))
    assert t_interval(values, 0.95) == pytest.approx(expected)
    assert all(math.isnan(v) for v in t_interval([0.2, 0.4]))


# --------------------------------------------------------------------------------------------------
# paired sign-flip test


def test_sign_flip_hand_computed_p_values() -> None:
    # d = (1, 2, 3): of the 8 sign vectors only +++ and --- reach |sum| >= 6
    assert sign_flip_test([1, 2, 3]) == pytest.approx(2 / 8)
    assert paired_permutation_test([1, 2], [0, 0]) == pytest.approx(2 / 4)
    assert paired_permutation_test([1, 0], [0, 1]) == 1.0  # observed 0: every vector is as extreme
    a = np.array([0.1, 0.5, 0.5, 0.9])
    assert paired_permutation_test(a, a) == 1.0
    # zero differences carry no sign: dropped, so (1, 2, 3, 0, 0) is the test of (1, 2, 3)
    assert sign_flip_test([1, 2, 3, 0, 0]) == pytest.approx(2 / 8)
    assert math.isnan(sign_flip_test([]))


def test_sign_flip_exact_matches_brute_force_and_scipy() -> None:
    rng = np.random.default_rng(5)
    for n in (1, 2, 3, 5, 8, 11):
        a = np.round(rng.uniform(size=n), 2)
        b = np.round(a - rng.normal(0.1, 0.3, size=n), 2)
        d = (a - b)[a != b]
        obs = abs(d.sum())
        brute = np.mean([abs(np.dot(s, d)) >= obs - 1e-9 for s in itertools.product((1, -1), repeat=d.size)])
        assert paired_permutation_test(a, b) == pytest.approx(brute, abs=1e-12), n
        if n > 1:  # scipy needs two observations
            assert paired_permutation_test(a, b) == pytest.approx(scipy_p(a, b), rel=1e-9), n
    # 40 pairs, 17 non-zero differences: exact (the earlier Monte Carlo erred by up to 0.022 here)
    d = np.zeros(40)
    d[:17] = np.round(rng.normal(0.05, 0.25, size=17), 2)
    d[d == 0] = 0.01
    d[17:] = 0.0
    assert sign_flip_exact(17, 2000) and not sign_flip_exact(33, 2000)
    assert sign_flip_test(d) == pytest.approx(scipy_p(d[:17], np.zeros(17)), rel=1e-9)


def test_sign_flip_monte_carlo_beyond_the_exact_limit() -> None:
    rng = np.random.default_rng(9)
    d = rng.normal(0.2, 1.0, size=40)
    exact_by_normal = 2 * sps.norm.sf(abs(d.sum()) / np.sqrt((d**2).sum()))  # large-sample sign-flip null
    mc = sign_flip_test(d, resamples=20000)
    assert mc == pytest.approx(exact_by_normal, abs=0.03)
    assert sign_flip_test(np.ones(60), resamples=999) == pytest.approx(1 / 1000)  # (hits + 1) / (resamples + 1)
    assert sign_flip_test(d, resamples=3000) == sign_flip_test(d, resamples=3000)
    with pytest.raises(ValueError):
        paired_permutation_test([1, 2], [1])


# --------------------------------------------------------------------------------------------------
# two-sample test


def test_two_sample_by_hand_and_against_scipy() -> None:
    # {1, 2} vs {3, 4}: of the 6 splits, {1, 2} and {3, 4} reach |mean difference| >= 2
    assert two_sample_test([1, 2], [3, 4]) == pytest.approx(2 / 6)
    assert two_sample_test([1, 2, 3], [1, 2, 3]) == 1.0
    rng = np.random.default_rng(2)
    for n_a, n_b in ((3, 3), (4, 4), (5, 5), (4, 6), (6, 6)):
        a, b = rng.normal(0.3, 0.1, n_a), rng.normal(0.4, 0.1, n_b)  # no ties, so float rounding cannot matter
        assert two_sample_exact(n_a, n_b, 2000)
        assert two_sample_test(a, b) == pytest.approx(scipy_two_sample_p(a, b), rel=1e-9), (n_a, n_b)
    assert math.isnan(two_sample_test([], [1.0]))


def test_smallest_p_values_and_seeds_needed() -> None:
    assert [min_p_paired(n) for n in (1, 2, 5, 6)] == [1.0, 0.5, 2 / 32, 2 / 64]
    assert min_p_two_sample(2, 2) == pytest.approx(2 / 6) and min_p_two_sample(4, 4) == pytest.approx(2 / 70)
    assert min_p_two_sample(3, 5) == pytest.approx(1 / 56)
    assert seeds_needed("paired", 0.05) == 6 and seeds_needed("two-sample", 0.05) == 4
    assert seeds_needed("paired", 0.01) == 8 and seeds_needed("two-sample", 0.01) == 5
    # the smallest p really is attained: 6 seeds, all differences of one sign
    assert sign_flip_test(np.arange(1.0, 7.0)) == pytest.approx(min_p_paired(6))
    assert two_sample_test([1, 2, 3, 4], [5, 6, 7, 8]) == pytest.approx(min_p_two_sample(4, 4))


def test_choice_of_test() -> None:
    six = list(range(6))
    assert choose_test("two-sample", six, six) == "two-sample"
    assert choose_test("paired", six[:3], six[:3]) == "paired"
    assert choose_test("paired", [0, 1], [2, 3]) == "two-sample"  # nothing to pair


# --------------------------------------------------------------------------------------------------
# multiplicity


def test_benjamini_hochberg_equals_scipy_and_holm_by_hand() -> None:
    p = np.array([0.01, 0.04, 0.03, 0.005])
    assert adjust(p, "bh") == pytest.approx(sps.false_discovery_control(p, method="bh"))
    assert adjust(p, "bh") == pytest.approx([0.02, 0.04, 0.04, 0.02])
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max
    assert adjust(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert adjust(p, "none") == pytest.approx(p)
    with_nan = adjust([0.01, math.nan, 0.04], "bh")
    assert math.isnan(with_nan[1]) and with_nan[[0, 2]] == pytest.approx([0.02, 0.04])  # NaN is not in the family
    assert adjust([0.9, 0.95], "holm") == pytest.approx([1.0, 1.0])  # capped at 1
    with pytest.raises(ValueError, match="unknown correction"):
        adjust([0.1], "bonferroni-ish")
