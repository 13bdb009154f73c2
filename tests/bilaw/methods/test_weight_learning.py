"""Learned, not only spread: a weight net's learning statistics against independent computations,
the frozen control (untrained, and no meta step), the map snapshots, and the weight status of
real digits runs."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from bilaw import TrainConfig
from bilaw.methods import learned as learned_module
from bilaw.runs.saved import save_run
from bilaw.training.trainer import train
from bilaw.methods.weight_health import health_label, weight_health
from bilaw.methods.weight_learning import MapStatistics, mean_one_std, parameter_drift, spearman
from bilaw.analysis.weight_maps import load_weight_maps, snapshot_epochs
from bilaw.methods.weighting import WeightNet, normalize_sum_one

DIGITS = dict(dataset="digits", model="fc1", batch_size=32, aa_samples=0, analysis_samples=0, plots=False,
              device="cpu")


def _one_thread_train(cfg: dict, **kwargs):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(TrainConfig.from_dict(cfg), progress=False, log=lambda _: None, **kwargs)
    finally:
        torch.set_num_threads(threads)


# ----- the statistics on a tiny net ----------------------------------------------------------------
def test_drift_is_the_parameter_distance_over_the_initial_norm():
    net = WeightNet(3, (4,), generator=torch.Generator().manual_seed(1))
    initial = copy.deepcopy(net)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape))
    flat = lambda m: np.concatenate([p.detach().numpy().ravel() for p in m.parameters()])  # noqa: E731
    expected = np.linalg.norm(flat(net) - flat(initial)) / np.linalg.norm(flat(initial))
    assert float(parameter_drift(net, initial)) == pytest.approx(expected, rel=1e-6)
    assert float(parameter_drift(initial, copy.deepcopy(initial))) == 0.0


def test_spearman_matches_scipy_with_and_without_ties():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(200, generator=g), torch.rand(200, generator=g)
    b = 0.6 * a + b
    assert float(spearman(a, b)) == pytest.approx(spearmanr(a.numpy(), b.numpy()).statistic, abs=1e-10)
    ties_a = torch.tensor([1.0, 2.0, 2.0, 3.0, 3.0, 3.0, 0.5])
    ties_b = torch.tensor([0.1, 0.3, 0.2, 0.2, 0.9, 0.9, 0.0])
    assert float(spearman(ties_a, ties_b)) == pytest.approx(spearmanr(ties_a.numpy(), ties_b.numpy()).statistic,
                                                            abs=1e-10)
    assert float(spearman(a, a)) == pytest.approx(1.0)
    assert float(spearman(a, -a)) == pytest.approx(-1.0)
    assert torch.isnan(spearman(torch.ones(5), a[:5]))  # constant weights: no ranking to compare


def test_epoch_statistics_of_current_and_initial_weights():
    stats = MapStatistics()
    batches = [(torch.tensor([0.5, 1.5, 1.0, 1.0]), torch.tensor([1.2, 0.8, 1.0, 1.0])),
               (torch.tensor([2.0, 4.0]), torch.tensor([1.0, 3.0]))]  # second batch: loss scale, rescaled to mean 1
    for w, w0 in batches:
        stats.add(w, w0)
    net = WeightNet(2, (3,), generator=torch.Generator().manual_seed(0))
    out = stats.epoch_sums(net, copy.deepcopy(net))
    cur = np.array([0.5, 1.5, 1.0, 1.0, 2 / 3, 4 / 3])
    init = np.array([1.2, 0.8, 1.0, 1.0, 0.5, 1.5])
    assert float(out["weight_std_init"]) == pytest.approx(np.std(init), rel=1e-6)  # float32 weights
    assert float(out["weight_rank_corr_init"]) == pytest.approx(spearmanr(cur, init).statistic, abs=1e-9)
    assert float(out["weight_net_drift"]) == 0.0
    assert float(mean_one_std(torch.tensor(cur))) == pytest.approx(np.std(cur), rel=1e-9)
    stats.clear()
    assert stats.epoch_sums(net, net) == {}


def test_snapshot_epochs_are_the_first_each_new_lr_and_the_last():
    cfg = TrainConfig.from_dict({**DIGITS, "epochs": 10}).resolved()  # lr drops at epochs 3 and 6
    assert snapshot_epochs(cfg) == [0, 3, 6, 9]
    assert snapshot_epochs(TrainConfig.from_dict({**DIGITS, "epochs": 1}).resolved()) == [0]


# ----- the status --------------------------------------------------------------------------------
def _hist(rows):
    return [{"epoch": i, **r} for i, r in enumerate(rows, start=1)]  # epochs count from 1


def test_status_from_the_learning_statistics():
    moved = {"weight_std": 0.04, "weight_std_init": 0.035, "weight_rank_corr_init": 0.58, "weight_net_drift": 0.008}
    frozen = {"weight_std": 0.035, "weight_std_init": 0.035, "weight_rank_corr_init": 1.0, "weight_net_drift": 0.0}
    assert weight_health(_hist([moved, moved]), 0)["weight_status"] == "learned"
    assert weight_health(_hist([frozen, frozen]), 0)["weight_status"] == "untrained"
    # a frozen net whose weights the margins faded is still reported untrained: it never learned
    faded_frozen = weight_health(_hist([{**frozen, "weight_std": 0.2, "weight_std_init": 0.2}, frozen]), 0)
    assert faded_frozen["weights_faded"] and faded_frozen["weight_status"] == "untrained"
    # same ranking but a spread far from the initial net's: the map moved (it learned a steeper slope)
    steeper = {**frozen, "weight_rank_corr_init": 0.999, "weight_std": 0.2}
    assert weight_health(_hist([steeper]), 0)["weight_status"] == "learned"
    # collapse is still detected, and wins
    collapsed = weight_health(_hist([moved, {**moved, "weight_std": 0.0005, "weight_rank_corr_init": float("nan")}]), 0)
    assert collapsed["weights_collapsed_epoch"] == 2 and collapsed["weight_status"] == "collapsed"
    assert health_label(collapsed) == "collapsed"
    # a run from before the statistics: the old labels, and no claim that it learned
    assert health_label({"weights_faded": False}) is None and health_label({"weights_faded": True}) == "faded"


# ----- the frozen control ----------------------------------------------------------------------------
def _count_forwards(monkeypatch, **overrides) -> tuple[int, int]:
    """(classifier forwards inside the training steps, training steps) of a 1-epoch digits run."""
    from bilaw.training.trainer import RunState

    calls = {"forward": 0, "steps": 0, "model": None}
    call, step = torch.nn.Module.__call__, RunState.train_step

    def counting_call(self, *args, **kwargs):
        if self is calls["model"]:
            calls["forward"] += 1
        return call(self, *args, **kwargs)

    def counting_step(self, *args, **kwargs):
        calls["steps"] += 1
        calls["model"] = self.model
        try:
            return step(self, *args, **kwargs)
        finally:
            calls["model"] = None

    with monkeypatch.context() as m:
        m.setattr(torch.nn.Module, "__call__", counting_call)
        m.setattr(RunState, "train_step", counting_step)
        train(TrainConfig.from_dict({**DIGITS, "epochs": 1, "meta_val_size": 100, "holdout_val_size": 100,
                                     **overrides}), progress=False, log=lambda _: None)
    return calls["forward"], calls["steps"]


@pytest.mark.slow
def test_the_frozen_control_makes_no_meta_step_and_costs_at_plus_one_forward(monkeypatch):
    bilaw, bilaw_steps = _count_forwards(monkeypatch, method="bilaw")

    def no_meta_step(*args, **kwargs):
        raise AssertionError("the frozen control took a meta step")

    monkeypatch.setattr(learned_module, "bilaw_meta_step", no_meta_step)
    frozen, steps = _count_forwards(monkeypatch, method="bilaw_frozen")
    at_58k, at_steps = _count_forwards(monkeypatch, method="at", baselines_full_train=False)
    assert steps == at_steps == bilaw_steps > 0  # the same training images
    # AT per step: PGD-10 and the training forward; the frozen control adds only the clean forward
    # its margins are read from
    assert frozen - at_58k == steps
    assert bilaw - frozen > 10 * steps  # the meta step's look-ahead and its validation attack


@pytest.mark.slow
def test_the_frozen_control_trains_on_bilaws_images_and_is_reported_untrained(tmp_path):
    cfg = {**DIGITS, "epochs": 4, "meta_val_size": 100, "holdout_val_size": 100, "plots": True}
    frozen = _one_thread_train({**cfg, "method": "bilaw_frozen", "baselines_full_train": True})
    assert frozen.final["weight_status"] == "untrained"
    assert all(h["weight_net_drift"] == 0.0 and h["weight_rank_corr_init"] == 1.0 for h in frozen.history)
    assert all(h["weight_std"] == pytest.approx(h["weight_std_init"], rel=1e-5) for h in frozen.history)
    # the same seeded net as BiLAW's at its start, whatever baselines_full_train says
    first = {k: v for k, v in frozen.weight_net.state_dict().items()}
    gen = torch.Generator().manual_seed(0 + learned_module.WEIGHT_NET_SEED_OFFSET)
    fresh = WeightNet(10, (128,), generator=gen)
    assert all(torch.equal(first[k], v) for k, v in fresh.state_dict().items())
    from bilaw.training.trainer import RunState

    sizes = {m: len(RunState(TrainConfig.from_dict({**cfg, "method": m, "baselines_full_train": True}).resolved())
                    .data.y_train) for m in ("bilaw_frozen", "bilaw", "at")}
    assert sizes["bilaw_frozen"] == sizes["bilaw"] == sizes["at"] - 200  # both validation sets held out
    # the map snapshots: stored, drawn, and their initial-net weights recomputed from a fresh net
    save_run(frozen, tmp_path)
    maps = load_weight_maps(tmp_path / "weight_map.npz")
    assert [m["epoch"] for m in maps] == [1, 2, 3, 4]  # after each of 4 epochs: drops at 1 and 2, and the last
    assert (tmp_path / "plots" / "weight_vs_margin.png").stat().st_size > 10_000
    for m in maps:
        with torch.no_grad():
            raw = fresh(torch.from_numpy(m["margin_input"]))
        expected = (normalize_sum_one(raw) * len(raw)).numpy()
        np.testing.assert_allclose(m["weight_init"], expected, rtol=1e-5)
        np.testing.assert_array_equal(m["weight"], m["weight_init"])
        assert m["auroc"] == pytest.approx(roc_auc_score(m["misclassified_adv"].astype(int), m["weight"]))
    final = json.loads((tmp_path / "metrics.json").read_text())["final"]
    assert final["weight_map_auroc"] == pytest.approx(maps[-1]["auroc"])
    assert final["weight_status"] == "untrained"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_bilaw_is_reported_learned_on_a_cpu_sized_schedule(seed):
    """digits, FC1, batch 32, 12 epochs (benchmarks/weight_learning.py's schedule): over seeds
    0-2 and 1 or 2 threads the default net's last epoch ranked the samples with a correlation of
    0.58-0.99 to its initial net and spread them 0.66-1.34 times as wide, where the frozen control
    gives exactly 1 and 1 (bilaw/methods/weight_health.py)."""
    result = _one_thread_train({**DIGITS, "method": "bilaw", "epochs": 12, "seed": seed})
    assert result.final["weight_status"] == "learned"
    last = result.history[-1]
    assert last["weight_net_drift"] > 1e-3
    assert last["weight_rank_corr_init"] < 0.99 or abs(last["weight_std"] / last["weight_std_init"] - 1) > 0.1
    maps = result.weight_maps
    assert [m["epoch"] for m in maps] == [1, 5, 8, 12]  # after these epochs, counted from 1
    assert not np.array_equal(maps[-1]["weight"], maps[-1]["weight_init"])


def test_a_bilaw_run_whose_net_never_moved_says_so():
    messages: list[str] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(TrainConfig.from_dict({**DIGITS, "method": "bilaw", "epochs": 2, "meta_lr": 1e-9,
                                              "meta_val_size": 100, "holdout_val_size": 100}),
                       progress=False, log=messages.append)
    finally:
        torch.set_num_threads(threads)
    assert result.final["weight_status"] == "untrained"
    said = [m for m in messages if "did not learn its map" in m]
    assert len(said) == 1 and "rank correlation 1.0000" in said[0]
