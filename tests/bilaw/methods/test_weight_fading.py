"""BiLAW's weights fade under the meta-optimiser setting every run used before meta_grad_scale and
adamw existed (Adam, meta_lr 1e-3, coupled L2 decay 1e-4), and do not with decoupled decay or with
today's default (SGD, meta_lr 0.025, decay 1e-5); and the fading rule alone cannot tell a net that
learned from one that never trained, which the frozen control shows.

Measured with `python benchmarks/weight_fading.py --variants frozen,default,legacy,adamw --threads
1,2` (digits, FC1, batch 32, 80 epochs, lr 0.1 divided by 10 at epochs 24 and 48; output in
docs/results/benchmarks/weight_fading_80.txt). Last-epoch weight_std over its peak, seeds 0 / 1 / 2:

| setting | 1 thread | 2 threads |
|---|---|---|
| legacy | 0.475 / 0.645 / 0.520 | 0.459 / 0.693 / 0.573 |
| default | 0.678 / 0.742 / 0.682 | 0.690 / 0.728 / 0.651 |
| adamw (meta_lr 1e-3) | 0.812 / 0.913 / 0.829 | 0.662 / 0.989 / 0.822 |
| frozen control | 0.965 / 0.841 / 0.698 | 0.968 / 0.838 / 0.707 |

- Paired on the same seed and thread count, legacy is under the default and under adamw in all
  six pairs (the closest: seed 1, 2 threads, 0.693 against 0.728). That order is what the tests
  assert first.
- One line does not separate the settings over seeds: legacy reaches 0.693 (seed 1) where the
  default falls to 0.651 (seed 2). On seed 0, which the tests run, legacy stays at or under 0.475
  and the others at or above 0.662 under either thread count (the thread count alone moved
  adamw's ratio by 0.15), so the line LINE = 0.57 sits about 0.09 from each side there.
- The frozen control's ratio (0.70-0.97) passes the fading rule in all six runs, above most
  learned runs; every one of them is `untrained` by the learning statistics
  (bilaw/methods/weight_health.py), and every default run `learned`.
The tests run seed 0 on one thread.
"""
from __future__ import annotations

import pytest

import torch

from bilaw import TrainConfig
from bilaw.training.trainer import train

LONG = {"dataset": "digits", "model": "fc1", "method": "bilaw", "batch_size": 32, "epochs": 80, "aa_samples": 0,
        "analysis_samples": 0, "plots": False, "device": "cpu", "seed": 0}
LEGACY = {"meta_optimizer": "adam", "meta_lr": 1e-3, "meta_weight_decay": 1e-4, "meta_grad_scale": "raw"}
LINE = 0.57


def _run(**setting) -> dict:
    """The final metrics of the 80-epoch digits run under `setting`, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(TrainConfig.from_dict({**LONG, **setting}), progress=False, log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    return result.final


def _last_over_peak(final: dict) -> float:
    return final["weight_std_last"] / final["weight_std_peak"]


@pytest.fixture(scope="module")
def legacy() -> float:
    return _last_over_peak(_run(**LEGACY))


@pytest.fixture(scope="module")
def default() -> dict:
    return _run()


@pytest.mark.slow
def test_legacy_meta_optimiser_fades_and_decoupled_decay_keeps_the_weights(legacy):
    decoupled = _last_over_peak(_run(**{**LEGACY, "meta_optimizer": "adamw"}))
    assert legacy < decoupled, (legacy, decoupled)
    assert legacy < LINE < decoupled, (legacy, decoupled)


@pytest.mark.slow
def test_the_default_meta_optimiser_keeps_the_weights_and_learns(legacy, default):
    cfg = TrainConfig()
    assert (cfg.meta_optimizer, cfg.meta_lr, cfg.meta_weight_decay, cfg.meta_grad_scale) == ("sgd", 0.025, 1e-5, "raw")
    ratio = _last_over_peak(default)
    assert legacy < ratio, (legacy, ratio)
    assert legacy < LINE < ratio, (legacy, ratio)
    assert default["weight_status"] == "learned"


@pytest.mark.slow
def test_the_frozen_control_passes_the_fading_rule_but_is_untrained(default):
    frozen = _run(method="bilaw_frozen")
    ratio = _last_over_peak(frozen)
    assert ratio > LINE and not frozen["weights_faded"]  # the fading rule alone would call it alive
    assert ratio > _last_over_peak(default)               # more so than the net that learned
    assert frozen["weight_status"] == "untrained"
    assert frozen["weight_net_drift_last"] == 0.0 and frozen["weight_rank_corr_init_last"] == 1.0
