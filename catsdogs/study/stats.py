"""Student's t without scipy (the paired test that calls a study's gap real or not), and mean ± sd as text."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Protocol, Sequence


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), by the continued fraction of Numerical Recipes (modified Lentz)."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must lie in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(x, a, b) / a
    return 1.0 - front * _beta_fraction(1.0 - x, b, a) / b


def _beta_fraction(x: float, a: float, b: float, tiny: float = 1e-300, eps: float = 1e-15) -> float:
    def guard(value: float) -> float:
        return value if abs(value) > tiny else tiny

    c, d = 1.0, 1.0 / guard(1.0 - (a + b) * x / (a + 1.0))
    result = d
    for m in range(1, 1000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 / guard(1.0 + numerator * d)
            c = guard(1.0 + numerator / c)
            result *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return result


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom."""
    return 0.0 if math.isinf(t) else regularized_beta(df / (df + t * t), df / 2.0, 0.5)


def t_critical(df: int, level: float = 0.95) -> float:
    """The t with two-sided tail probability 1 - level, by bisection on `t_two_sided_p`."""
    alpha, low, high = 1.0 - level, 0.0, 1.0
    while t_two_sided_p(high, df) > alpha:
        high *= 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        low, high = (middle, high) if t_two_sided_p(middle, df) > alpha else (low, middle)
    return (low + high) / 2.0


ALPHA = 0.05  # a gap is called distinguishable when the paired test's p-value is below this
MIN_SEEDS = 3  # fewer seeds never make a gap distinguishable: with one degree of freedom one lucky draw decides


@dataclass
class PairedTest:
    """A paired t-test of `a - b` over seeds; `t` and `p` are None when every seed gave the same gap (no spread)."""

    n: int
    mean_diff: float
    sd_diff: float
    t: float | None
    p: float | None
    ci95: tuple[float, float]
    wins: int  # seeds on which a beat b
    cannot_tell: str | None = None  # why these seeds give no verdict whatever p is, with what to do

    def distinguishable(self, alpha: float) -> bool:
        """Whether the gap is told apart at level `alpha`: never with fewer than MIN_SEEDS seeds or no spread."""
        return self.cannot_tell is None and self.p is not None and self.p < alpha


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> PairedTest | None:
    """None with fewer than two pairs: one seed gives no estimate of the spread."""
    diffs = [x - y for x, y in zip(a, b)]
    n = len(diffs)
    if n < 2:
        return None
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    wins = sum(d > 0 for d in diffs)
    if sd < 1e-12:
        # Common on small test sets, where accuracy moves in steps of 1/N: an infinite t would prove nothing.
        return PairedTest(n, mean, 0.0, None, None, (mean, mean), wins,
                          f"cannot tell with {n} seeds: every seed gave the same gap, which leaves no spread to "
                          "test it against, so run more seeds")
    se = sd / math.sqrt(n)
    half = t_critical(n - 1) * se
    too_few = (f"cannot tell with {n} seeds: a verdict needs {MIN_SEEDS} or more, so run more seeds"
               if n < MIN_SEEDS else None)
    return PairedTest(n, mean, sd, mean / se, t_two_sided_p(mean / se, n - 1), (mean - half, mean + half), wins,
                      too_few)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values, in their given order.

    The k-th smallest of m p-values is multiplied by m - k + 1, each adjusted value is raised to at
    least the one before it in that order, and none exceeds 1; an adjusted p below alpha rejects at
    familywise error rate alpha. [0.01, 0.04, 0.03] -> [0.03, 0.06, 0.06].
    """
    m = len(p_values)
    adjusted, running = [0.0] * m, 0.0
    for k, index in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - k) * p_values[index]))
        adjusted[index] = running
    return adjusted


def holm_levels(p_values: Sequence[float], alpha: float) -> list[float]:
    """The level Holm's method tests each p-value at: alpha / (m - k + 1) for the k-th smallest of m."""
    m, levels = len(p_values), [0.0] * len(p_values)
    for k, index in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        levels[index] = alpha / (m - k)
    return levels


POWER = 0.8  # the chance of telling a real gap apart that "seeds needed" asks for


def seeds_needed(gap: float, sd: float, level: float, power: float = POWER) -> int | None:
    """Seeds a paired test at two-sided `level` needs to tell apart a true `gap` with chance `power`, when
    the per-seed differences spread by `sd`: the smallest n (at least MIN_SEEDS) with
    n >= ((t(1 - level/2) + t(power)) * sd / gap)^2, t being Student's quantiles at n - 1 degrees of
    freedom. Within a seed of the exact answer (the noncentral t) at these sizes, where the normal
    approximation, z for t, promises too few: fewer, at times, than the seeds that just failed to tell.
    None for no gap (no number of seeds tells a gap of 0)."""
    if gap == 0:
        return None
    ratio = (sd / abs(gap)) ** 2
    z = statistics.NormalDist().inv_cdf
    n = max(MIN_SEEDS, math.ceil((z(1 - level / 2) + z(power)) ** 2 * ratio))  # t's quantiles exceed z's
    while n < (t_critical(n - 1, 1.0 - level) + t_critical(n - 1, 2.0 * power - 1.0)) ** 2 * ratio:
        n += 1
    return n


def binomial_cdf_half(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), as I_{1/2}(n - k, k + 1)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return regularized_beta(0.5, n - k, k + 1)


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar test of two classifiers on the same photos.

    `only_a` counts photos that model A got right and B wrong, `only_b` the reverse; photos both
    got right or both wrong say nothing about which is better. Under "equally good" each
    disagreement is a fair coin, so the p-value is a two-sided binomial tail.
    """
    n = only_a + only_b
    if n == 0:
        return 1.0
    return min(1.0, 2.0 * binomial_cdf_half(min(only_a, only_b), n))


def percent(value: float | None, digits: int = 1) -> str:
    """A fraction as a percentage, `—` for none: 0.8123 -> "81.2%"."""
    return "—" if value is None else f"{100 * value:.{digits}f}%"


class _MeanSd(Protocol):
    mean: Any
    sd: float | None


def mean_sd(spread: _MeanSd, pct: bool = True, digits: int = 1) -> str:
    """A spread (its mean and sd) as "81.2 ± 1.3%", or without the sd where there is one value."""
    show = (lambda v: f"{100 * v:.{digits}f}") if pct else (lambda v: f"{v:.{digits}f}")
    text = show(spread.mean) + ("" if spread.sd is None else f" ± {show(spread.sd)}")
    return text + ("%" if pct else "")
