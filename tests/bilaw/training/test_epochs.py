"""Epochs count from 1 (bilaw/epochs.py): what a run records and draws, and how the files written
before (counted from 0, without `epochs_from`) are read: stored runs, a checkpoint resumed, weight
maps, and an MLflow run in report.py."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import REPO
import torch

from bilaw import TrainConfig
from bilaw.training.checkpoint import load_checkpoint, save_checkpoint
from bilaw.analysis.plots import curves_figure, plot_curves
from bilaw.runs.saved import read_metrics
from bilaw.training.trainer import train
from bilaw.analysis.weight_maps import load_weight_maps, save_weight_maps

STORED_ALL = sorted((REPO / "docs" / "results" / "runs").rglob("metrics.json"))
# the runs stored before epochs counted from 1 (the study's later runs carry the marker)
STORED = [p for p in STORED_ALL if '"epochs_from"' not in p.read_text()]
TINY = dict(dataset="digits", model="fc1", batch_size=256, pgd_steps=2, eval_pgd_steps=2, aa_samples=0,
            analysis_samples=0, plots=False, device="cpu", epochs=3, method="bilaw")


def test_every_stored_run_from_before_reads_counted_from_1():
    """docs/results/runs' metrics.json files predate `epochs_from`: read, their epochs run 1..E,
    best_epoch is one more than stored and is the first epoch of highest held-out PGD accuracy,
    and the last history entry no longer carries the final metrics the trainer put there."""
    assert len(STORED) >= 50
    for path in STORED:
        raw = json.loads(path.read_text())
        assert "epochs_from" not in raw and "test_clean_acc" in raw["history"][-1], path
        got = read_metrics(path.parent)
        history, final = got["history"], got["final"]
        assert [h["epoch"] for h in history] == list(range(1, len(raw["history"]) + 1)), path
        assert final["best_epoch"] == raw["final"]["best_epoch"] + 1, path
        top = max(h["val_pgd_acc"] for h in raw["history"])
        assert final["best_epoch"] == 1 + next(i for i, h in enumerate(raw["history"]) if h["val_pgd_acc"] == top)
        assert "test_clean_acc" not in history[-1] and "best_epoch" not in history[-1], path
        assert history[-1]["val_pgd_acc"] == raw["history"][-1]["val_pgd_acc"], path
        if "weights_collapsed_epoch" in raw["final"]:
            assert final["weights_collapsed_epoch"] == raw["final"]["weights_collapsed_epoch"] + 1


def test_every_stored_run_with_the_marker_reads_as_stored():
    """A run stored with `epochs_from: 1` (the study's later runs) is read unchanged: epochs 1..E,
    the best epoch as stored, no final metric in the last history entry."""
    marked = [p for p in STORED_ALL if p not in STORED]
    assert marked  # the study's bilaw_frozen seed 0, at least
    for path in marked:
        raw = json.loads(path.read_text())
        got = read_metrics(path.parent)
        assert raw["epochs_from"] == 1 and got["history"] == raw["history"] and got["final"] == raw["final"], path
        assert [h["epoch"] for h in raw["history"]] == list(range(1, len(raw["history"]) + 1)), path
        assert "test_clean_acc" not in raw["history"][-1], path
        top = max(h["val_pgd_acc"] for h in raw["history"])
        assert raw["final"]["best_epoch"] == next(h["epoch"] for h in raw["history"] if h["val_pgd_acc"] == top)


def test_a_checkpoint_from_before_resumes_counted_from_1(tmp_path):
    """A run stopped after 2 of 3 epochs, its checkpoint rewritten as the 0-based trainer wrote
    it, resumes into the run trained straight through: the same history, epochs 1..3, and the
    same best epoch and weight-map snapshots."""
    cfg = TrainConfig.from_dict(TINY)
    straight = train(cfg, progress=False)
    train(cfg, checkpoint_dir=tmp_path, stop_after=2, progress=False)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["epochs_from"] == 1 and [h["epoch"] for h in state["history"]] == [1, 2]
    old = {k: v for k, v in state.items() if k != "epochs_from"}
    old["history"] = [{**h, "epoch": h["epoch"] - 1} for h in state["history"]]
    old["best"] = {**state["best"], "epoch": state["best"]["epoch"] - 1}
    old["weight_maps"] = [{**m, "epoch": m["epoch"] - 1} for m in state["weight_maps"]]
    save_checkpoint(old, tmp_path / "checkpoint.pt")
    resumed = train(cfg, checkpoint_dir=tmp_path, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    def untimed(history):
        return [{k: v for k, v in h.items() if not k.endswith("_time_s")} for h in history]

    assert untimed(resumed.history) == untimed(straight.history)
    assert resumed.final["best_epoch"] == straight.final["best_epoch"]
    assert [m["epoch"] for m in resumed.weight_maps] == [m["epoch"] for m in straight.weight_maps] == [1, 2, 3]


def test_weight_maps_from_before_read_counted_from_1(tmp_path):
    maps = [{"epoch": e, "auroc": 0.5, "auroc_init": 0.5, **{n: np.zeros(3) for n in (
        "index", "margin_input", "y", "margin", "weight", "weight_init", "misclassified_adv")}} for e in (1, 4)]
    save_weight_maps(tmp_path / "new.npz", maps)
    assert [m["epoch"] for m in load_weight_maps(tmp_path / "new.npz")] == [1, 4]
    with np.load(tmp_path / "new.npz") as npz:
        arrays = {k: npz[k] for k in npz.files if k != "epochs_from"}
    np.savez_compressed(tmp_path / "old.npz", **{**arrays, "epochs": arrays["epochs"] - 1})  # as written before
    assert [m["epoch"] for m in load_weight_maps(tmp_path / "old.npz")] == [1, 4]


def test_the_learning_curves_count_epochs_from_1_and_mark_the_first_best(tmp_path):
    history = [{"epoch": e, "train_loss": 2.0 / e, "val_clean_acc": 0.5, "val_pgd_acc": p}
               for e, p in ((1, 0.2), (2, 0.4), (3, 0.4), (4, 0.3))]
    fig, best = curves_figure(history)
    assert best == 2  # the first of the two best epochs: the trainer keeps the first
    loss, acc = fig.axes
    for ax in (loss, acc):
        curves, (marker,) = ax.lines[:-1], ax.lines[-1:]
        assert all(list(line.get_xdata()) == [1, 2, 3, 4] for line in curves)
        assert list(marker.get_xdata()) == [2, 2]  # the vertical line at the best epoch
    assert acc.get_title() == "best epoch 2 (highest held-out PGD)"
    from PIL import Image

    assert Image.open(plot_curves(tmp_path, history)).text["best_epoch"] == "2"
    assert curves_figure([]) == (None, None) and plot_curves(tmp_path / "none", []) is None


def test_a_runs_curves_mark_its_best_epoch(tmp_path):
    """A trained run's learning_curves.png marks the best epoch its metrics.json records."""
    from PIL import Image

    from bilaw.runs.saved import save_run

    result = train(TrainConfig.from_dict({**TINY, "method": "at", "plots": True, "epochs": 2}), progress=False)
    save_run(result, tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["epochs_from"] == 1 and [h["epoch"] for h in saved["history"]] == [1, 2]
    png = Image.open(tmp_path / "plots" / "learning_curves.png")
    assert int(png.text["best_epoch"]) == saved["final"]["best_epoch"] == result.final["best_epoch"]
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == saved["final"]["best_epoch"]


@pytest.mark.parametrize("tags, shown", [({}, "12"), ({"epochs_from": "1"}, "11")])
def test_report_reads_a_run_logged_before_as_counted_from_0(tags, shown):
    """report.py --trials: a run tagged epochs_from=1 shows its best_epoch as logged; one logged
    before the tag existed counted from 0 and shows one more."""
    from types import SimpleNamespace

    from tune.report import trial_table

    run = SimpleNamespace(info=SimpleNamespace(run_name="r"),
                          data=SimpleNamespace(params={}, metrics={"best_val_pgd_acc": 0.5, "best_epoch": 11.0},
                                               tags=tags))
    header, rows = trial_table([run])
    assert rows[0][header.index("best epoch")] == shown
