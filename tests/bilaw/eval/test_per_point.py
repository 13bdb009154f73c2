"""Per-point results of a run's best state, McNemar's exact test, and the gradient-masking flag."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from bilaw import TrainConfig
from bilaw.eval.per_point import MASKING_MIN_POINTS, masking_check, mcnemar_p
from bilaw.runs.saved import save_run
from bilaw.training.trainer import train

from helpers import paired_points  # PGD right alone, AutoAttack right alone, both


@pytest.mark.parametrize("b, c", [(0, 0), (3, 0), (10, 4), (25, 40), (100, 0), (7, 7)])
def test_mcnemar_is_the_exact_two_sided_binomial_test(b, c):
    expected = 1.0 if b + c == 0 else stats.binomtest(b, b + c, 0.5).pvalue
    assert mcnemar_p(b, c) == pytest.approx(expected, rel=1e-12)


def test_the_flag_needs_a_large_significant_gap_on_enough_points():
    big = masking_check(*paired_points(1000, 100, 0, 600), gap_points=5.0)
    assert big["suspect_gradient_masking"] and big["masking_gap_points"] == pytest.approx(10.0)
    assert big["masking_p_value"] < 1e-20
    small = masking_check(*paired_points(1000, 20, 0, 600), gap_points=5.0)  # significant, but 2 points
    assert not small["suspect_gradient_masking"] and small["masking_p_value"] < 0.05
    few = masking_check(*paired_points(100, 20, 0, 50), gap_points=5.0)  # 20 points, but on 100 points only
    assert MASKING_MIN_POINTS == 500 and not few["suspect_gradient_masking"]


def test_a_run_keeps_its_per_point_results_beside_its_metrics(tmp_path):
    cfg = TrainConfig.from_dict({"epochs": 2, "batch_size": 256, "pgd_steps": 2, "eval_pgd_steps": 2,
                                 "aa_samples": 30, "aa_attacks": ["apgd-ce"], "aa_n_iter": 2,
                                 "analysis_samples": 0, "plots": False, "device": "cpu"})
    result = train(cfg, progress=False, log=lambda _: None)
    save_run(result, tmp_path)
    points = np.load(tmp_path / "per_point.npz")
    final = result.final
    assert points["test_clean"].mean() == pytest.approx(final["test_clean_acc"], abs=1e-12)
    assert points["test_pgd"].mean() == pytest.approx(final["test_pgd_acc"], abs=1e-12)
    assert len(points["test_aa"]) == 30 and points["test_aa"].mean() == pytest.approx(final["test_aa_acc"], abs=1e-12)
    assert points["test_pgd"][:30].mean() == pytest.approx(final["test_pgd_acc_aa_subset"], abs=1e-12)
    assert (points["test_index"] == np.arange(final["test_points"])).all()
    assert len(points["holdout_clean"]) == len(points["holdout_index"]) == result.config.resolved().holdout_val_size
    # the held-out points are scored as the epochs' validation scored them: their mean is the ranking metric
    best = result.history[final["best_epoch"] - 1]  # epochs count from 1
    assert points["holdout_pgd"].mean() == pytest.approx(best["best_val_pgd_acc"], abs=1e-12)
    assert points["holdout_clean"].mean() == pytest.approx(best["val_clean_acc"], abs=1e-12)
    # kept from the best epoch, they are what the best state scores when asked again
    from bilaw.config.run_data import run_data_args
    from bilaw.data.datasets import load_data
    from bilaw.eval.per_point import holdout_correct

    data = load_data(result.config.dataset, **run_data_args(result.config))
    again = holdout_correct(result.model, result.config, data)
    assert (again["pgd"].numpy() == points["holdout_pgd"]).all()
    assert (again["clean"].numpy() == points["holdout_clean"]).all()
    check = masking_check(points["test_pgd"], points["test_aa"], cfg.masking_gap)
    assert {k: final[k] for k in check} == check and final["aa_points"] == 30
    assert final["suspect_gradient_masking"] is False  # 30 points: too few to flag anything
