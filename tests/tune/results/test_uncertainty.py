"""Intervals against hand-computed values and scipy's own distributions."""
from __future__ import annotations

import math

import pytest
from scipy import stats

from tune.results.uncertainty import accuracy_interval, t_interval, wilson_interval


def test_wilson_against_hand_computed_cases():
    # 50/100: centre 0.5, half-width 1.96 sqrt(0.25/100 + 1.96^2/40000) / (1 + 1.96^2/100)
    z = stats.norm.ppf(0.975)
    half = z * math.sqrt(0.25 / 100 + z * z / 40000) / (1 + z * z / 100)
    assert wilson_interval(50, 100) == pytest.approx((0.5 - half, 0.5 + half), abs=1e-12)
    assert wilson_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)  # the textbook value
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(z * z / 20 / (1 + z * z / 20), abs=1e-12)  # not degenerate at 0
    lo, hi = wilson_interval(650, 1000)  # about 1.5 points either side near 65% on 1,000 images
    assert (0.650 - lo, hi - 0.650) == pytest.approx((0.0300, 0.0289), abs=1e-3)
    with pytest.raises(ValueError, match="need 0 <= correct <= n and n > 0, got 5/0"):
        wilson_interval(5, 0)


def test_t_interval_against_scipy():
    values = [0.664, 0.667, 0.671]
    expected = stats.t.interval(0.95, 2, loc=sum(values) / 3, scale=stats.sem(values))
    assert t_interval(values) == pytest.approx(expected, abs=1e-12)
    assert t_interval([1.0, 2.0, 3.0]) == pytest.approx((2 - 4.302652729911275 / math.sqrt(3),
                                                         2 + 4.302652729911275 / math.sqrt(3)), abs=1e-9)
    with pytest.raises(ValueError, match="needs at least two values, got 1"):
        t_interval([0.5])


def test_the_printed_interval_is_t_over_runs_else_wilson_over_points():
    assert accuracy_interval([0.6, 0.7], 360)[2] == "t, 2 runs"
    lo, hi, how = accuracy_interval([0.5], 100)
    assert how == "Wilson, 100 points" and (lo, hi) == wilson_interval(50, 100)
    assert accuracy_interval([0.5], None) is None and accuracy_interval([], 100) is None
