"""Paired comparisons (tune/results/paired.py) against independent computations: scipy's exact binomial
test and interval, a plain loop bootstrap, and the normal approximation."""
from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import paired_points
from scipy import stats

from tune.results.paired import (Paired, bootstrap_interval, clopper_pearson, compare, format_comparisons,
                                 mcnemar_difference, seeds_and_points, seeds_interval, verdict, winner_standing)
from tune.results.uncertainty import accuracy_interval


@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (10, 10), (37, 150), (1, 1)])
def test_clopper_pearson_is_scipys_exact_interval(k, n):
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert clopper_pearson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-10)


@pytest.mark.parametrize("only_a, only_b", [(0, 0), (5, 0), (6, 0), (10, 4), (30, 12), (12, 30), (40, 40)])
def test_mcnemar_difference_test_and_interval_agree(only_a, only_b):
    a, b = paired_points(150, only_a, only_b, 50)
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
    r = mcnemar_difference(*paired_points(100, 6, 0, 20))
    assert r.p_value == pytest.approx(2 / 64) and r.distinguishable
    assert r.high == pytest.approx(0.06)  # all six disagreements going A's way
    assert not mcnemar_difference(*paired_points(100, 5, 0, 20)).distinguishable  # p = 2 / 32 = 0.0625


def _loop_bootstrap(a: list[np.ndarray], b: list[np.ndarray], resamples: int, seed: int,
                    shared: bool = False) -> tuple[float, float]:
    """The same bootstrap written the plain way: resample seeds, then point indices (one draw of
    indices for all seeds when `shared`, else one per seed)."""
    rng = np.random.default_rng(seed)
    k, out = len(a), []
    for _ in range(resamples):
        idx_all = rng.integers(len(a[0]), size=len(a[0]))
        means = []
        for i in rng.integers(k, size=k):
            idx = idx_all if shared else rng.integers(len(a[i]), size=len(a[i]))
            means.append(a[i][idx].mean() - b[i][idx].mean())
        out.append(np.mean(means))
    return tuple(np.quantile(out, [0.025, 0.975]))


@pytest.mark.parametrize("shared", [False, True])
def test_bootstrap_is_fixed_by_its_seed_and_matches_a_plain_loop(shared):
    rng = np.random.default_rng(7)
    a = [rng.random(400) < p for p in (0.55, 0.6, 0.52)]
    b = [rng.random(400) < p for p in (0.5, 0.5, 0.5)]
    first, second = bootstrap_interval(a, b, shared), bootstrap_interval(a, b, shared)
    assert first == second  # fixed seed: the same interval every time
    low, high = _loop_bootstrap(a, b, 3000, seed=123, shared=shared)  # another seed and another way of drawing
    assert first == pytest.approx((low, high), abs=0.008)


def test_shared_points_are_resampled_together():
    # every seed scored on the same points, and the seeds agree point by point: resampling the points
    # together keeps that agreement, so the interval is the one seed's (independent draws would narrow it)
    rng = np.random.default_rng(3)
    a0, b0 = rng.random(500) < 0.6, rng.random(500) < 0.5
    shared = bootstrap_interval([a0] * 4, [b0] * 4, shared_points=True)
    alone = bootstrap_interval([a0], [b0])
    independent = bootstrap_interval([a0] * 4, [b0] * 4)
    assert shared == pytest.approx(alone, abs=0.006)
    assert independent[1] - independent[0] < 0.6 * (shared[1] - shared[0])


def test_one_seed_bootstrap_matches_the_normal_approximation():
    rng = np.random.default_rng(1)
    a, b = rng.random(2000) < 0.6, rng.random(2000) < 0.55
    low, high = bootstrap_interval([a], [b])
    d = a.astype(float) - b.astype(float)
    half = 1.96 * d.std() / math.sqrt(len(d))
    assert (low, high) == pytest.approx((d.mean() - half, d.mean() + half), abs=0.004)


def test_seeds_interval_is_scipys_t_interval():
    diffs = [0.02, -0.01, 0.035, 0.004]
    expected = stats.t.interval(0.95, len(diffs) - 1, loc=np.mean(diffs), scale=stats.sem(diffs))
    assert seeds_interval(diffs) == pytest.approx(expected, abs=1e-12)


def test_several_seeds_take_the_wider_of_the_seed_and_point_intervals():
    rng = np.random.default_rng(5)
    a = [rng.random(4000) < p for p in (0.62, 0.54, 0.58)]  # A's seeds move: 8 points apart
    b = [rng.random(4000) < 0.5 for _ in range(3)]
    r = seeds_and_points(a, b)
    per_seed = [x.mean() - y.mean() for x, y in zip(a, b)]
    t_low, t_high = seeds_interval(per_seed)
    b_low, b_high = bootstrap_interval(a, b)
    assert r.difference == pytest.approx(np.mean(per_seed))
    assert (r.low, r.high) == pytest.approx((min(t_low, b_low), max(t_high, b_high)), abs=1e-12)
    assert (r.low, r.high) == pytest.approx((t_low, t_high), abs=1e-12)  # here the seeds' spread is the larger noise
    assert not r.distinguishable and b_low > 0  # the bootstrap alone would have called it


def test_compare_pairs_seed_by_seed_and_says_why_it_cannot():
    a, b = paired_points(200, 30, 5, 80)
    one = compare({0: a, 1: a}, {0: b, 2: b})
    assert one.method == "McNemar exact" and one.seeds == (0,)
    two = compare({0: a, 1: a}, {0: b, 1: b})
    assert two.method == "t over seeds and bootstrap over points" and two.seeds == (0, 1) and two.better
    assert compare({0: a}, {1: b}) == "no seed in common: not compared"
    assert compare({0: a}, {0: b[:199]}) == "scored on different numbers of points [(200, 199)]: not compared"


def test_verdict_names_the_configs_the_leader_cannot_be_told_from():
    close = Paired(0.004, -0.02, 0.03, 150, (0,), "McNemar exact", 0.7, 20)
    far = Paired(0.2, 0.15, 0.25, 1500, (0, 1, 2), "t over seeds and bootstrap over points")
    far_one_seed = Paired(0.2, 0.15, 0.25, 150, (0,), "McNemar exact", 1e-9, 40)
    behind = Paired(-0.2, -0.25, -0.15, 1500, (0, 1, 2), "t over seeds and bootstrap over points")
    assert verdict("w=64", {"w=32": close, "w=128": far, "w=256": close}) == \
        "w=64 is not distinguishable from w=32, w=256 at 95%"
    assert verdict("w=64", {"w=128": far}) == "w=64 is distinguishably better than every other config compared (1) at 95%"
    assert verdict("w=64", {"w=128": far, "w=32": behind}) == (
        "w=64 is distinguishably better than w=128 at 95%; w=32 did distinguishably better than it on the seeds both "
        "have")
    assert verdict("w=64", {"w=128": far_one_seed}).endswith(
        "(a difference on one seed tells those two runs apart, not the configs: how much a config moves from seed to "
        "seed is not in it)")
    assert "nothing to compare" in verdict("w=64", {"w=128": "no seed in common: not compared"})
    assert [winner_standing(c) for c in ({"a": far}, {"a": far, "b": far_one_seed}, {"a": far, "b": close},
                                         {"a": "no seed in common: not compared"})] == \
        ["true", "runs only", "false", "not compared"]
    lines = format_comparisons({"w=32": close, "w=128": "no seed in common: not compared"})
    assert "+0.40 points [-2.00, +3.00]  not distinguishable  (McNemar exact, p = 0.7, 150 points, seed 0)" in lines[0]
    assert lines[1].endswith("no seed in common: not compared")
    same = mcnemar_difference(*paired_points(100, 0, 0, 40))
    assert "right and wrong on exactly the same points  not distinguishable" in format_comparisons({"w": same})[0]


def test_accuracy_interval_of_seeds_stays_within_zero_and_one():
    lo, hi, how = accuracy_interval([0.9, 0.99], None)
    assert how == "t, 2 runs" and lo >= 0.0 and hi == 1.0


def test_configs_whose_short_labels_meet_get_every_digit():
    from types import SimpleNamespace

    from bilaw.config.train_config import TrainConfig
    from tune import spaces as sp
    from tune.results.best_vs_rest import _labels, config_key

    plan = SimpleNamespace(space=sp.load_space("bilaw_meta"), seeds=[0])
    a, b, c = (TrainConfig.from_dict({"method": "bilaw", "meta_lr": v}) for v in (0.0163300, 0.0163301, 0.02))
    labels = [_labels(plan, {config_key(plan, cfg): cfg for cfg in (a, b, c)})[config_key(plan, cfg)] for cfg in (a, b, c)]
    # a and b are both 0.01633 at 4 digits: told apart by every digit; c keeps its short label
    assert "meta_lr=0.01633 " in labels[0] and "meta_lr=0.0163301 " in labels[1] and "meta_lr=0.02 " in labels[2]
