"""The collapsed / faded conditions of a learned weighting: the rules on histories written by
hand, then on real digits runs (a weight net forced to collapse, healthy BiLAW, AT)."""
from __future__ import annotations

import json

import pytest

from bilaw import TrainConfig
from bilaw.train import main as train_main
from bilaw.training.trainer import train
from bilaw.methods.weight_health import collapsed_epoch, health_label, weight_health

TINY = dict(dataset="digits", model="fc1", batch_size=32, meta_val_size=100, holdout_val_size=100,
            aa_samples=0, device="cpu", eval_pgd_steps=10, analysis_samples=0, plots=False)


def _history(stds):
    return [{"epoch": i, "weight_std": s} for i, s in enumerate(stds, start=1)]  # epochs count from 1


def test_fading_is_the_last_epoch_under_a_quarter_of_the_peak():
    faded = weight_health(_history([0.1, 0.277, 0.2, 0.0195]), burn_in=0)
    assert faded == {"weight_std_peak": 0.277, "weight_std_last": 0.0195, "weights_faded": True,
                     "weights_untrained": False, "weight_status": "faded"}  # a history without learning statistics
    alive = weight_health(_history([0.1, 0.2, 0.06]), burn_in=0)  # 0.06 is 30% of the peak
    assert alive["weights_faded"] is False and health_label(alive) is None
    assert health_label(faded) == "faded"


def test_collapse_is_the_first_whole_epoch_under_1e_3_after_burn_in():
    hist = _history([0.0, 0.0, 0.3, 0.0009, 0.0, 0.2])
    assert collapsed_epoch(hist, burn_in=2) == 4  # epochs 1-2 are burn-in (uniform on purpose)
    health = weight_health(hist, burn_in=2)
    assert health["weights_collapsed_epoch"] == 4 and health["weight_std_peak"] == 0.3
    assert health_label(health) == "collapsed"  # the stronger condition wins over fading
    assert collapsed_epoch(_history([0.3, 0.001, 0.2]), burn_in=0) is None  # 1e-3 itself is not under it
    # a net still near its (almost uniform) initialisation has not collapsed; one that spread and fell back has
    assert collapsed_epoch(_history([0.0009, 0.0008]), burn_in=0) is None
    assert collapsed_epoch(_history([0.0009, 0.2, 0.0005]), burn_in=0) == 3
    assert weight_health(_history([0.0, 0.0]), burn_in=2) == {}  # no weighted epoch yet


@pytest.fixture(scope="module")
def collapsed_run(tmp_path_factory):
    """BiLAW with Adam at meta_lr 1.0 (1,000 times the legacy 1e-3): its first steps saturate the
    weight net's sigmoid, and its weights are exactly uniform in the second epoch."""
    out = tmp_path_factory.mktemp("collapsed")
    argv = ["--out", str(out), "--no-progress", "--set", "method=bilaw", "--set", "epochs=2",
            "--set", "meta_optimizer=adam", "--set", "meta_lr=1.0", "--set", "meta_weight_decay=1e-4", *[a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]]
    return out, argv


@pytest.mark.slow
def test_a_forced_collapse_is_detected_said_once_and_recorded(collapsed_run, capsys):
    out, argv = collapsed_run
    assert train_main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("the learned weights collapsed in epoch 2") == 1
    final = json.loads((out / "metrics.json").read_text())["final"]
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert history[1]["weight_std"] < 1e-3 and final["weights_collapsed_epoch"] == history[1]["epoch"] == 2
    assert final["weight_status"] == "collapsed"  # the strongest status, with the learning statistics present
    assert "weight_rank_corr_init" in history[1]
    assert final["weight_std_peak"] == max(h["weight_std"] for h in history)
    # The meta step ran every epoch; once the sigmoid saturates its gradient may be exactly 0 (an
    # Intel Xeon read 0.0 in the collapsed epoch where an AMD EPYC read a tiny positive number).
    assert history[0]["meta_grad_norm"] > 0 and all(h["meta_grad_norm"] >= 0 for h in history)


@pytest.mark.slow
def test_detectors_stay_quiet_on_healthy_bilaw_and_do_not_apply_to_at(capsys):
    messages: list[str] = []
    healthy = train(TrainConfig.from_dict({**TINY, "method": "bilaw", "epochs": 3}), progress=False,
                    log=messages.append)
    stds = [h["weight_std"] for h in healthy.history]  # the default meta-optimiser: 0.018, 0.024, 0.026
    assert min(stds) > 0.01 and stds == sorted(stds)  # spread from the first epoch, and growing
    assert "weights_collapsed_epoch" not in healthy.final and healthy.final["weights_faded"] is False
    assert not [m for m in messages if "warning" in m]
    at = train(TrainConfig.from_dict({**TINY, "method": "at", "epochs": 2}), progress=False, log=messages.append)
    assert all(h["weight_std"] == 0 for h in at.history)  # uniform by design: neither collapsed nor faded
    assert not {"weights_faded", "weights_collapsed_epoch", "weight_std_peak"} & set(at.final)
    assert "meta_grad_norm" not in at.history[0]
    assert not [m for m in messages if "warning" in m] and "warning" not in capsys.readouterr().err
