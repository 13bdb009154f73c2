"""Did the weight net learn its map, or only pass on the classifier's margins? The statistics
that tell a trained weight net from one frozen at its seeded initialisation.

`weight_std` alone cannot tell: with the net fixed, the weights still spread and shrink as the
classifier's margins move. So a weight-net weighting keeps its net's initial state, and each
epoch records, on the very samples it weighted:
- `weight_net_drift`: ||theta - theta_0|| / ||theta_0|| over all the net's parameters;
- `weight_std_init`: the spread the initial net gives the same samples (the same statistic as
  `weight_std`: population std of the mean-1 batch weights);
- `weight_rank_corr_init`: Spearman's rank correlation of the current and the initial weights.

At its first epoch, at the first epoch after each lr drop and at the last epoch, a run also
takes a *map snapshot* (`map_snapshot`): on a fixed sample of training points, the margin input,
the true class and true-class margin, the weight of the current and of the initial net, and
whether the PGD example is misclassified, with the AUROC of each net's weight as a score for
that error. `weight_map.npz` and `plots/weight_vs_margin.png` keep them.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .margins import binary_margin

MAP_SIZE = 1000          # training points in each map snapshot
MAP_SEED_OFFSET = 5151   # their selection and attack starts draw from their own streams
WEIGHT_MAP_NAME = "weight_map.npz"


def parameter_drift(net: nn.Module, initial: nn.Module) -> torch.Tensor:
    """||theta - theta_0||_2 / ||theta_0||_2 over all parameters (a device scalar)."""
    now = torch.cat([p.detach().flatten() for p in net.parameters()])
    start = torch.cat([p.detach().flatten() for p in initial.parameters()])
    return torch.linalg.vector_norm(now - start) / torch.linalg.vector_norm(start).clamp_min(1e-12)


def mean_one_std(w: torch.Tensor) -> torch.Tensor:
    """Population std of weights already on the mean-1 scale, from squared deviations from 1
    (as `epoch_stats.finish_epoch` computes `weight_std`, without float32 cancellation)."""
    w = w.double()
    mean = w.mean()
    return ((w - 1).square().mean() - (mean - 1).square()).clamp_min(0).sqrt()


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share the mean of their positions), as scipy's rankdata."""
    x = x.double()
    order = x.argsort()
    sorted_x = x[order]
    # groups of equal values: their ranks are the mean of the positions they occupy
    new_group = torch.ones_like(sorted_x, dtype=torch.bool)
    new_group[1:] = sorted_x[1:] != sorted_x[:-1]
    group = new_group.cumsum(0) - 1
    positions = torch.arange(1, len(x) + 1, dtype=torch.float64, device=x.device)
    sums = torch.zeros(int(group[-1]) + 1, dtype=torch.float64, device=x.device).index_add_(0, group, positions)
    counts = torch.zeros_like(sums).index_add_(0, group, torch.ones_like(positions))
    ranks = torch.empty_like(positions)
    ranks[order] = (sums / counts)[group]
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation of two equal-length vectors (a device scalar); NaN when either
    is constant (there is no ranking to compare)."""
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = torch.linalg.vector_norm(ra) * torch.linalg.vector_norm(rb)
    return torch.where(denom > 0, (ra * rb).sum() / denom.clamp_min(1e-300), torch.full_like(denom, float("nan")))


class MapStatistics:
    """Per-epoch pairs of (current, initial) mean-1 weights of the batches a weight net
    weighted, turned into the epoch's learning statistics at its end (one host read, with the
    rest of the epoch's metrics)."""

    def __init__(self) -> None:
        self.current: list[torch.Tensor] = []
        self.initial: list[torch.Tensor] = []

    def clear(self) -> None:
        self.current.clear()
        self.initial.clear()

    def add(self, w: torch.Tensor, w_init: torch.Tensor) -> None:
        from .weighting import as_mean_one

        self.current.append(as_mean_one(w))
        self.initial.append(as_mean_one(w_init))

    def epoch_sums(self, net: nn.Module, initial: nn.Module) -> dict[str, torch.Tensor]:
        if not self.current:  # no weighted batch this epoch (burn-in)
            return {}
        cur, init = torch.cat(self.current), torch.cat(self.initial)
        return {"weight_net_drift": parameter_drift(net, initial), "weight_std_init": mean_one_std(init),
                "weight_rank_corr_init": spearman(cur, init)}


def snapshot_epochs(cfg) -> list[int]:
    """0-based epochs after which a map snapshot is taken: the first, the first at each new lr,
    and the last."""
    from .trainer import lr_at

    epochs = [0] + [e for e in range(1, cfg.epochs) if lr_at(cfg, e) != lr_at(cfg, e - 1)] + [cfg.epochs - 1]
    return sorted(set(epochs))


def map_snapshot(run) -> dict[str, Any]:
    """The weight net's map at the run's current state on a fixed sample of training points
    (CPU tensors, so the snapshot goes into a weights-only checkpoint): `margin_input` (n, d),
    `y`, `margin` (true-class margin p_y - max_j p_j of the probabilities the net reads), `weight`
    and `weight_init` (mean 1 over the sample), `misclassified_adv` (the point's
    PGD-`pgd_steps` example is misclassified), and the AUROC of each weight as a score for that
    error."""
    from .analysis import _logits, fixed_subset, weight_auroc
    from .attacks import pgd

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
    return {"epoch": run.epoch, "index": idx.cpu(), "margin_input": feats.cpu(), "y": y.cpu(),
            "margin": binary_margin(F.softmax(read, 1), y).cpu(), "weight": w.cpu(), "weight_init": w0.cpu(),
            "misclassified_adv": wrong.cpu(), "auroc": weight_auroc(w, wrong), "auroc_init": weight_auroc(w0, wrong)}


def save_weight_maps(path, maps: list[dict[str, Any]]) -> None:
    """`weight_map.npz`: `epochs` (k,), and per snapshot i the arrays `<name>_<i>` and the
    AUROCs `auroc` / `auroc_init` (k,)."""
    arrays: dict[str, np.ndarray] = {"epochs": np.array([m["epoch"] for m in maps]),
                                     "auroc": np.array([m["auroc"] for m in maps], dtype=float),
                                     "auroc_init": np.array([m["auroc_init"] for m in maps], dtype=float)}
    for i, m in enumerate(maps):
        for name in ("index", "margin_input", "y", "margin", "weight", "weight_init", "misclassified_adv"):
            value = m[name]
            arrays[f"{name}_{i}"] = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    np.savez_compressed(path, **arrays)


def load_weight_maps(path) -> list[dict[str, Any]]:
    """The snapshots `save_weight_maps` wrote, in epoch order."""
    with np.load(path) as npz:
        out = []
        for i, epoch in enumerate(npz["epochs"]):
            m = {name: npz[f"{name}_{i}"] for name in ("index", "margin_input", "y", "margin", "weight",
                                                       "weight_init", "misclassified_adv")}
            m.update(epoch=int(epoch), auroc=float(npz["auroc"][i]), auroc_init=float(npz["auroc_init"][i]))
            out.append(m)
        return out
