"""Tests for catsdogs.study.stats against table values, closed forms and sums worked out by hand."""

from __future__ import annotations

import math

import pytest

from catsdogs.study.stats import binomial_cdf_half, mcnemar_exact_p, paired_t_test, t_critical, t_two_sided_p


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
    assert paired_t_test([0.6, 0.7], [0.6, 0.7]).p == 1.0


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
