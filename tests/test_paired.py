"""Paired comparisons (tune/paired.py) against independent computations: scipy's exact binomial
test and interval, a plain loop bootstrap, and the normal approximation."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from tune.paired import (Paired, bootstrap_difference, clopper_pearson, compare, format_comparisons,
                         mcnemar_difference, verdict)
from tune.uncertainty import accuracy_interval


@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (10, 10), (37, 150), (1, 1)])
def test_clopper_pearson_is_scipys_exact_interval(k, n):
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert clopper_pearson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-10)


def _pair(n: int, only_a: int, only_b: int, both: int) -> tuple[np.ndarray, np.ndarray]:
    """Bool arrays over n points: only_a points right for A alone, only_b for B alone, both for both."""
    a, b = np.zeros(n, bool), np.zeros(n, bool)
    a[:only_a] = True
    b[only_a:only_a + only_b] = True
    a[only_a + only_b:only_a + only_b + both] = b[only_a + only_b:only_a + only_b + both] = True
    return a, b


@pytest.mark.parametrize("only_a, only_b", [(0, 0), (5, 0), (6, 0), (10, 4), (30, 12), (12, 30), (40, 40)])
def test_mcnemar_difference_test_and_interval_agree(only_a, only_b):
    a, b = _pair(150, only_a, only_b, 50)
    r = mcnemar_difference(a, b)
    assert r.difference == pytest.approx((only_a - only_b) / 150)
    assert r.difference == pytest.approx(a.mean() - b.mean())
    expected_p = 1.0 if only_a + only_b == 0 else stats.binomtest(only_a, only_a + only_b, 0.5).pvalue
    assert r.p_value == pytest.approx(expected_p, rel=1e-12)
    assert r.low <= r.difference <= r.high
    excludes_zero = r.low > 0 or r.high < 0
    assert r.distinguishable == (expected_p < 0.05) == excludes_zero  # the exact test and its interval agree


def test_a_hand_computed_mcnemar_case():
    # 6 points where only A is right, none the other way: p = 2 / 2**6 = 0.03125
    r = mcnemar_difference(*_pair(100, 6, 0, 20))
    assert r.p_value == pytest.approx(2 / 64) and r.distinguishable
    assert r.high == pytest.approx(0.06)  # all six disagreements going A's way
    assert not mcnemar_difference(*_pair(100, 5, 0, 20)).distinguishable  # p = 2 / 32 = 0.0625


def _loop_bootstrap(a: list[np.ndarray], b: list[np.ndarray], resamples: int, seed: int) -> tuple[float, float]:
    """The same bootstrap written the plain way: resample seeds, then each seed's point indices."""
    rng = np.random.default_rng(seed)
    k, out = len(a), []
    for _ in range(resamples):
        means = []
        for i in rng.integers(k, size=k):
            idx = rng.integers(len(a[i]), size=len(a[i]))
            means.append(a[i][idx].mean() - b[i][idx].mean())
        out.append(np.mean(means))
    return tuple(np.quantile(out, [0.025, 0.975]))


def test_bootstrap_is_fixed_by_its_seed_and_matches_a_plain_loop():
    rng = np.random.default_rng(7)
    a = [rng.random(400) < p for p in (0.55, 0.6, 0.52)]
    b = [rng.random(400) < p for p in (0.5, 0.5, 0.5)]
    first, second = bootstrap_difference(a, b), bootstrap_difference(a, b)
    assert (first.low, first.high) == (second.low, second.high)  # fixed seed: the same interval every time
    assert first.difference == pytest.approx(np.mean([x.mean() - y.mean() for x, y in zip(a, b)]))
    low, high = _loop_bootstrap(a, b, 3000, seed=123)  # another seed and another way of drawing
    assert first.low == pytest.approx(low, abs=0.008) and first.high == pytest.approx(high, abs=0.008)


def test_one_seed_bootstrap_matches_the_normal_approximation():
    rng = np.random.default_rng(1)
    a, b = rng.random(2000) < 0.6, rng.random(2000) < 0.55
    r = bootstrap_difference([a], [b])
    d = a.astype(float) - b.astype(float)
    half = 1.96 * d.std() / math.sqrt(len(d))
    assert r.low == pytest.approx(d.mean() - half, abs=0.004) and r.high == pytest.approx(d.mean() + half, abs=0.004)


def test_compare_pairs_seed_by_seed_and_refuses_different_points():
    a, b = _pair(200, 30, 5, 80)
    one = compare({0: a, 1: a}, {0: b, 2: b})
    assert one.method == "McNemar exact" and one.seeds == (0,)
    two = compare({0: a, 1: a}, {0: b, 1: b})
    assert two.method == "paired bootstrap" and two.seeds == (0, 1) and two.distinguishable
    assert compare({0: a}, {1: b}) is None
    with pytest.raises(ValueError, match="seed 0: the two configs were scored on different points \\(200 and 199\\)"):
        compare({0: a}, {0: b[:199]})


def test_verdict_names_the_configs_the_leader_cannot_be_told_from():
    close = Paired(0.004, -0.02, 0.03, 150, (0,), "McNemar exact", 0.7)
    far = Paired(0.2, 0.15, 0.25, 150, (0,), "McNemar exact", 1e-9)
    assert verdict("w=64", {"w=32": close, "w=128": far, "w=256": close}) == \
        "w=64 is not distinguishable from w=32, w=256 at 95%"
    assert verdict("w=64", {"w=128": far}) == "w=64 is distinguishable from every other config compared (1) at 95%"
    assert "nothing to compare" in verdict("w=64", {"w=128": None})
    lines = format_comparisons({"w=32": close, "w=128": None})
    assert "+0.40 points [-2.00, +3.00]  not distinguishable  (McNemar exact, p = 0.7, 150 points, seed 0)" in lines[0]
    assert "not compared" in lines[1]


def test_accuracy_interval_of_seeds_stays_within_zero_and_one():
    lo, hi, how = accuracy_interval([0.9, 0.99], None)
    assert how == "t, 2 runs" and lo >= 0.0 and hi == 1.0


def test_configs_whose_short_labels_meet_get_every_digit():
    from types import SimpleNamespace

    from bilaw.config import TrainConfig
    from tune import spaces as sp
    from tune.search_paired import _labels, config_key

    plan = SimpleNamespace(space=sp.load_space("bilaw_meta"), seeds=[0])
    a, b, c = (TrainConfig.from_dict({"method": "bilaw", "meta_lr": v}) for v in (0.0163300, 0.0163301, 0.02))
    labels = [_labels(plan, {config_key(plan, cfg): cfg for cfg in (a, b, c)})[config_key(plan, cfg)] for cfg in (a, b, c)]
    # a and b are both 0.01633 at 4 digits: told apart by every digit; c keeps its short label
    assert "meta_lr=0.01633 " in labels[0] and "meta_lr=0.0163301 " in labels[1] and "meta_lr=0.02 " in labels[2]
