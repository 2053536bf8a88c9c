"""The paired t-test behind Task Haystack's pass rule, from the math (no scipy).

Two-sided p of Student's t with `df` degrees of freedom is the regularized incomplete beta function
I_x(df/2, 1/2) at x = df / (df + t^2), evaluated here by its continued fraction (modified Lentz).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

ALPHA = 0.05  # the paper's significance level


def _beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of I_x(a, b) (converges fast for x < (a + 1) / (a + b + 2))."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    frac = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            frac *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return frac


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the CDF of a Beta(a, b) variable at x."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom."""
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0
    return regularized_beta(df / 2.0, 0.5, df / (df + t * t))


@dataclass(frozen=True)
class PairedT:
    t: float  # nan when every difference is zero (no evidence either way)
    p: float
    df: int
    mean_difference: float


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> PairedT:
    """Paired t-test of a against b (the statistic of `scipy.stats.ttest_rel(a, b)`, two-sided)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length ({len(a)} vs {len(b)})")
    n = len(a)
    if n < 2:
        raise ValueError("a paired t-test needs at least two pairs")
    diffs = [float(x) - float(y) for x, y in zip(a, b)]
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1)
    if var == 0.0:
        t = math.nan if mean == 0.0 else math.copysign(math.inf, mean)
    else:
        t = mean / math.sqrt(var / n)
    return PairedT(t=t, p=t_two_sided_p(t, n - 1), df=n - 1, mean_difference=mean)


def significantly_worse(lifelong: Sequence[float], single: Sequence[float], alpha: float = ALPHA) -> bool:
    """Task Haystack's fail rule: Lifelong ICL is worse than Single-task ICL with p < alpha (and t < 0)."""
    r = paired_t_test(lifelong, single)
    return not math.isnan(r.t) and r.t < 0 and r.p < alpha
