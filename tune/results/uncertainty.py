"""How sure a reported accuracy is: a Wilson score interval for one run's accuracy on n points,
and a Student-t interval for a mean over seeds (df = n - 1). Both at 95% unless asked."""
from __future__ import annotations

import math
import statistics


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a proportion `correct / n`: unlike the normal approximation
    it stays inside [0, 1] and is not degenerate at 0 or n correct."""
    if n <= 0 or not 0 <= correct <= n:
        raise ValueError(f"wilson_interval: need 0 <= correct <= n and n > 0, got {correct}/{n}")
    from scipy.stats import norm

    z = norm.ppf(0.5 + confidence / 2)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """The Student-t interval of the mean of `values` (at least two), df = len(values) - 1."""
    if len(values) < 2:
        raise ValueError(f"t_interval: needs at least two values, got {len(values)}")
    from scipy.stats import t

    mean, sem = statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))
    half = t.ppf(0.5 + confidence / 2, len(values) - 1) * sem
    return mean - half, mean + half


def accuracy_interval(values: list[float], points: int | None) -> tuple[float, float, str] | None:
    """The interval to print next to an accuracy: over seeds when there are several (t), else
    the one run's Wilson interval from its `points` (None where the count is unknown)."""
    if len(values) >= 2:  # an accuracy's interval stays in [0, 1], where a t-interval of few seeds may not
        lo, hi = t_interval(values)
        return max(0.0, lo), min(1.0, hi), f"t, {len(values)} runs"
    if len(values) == 1 and points:
        lo, hi = wilson_interval(round(values[0] * points), points)
        return lo, hi, f"Wilson, {points} points"
    return None
