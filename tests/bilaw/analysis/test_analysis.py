"""Interpretability artifacts on a short `digits` run: every plot is a real PNG with content; the
AUROC, the per-class robust accuracy and the label-noise weight means equal independent
computations on the same tensors."""
from __future__ import annotations

import json
import math
import struct

import pytest
import torch

from bilaw import TrainConfig, load_run
from bilaw.analysis.weights import adversarial_ranks, weight_auroc
from bilaw.data.datasets import load_data
from bilaw.eval.evaluate import pgd_predictions
from bilaw.analysis.plots import correlations
from bilaw.runs.saved import load_analysis
from bilaw.train import main as train_main

PLOTS = {"weights_per_class.png", "adv_confusion.png", "weight_extremes.png", "weight_vs_heuristics.png",
         "weights_over_epochs.png", "likelihood_pca.png", "adv_rank_histogram.png", "weights_noisy_vs_clean.png",
         "weight_vs_margin.png",  # a weight net's map snapshots (bilaw/analysis/weight_maps.py)
         "learning_curves.png"}   # every run's: loss and held-out accuracy per epoch, the best epoch marked
TINY = dict(dataset="digits", model="fc1", batch_size=32, meta_val_size=100, holdout_val_size=100, aa_samples=0,
            device="cpu", pgd_steps=5, eval_pgd_steps=5, epochs=3, analysis_samples=400)


@pytest.fixture(scope="module")
def noisy_bilaw(tmp_path_factory):
    out = tmp_path_factory.mktemp("bilaw_noise")
    argv = ["--out", str(out), "--no-progress", "--set", "method=bilaw", "--set", "label_noise=0.2"]
    argv += [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    assert train_main(argv) == 0
    return out


def _png_pixels(path):
    """Decode a PNG with matplotlib's reader: (height, width, channels) floats in [0, 1]."""
    from matplotlib import image

    return image.imread(path)


@pytest.mark.slow
def test_every_plot_is_a_valid_non_blank_png(noisy_bilaw):
    files = {p.name for p in (noisy_bilaw / "plots").glob("*.png")}
    assert files == PLOTS
    for name in PLOTS:
        raw = (noisy_bilaw / "plots" / name).read_bytes()
        assert raw[:8] == b"\x89PNG\r\n\x1a\n", name
        width, height = struct.unpack(">II", raw[16:24])
        assert width > 200 and height > 150, name
        pixels = _png_pixels(noisy_bilaw / "plots" / name)[..., :3]
        assert pixels.std() > 0.05, name                                  # not a blank canvas
        assert (pixels.reshape(-1, 3) < 0.5).all(1).mean() > 0.002, name  # dark ink: axes, text, marks


@pytest.mark.slow
def test_auroc_equals_the_pairwise_ranking_probability(noisy_bilaw):
    saved = load_analysis(noisy_bilaw)
    a = saved["analysis"]
    w, bad = a["weights"].double(), a["misclassified_adv"]
    assert 0 < bad.sum() < len(bad)
    pos, neg = w[bad], w[~bad]
    # AUROC = P(w_pos > w_neg) + P(tie) / 2 over all pairs (Mann-Whitney), computed by hand
    diff = pos[:, None] - neg[None, :]
    by_hand = ((diff > 0).double().mean() + 0.5 * (diff == 0).double().mean()).item()
    final = json.loads((noisy_bilaw / "metrics.json").read_text())["final"]
    assert final["weight_pgd_auroc"] == pytest.approx(by_hand, abs=1e-12)
    assert weight_auroc(w, bad) == pytest.approx(by_hand, abs=1e-12)


def test_auroc_is_nan_without_a_ranking():
    assert math.isnan(weight_auroc(torch.ones(6), torch.tensor([0, 1, 0, 1, 0, 1]).bool()))  # equal weights
    assert math.isnan(weight_auroc(torch.rand(4), torch.zeros(4, dtype=torch.bool)))         # one group only


@pytest.mark.slow
def test_per_class_robust_accuracy_equals_a_recomputation(noisy_bilaw):
    model, cfg = load_run(noisy_bilaw)
    data = load_data(cfg.dataset, meta_val_size=cfg.meta_val_size, holdout_val_size=cfg.holdout_val_size,
                     seed=cfg.seed, label_noise=cfg.label_noise)
    gen = torch.Generator().manual_seed(cfg.seed)  # evaluate_model's documented PGD seeding
    pred = pgd_predictions(model, data.x_test, data.y_test, norm=cfg.norm, eps=cfg.eps, steps=cfg.eval_pgd_steps,
                           batch_size=cfg.eval_batch_size, generator=gen)
    final = json.loads((noisy_bilaw / "metrics.json").read_text())["final"]
    for c in range(10):
        in_class = data.y_test == c
        expected = (pred[in_class] == c).double().mean().item()
        assert final[f"test_pgd_acc_class_{c}"] == pytest.approx(expected, abs=1e-12), c


@pytest.mark.slow
def test_label_noise_sets_and_weight_means_match_the_recorded_weights(noisy_bilaw):
    cfg = load_run(noisy_bilaw)[1]
    data = load_data(cfg.dataset, meta_val_size=cfg.meta_val_size, holdout_val_size=cfg.holdout_val_size,
                     seed=cfg.seed, label_noise=cfg.label_noise)
    n = len(data.y_train)
    noisy = set(data.noisy_idx.tolist())
    clean = set(range(n)) - noisy
    assert noisy and clean and noisy.isdisjoint(clean) and len(noisy) + len(clean) == n
    assert (data.y_train[data.noisy_idx] != data.y_train_clean[data.noisy_idx]).all()
    mask = torch.zeros(n, dtype=torch.bool)
    mask[data.noisy_idx] = True
    assert (data.y_train[~mask] == data.y_train_clean[~mask]).all()

    weights = load_analysis(noisy_bilaw)["sample_weights"]            # (epochs, n_train)
    history = json.loads((noisy_bilaw / "metrics.json").read_text())["history"]
    assert weights.shape == (cfg.epochs, n)
    for e, h in enumerate(history):
        noisy_mean = sum(weights[e, i].item() for i in noisy) / len(noisy)
        clean_mean = sum(weights[e, i].item() for i in clean) / len(clean)
        assert h["weight_mean_noisy"] == pytest.approx(noisy_mean, rel=1e-5), e
        assert h["weight_mean_clean"] == pytest.approx(clean_mean, rel=1e-5), e
        assert weights[e].std() > 0  # BiLAW's weights are not uniform


def test_unweighted_run_records_uniform_weights_and_no_weight_plots(tmp_path):
    argv = ["--out", str(tmp_path), "--no-progress", "--set", "method=at", "--set", "label_noise=0.1"]
    argv += [a for k, v in {**TINY, "epochs": 1}.items() for a in ("--set", f"{k}={v}")]
    assert train_main(argv) == 0
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert history[0]["weight_mean_noisy"] == history[0]["weight_mean_clean"] == 1.0
    assert {p.name for p in (tmp_path / "plots").glob("*.png")} == {
        "adv_confusion.png", "likelihood_pca.png", "adv_rank_histogram.png", "weights_noisy_vs_clean.png",
        "learning_curves.png"}
    assert "weight_pgd_auroc" not in json.loads((tmp_path / "metrics.json").read_text())["final"]


def test_adversarial_ranks_by_hand():
    clean = torch.tensor([[5.0, 4.0, 3.0, 2.0], [0.0, 1.0, 2.0, 3.0], [1.0, 0.0, 0.0, 0.0]])
    adv = torch.tensor([[0.0, 0.0, 9.0, 0.0], [0.0, 0.0, 0.0, 9.0], [0.0, 9.0, 0.0, 0.0]])
    # sample 0: clean order 0,1,2,3 -> class 2 is rank 2; sample 1 unchanged (dropped); sample 2:
    # clean order 0 then ties 1,2,3 (stable) -> class 1 is rank 1
    assert adversarial_ranks(clean, adv).tolist() == [2, 1]


def test_correlations_by_hand():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    r, rho = correlations(a, torch.tensor([1.0, 3.0, 2.0, 10.0]))
    assert rho == pytest.approx(0.8)  # ranks 1,3,2,4 vs 1,2,3,4: 1 - 6*2/(4*15)
    assert r == pytest.approx(13 / (5 * 50) ** 0.5)  # centred: (-1.5,-.5,.5,1.5).(-3,-1,-2,6) = 13


@pytest.mark.slow
def test_plot_every_draws_the_plots_during_training(tmp_path):
    from bilaw.training.trainer import train

    cfg = TrainConfig.from_dict({**TINY, "method": "mail", "burn_in_epochs": 0, "plot_every": 1, "epochs": 3})
    train(cfg, checkpoint_dir=tmp_path, stop_after=1, progress=False)  # one epoch of three: not finished
    drawn = {p.name for p in (tmp_path / "plots").glob("*.png")}
    assert {"weights_per_class.png", "weights_over_epochs.png", "likelihood_pca.png", "learning_curves.png"} <= drawn
    assert not (tmp_path / "metrics.json").exists()
