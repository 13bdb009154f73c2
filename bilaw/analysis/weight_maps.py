"""A weight net's map, seen at a few epochs: at its first epoch, at the first epoch of each new
lr and at its last, a run with a weight net takes a *map snapshot* (`map_snapshot`) on a fixed
sample of training points: the margin input, the true class and true-class margin, the weight of
the current and of the initial net, and whether the PGD example is misclassified, with the AUROC
of each net's weight as a score for that error. `weight_map.npz` and
`plots/weight_vs_margin.png` keep them.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from bilaw.epochs import EPOCHS_FROM
from bilaw.methods.margins import binary_margin

MAP_SIZE = 1000          # training points in each map snapshot
MAP_SEED_OFFSET = 5151   # their selection and attack starts draw from their own streams
WEIGHT_MAP_NAME = "weight_map.npz"


def snapshot_epochs(cfg) -> list[int]:
    """The trainer's 0-based epoch indices (`RunState.epoch` while it trains one) after which a map
    snapshot is taken: the first, the first at each new lr, and the last. A snapshot records the
    epoch's number, counted from 1 (bilaw/epochs.py)."""
    drops = {round(m * cfg.epochs) for m in cfg.lr_milestones}  # the trainer's lr_at changes lr there
    return sorted({0, cfg.epochs - 1} | {e for e in drops if 0 < e < cfg.epochs})


def map_snapshot(run) -> dict[str, Any]:
    """The weight net's map at the run's current state on a fixed sample of training points
    (CPU tensors, so the snapshot goes into a weights-only checkpoint): `margin_input` (n, d),
    `y`, `margin` (true-class margin p_y - max_j p_j of the probabilities the net reads), `weight`
    and `weight_init` (mean 1 over the sample), `misclassified_adv` (the point's
    PGD-`pgd_steps` example is misclassified), and the AUROC of each weight as a score for that
    error."""
    from bilaw.analysis.weights import _logits, fixed_subset, weight_auroc
    from bilaw.eval.attacks import pgd

    cfg, d, weighting = run.cfg, run.data, run.weighting
    idx = fixed_subset(len(d.y_train), MAP_SIZE, cfg.seed + MAP_SEED_OFFSET).to(d.x_train.device)
    x, y = d.x_train[idx], d.y_train[idx]
    g = torch.Generator(device=x.device).manual_seed(cfg.seed + MAP_SEED_OFFSET + run.epoch)
    x_adv = pgd(run.model, x, y, norm=cfg.norm, eps=cfg.eps, steps=cfg.pgd_steps, step_size=cfg.pgd_step_size,
                generator=g)
    clean, adv = _logits(run.model, x), _logits(run.model, x_adv)
    with torch.no_grad():
        feats = weighting.map_inputs(y, clean, adv)
        w = weighting.map_weights(feats, initial=False)
        w0 = weighting.map_weights(feats, initial=True)
    read = clean if cfg.margin_on == "clean" else adv
    wrong = adv.argmax(1) != y
    return {"epoch": run.epoch + 1, "index": idx.cpu(), "margin_input": feats.cpu(), "y": y.cpu(),
            "margin": binary_margin(F.softmax(read, 1), y).cpu(), "weight": w.cpu(), "weight_init": w0.cpu(),
            "misclassified_adv": wrong.cpu(), "auroc": weight_auroc(w, wrong), "auroc_init": weight_auroc(w0, wrong)}


def save_weight_maps(path, maps: list[dict[str, Any]]) -> None:
    """`weight_map.npz`: `epochs` (k,, counted from 1: `epochs_from`), and per snapshot i the
    arrays `<name>_<i>` and the AUROCs `auroc` / `auroc_init` (k,)."""
    arrays: dict[str, np.ndarray] = {"epochs": np.array([m["epoch"] for m in maps]), EPOCHS_FROM: np.array(1),
                                     "auroc": np.array([m["auroc"] for m in maps], dtype=float),
                                     "auroc_init": np.array([m["auroc_init"] for m in maps], dtype=float)}
    for i, m in enumerate(maps):
        for name in ("index", "margin_input", "y", "margin", "weight", "weight_init", "misclassified_adv"):
            value = m[name]
            arrays[f"{name}_{i}"] = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    np.savez_compressed(path, **arrays)


def load_weight_maps(path) -> list[dict[str, Any]]:
    """The snapshots `save_weight_maps` wrote, in epoch order (a file from before `epochs_from`
    counted them from 0: read from 1)."""
    with np.load(path) as npz:
        out, shift = [], 0 if EPOCHS_FROM in npz.files else 1
        for i, epoch in enumerate(npz["epochs"] + shift):
            m = {name: npz[f"{name}_{i}"] for name in ("index", "margin_input", "y", "margin", "weight",
                                                       "weight_init", "misclassified_adv")}
            m.update(epoch=int(epoch), auroc=float(npz["auroc"][i]), auroc_init=float(npz["auroc_init"][i]))
            out.append(m)
        return out
