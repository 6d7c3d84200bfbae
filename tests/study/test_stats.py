"""Tests for catsdogs.study.stats against table values, closed forms and sums worked out by hand."""

from __future__ import annotations

import math

import pytest

from catsdogs.study.stats import (binomial_cdf_half, holm, holm_levels, mcnemar_exact_p, paired_t_test, seeds_needed,
                                  t_critical, t_two_sided_p)


@pytest.mark.parametrize("t, df, p", [(2.776, 4, 0.05), (12.706, 1, 0.05), (4.303, 2, 0.05), (2.228, 10, 0.05),
                                      (0.0, 3, 1.0), (1.96, 100_000, 0.05)])
def test_t_distribution_matches_table_values(t: float, df: int, p: float) -> None:
    assert t_two_sided_p(t, df) == pytest.approx(p, abs=2e-4)
    assert t_two_sided_p(-t, df) == t_two_sided_p(t, df)


@pytest.mark.parametrize("t", [0.3, 1.0, 2.5, 7.0, 40.0])
def test_t_distribution_matches_closed_forms(t: float) -> None:
    assert t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), rel=1e-9)  # Cauchy
    assert t_two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)


def test_t_critical_inverts_the_tail() -> None:
    assert t_critical(1) == pytest.approx(12.706, abs=1e-3)
    assert t_critical(4) == pytest.approx(2.776, abs=1e-3)
    assert t_two_sided_p(t_critical(7), 7) == pytest.approx(0.05, abs=1e-9)


def test_paired_t_test_on_known_differences() -> None:
    test = paired_t_test([0.80, 0.70, 0.90], [0.70, 0.65, 0.75])  # differences 0.10, 0.05, 0.15
    assert test.mean_diff == pytest.approx(0.10) and test.sd_diff == pytest.approx(0.05)
    assert test.t == pytest.approx(0.10 / (0.05 / math.sqrt(3)))
    assert test.p == pytest.approx(1 - test.t / math.sqrt(2 + test.t ** 2))  # 2 degrees of freedom
    half = t_critical(2) * 0.05 / math.sqrt(3)
    assert test.ci95 == pytest.approx((0.10 - half, 0.10 + half)) and test.wins == 3
    assert paired_t_test([0.9], [0.8]) is None  # one seed: no spread, no test
    equal = paired_t_test([0.6, 0.7], [0.6, 0.7])  # no gap on any seed: no spread either, so no verdict
    assert (equal.t, equal.p, equal.distinguishable(0.05)) == (None, None, False)


def test_paired_t_test_worked_by_hand_with_four_seeds() -> None:
    # Differences 0.02, 0.04, 0.06, 0.08: mean 0.05, deviations -0.03, -0.01, 0.01, 0.03, so
    # sd = sqrt(0.002 / 3) = 0.025820 and se = sd / 2 = 0.012910, t = 0.05 / 0.012910 = sqrt(15) = 3.8730.
    # With 3 degrees of freedom the two-sided tail is 1 - (2 / pi) * (atan(u) + u / (1 + u^2)), u = t / sqrt(3)
    # = sqrt(5): 1 - 0.63662 * (1.15026 + 0.37268) = 0.03047, between the table's 0.05 (t = 3.182) and 0.02
    # (t = 4.541). The 95% interval is 0.05 ± 3.182 * 0.012910 = 0.05 ± 0.04108.
    test = paired_t_test([0.62, 0.64, 0.66, 0.68], [0.60, 0.60, 0.60, 0.60])
    assert (test.n, test.wins) == (4, 4)
    assert test.mean_diff == pytest.approx(0.05) and test.sd_diff == pytest.approx(0.025820, abs=1e-6)
    assert test.t == pytest.approx(3.8730, abs=1e-4)
    assert test.p == pytest.approx(0.03047, abs=1e-5)
    assert test.ci95 == pytest.approx((0.05 - 0.04108, 0.05 + 0.04108), abs=1e-4)
    assert test.cannot_tell is None and test.distinguishable(0.05) and not test.distinguishable(0.01)


@pytest.mark.parametrize(("a", "b", "n"), [([0.55, 0.60], [0.50, 0.55], 2),  # the case: p was 0.0
                                           ([0.70, 0.65, 0.60], [0.60, 0.55, 0.50], 3),
                                           ([0.9] * 6, [0.5] * 6, 6)])
def test_a_gap_without_spread_cannot_tell_and_asks_for_more_seeds(a: list[float], b: list[float], n: int) -> None:
    test = paired_t_test(a, b)
    assert test.sd_diff == 0.0 and test.mean_diff > 0 and test.wins == n
    assert test.t is None and test.p is None  # no spread to test the gap against: no t, no p-value
    assert not test.distinguishable(0.05)
    assert test.cannot_tell.startswith(f"cannot tell with {n} seeds: ") and "run more seeds" in test.cannot_tell


def test_two_seeds_never_tell_a_gap_apart() -> None:
    # Differences 0.80 and 0.81: t = 0.805 / (0.00707 / sqrt(2)) = 161, p = 1 - (2 / pi) * atan(161) = 0.0040
    # with 1 degree of freedom, yet one more seed could undo it: fewer than 3 seeds give no verdict.
    test = paired_t_test([0.90, 0.95], [0.10, 0.14])
    assert test.t == pytest.approx(161.0) and test.p == pytest.approx(1 - 2 / math.pi * math.atan(161.0))
    assert test.p < 0.01 and not test.distinguishable(0.05)
    assert test.cannot_tell.startswith("cannot tell with 2 seeds: ") and "run more seeds" in test.cannot_tell


@pytest.mark.parametrize(("k", "n"), [(0, 1), (0, 5), (2, 5), (3, 10), (7, 10), (40, 100), (9, 30)])
def test_binomial_cdf_half_equals_the_sum_of_coin_flips(k: int, n: int) -> None:
    exact = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    assert binomial_cdf_half(k, n) == pytest.approx(exact, rel=1e-10)
    assert binomial_cdf_half(-1, n) == 0.0 and binomial_cdf_half(n, n) == 1.0


def test_mcnemar_by_hand() -> None:
    # 1 against 5 disagreements: P(X <= 1) for 6 fair coins is 7/64; two-sided 14/64.
    assert mcnemar_exact_p(1, 5) == pytest.approx(14 / 64)
    assert mcnemar_exact_p(5, 1) == mcnemar_exact_p(1, 5)
    assert mcnemar_exact_p(0, 8) == pytest.approx(2 / 256)
    assert mcnemar_exact_p(4, 4) == 1.0  # an even split is no evidence at all
    assert mcnemar_exact_p(0, 0) == 1.0  # no disagreements: nothing to tell them apart


def test_mcnemar_counts_only_disagreements_at_scale() -> None:
    # 52 against 76 (cpu-fast against cpu-best on 3,126 photos in the README): p about 0.04.
    exact = 2 * sum(math.comb(128, i) for i in range(53)) / 2 ** 128
    assert mcnemar_exact_p(52, 76) == pytest.approx(exact, rel=1e-9)
    assert 0.03 < mcnemar_exact_p(52, 76) < 0.05


def test_holm_by_hand() -> None:
    # sorted: 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04, raised to the 0.06 before it; back in order
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm_levels([0.01, 0.04, 0.03], 0.05) == pytest.approx([0.05 / 3, 0.05, 0.05 / 2])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # 0.5 x 2 = 1, capped; 0.6 raised to it
    assert holm([0.02]) == [0.02] and holm([]) == []
    # at 0.05 Holm rejects the first only, where three separate tests would have rejected all three
    assert [p < 0.05 for p in holm([0.01, 0.04, 0.03])] == [True, False, False]


def test_seeds_needed_by_hand() -> None:
    # Student's t at n - 1 df: n = 34: t(33; 0.975) = 2.0345, t(33; 0.8) = 0.8526, ((2.0345 + 0.8526) * 2)^2 =
    # 33.34 <= 34; n = 33: ((2.0369 + 0.8530) * 2)^2 = 33.41 > 33. (The normal approximation said 32.)
    assert seeds_needed(0.01, 0.02, 0.05) == 34
    # Holm's second level of two, 0.05 / 2
    assert seeds_needed(0.01, 0.02, 0.025) == 41
    assert seeds_needed(-0.01, 0.02, 0.05) == 34  # the gap's sign does not matter


def test_seeds_needed_agrees_with_the_exact_noncentral_t() -> None:
    # The exact sample sizes of a paired t-test (noncentral t; G*Power's "means: difference from constant,
    # matched pairs"), two-sided 0.05, power 0.8, for effect sizes gap / sd of 0.5, 0.8, 1 and 2.
    assert [seeds_needed(effect, 1.0, 0.05) for effect in (0.5, 0.8, 1.0, 2.0)] == [34, 15, 10, 5]


def test_seeds_needed_is_never_below_the_seeds_that_failed_to_tell() -> None:
    # Five seeds whose gap a paired test at 0.05 / 3 just missed (p = 0.018): the normal approximation
    # promised 4 seeds, fewer than the five that did not tell.
    test = paired_t_test([0.716, 0.662, 0.710, 0.686, 0.648], [0.728, 0.758, 0.750, 0.744, 0.710])
    assert test.p > 0.05 / 3
    assert seeds_needed(test.mean_diff, test.sd_diff, 0.05 / 3) > 5
    assert seeds_needed(0.2, 0.01, 0.05) == 3  # never fewer than a verdict needs
    assert seeds_needed(0.0, 0.02, 0.05) is None  # no gap observed: no number of seeds tells it
