"""A training epoch's statistics: device-side sums over its batches (no host sync per batch),
read back once at the end of the epoch as the per-epoch metrics `train_loss`, `weight_std`,
`weight_min`, `weight_max`, `weight_raw_mean` and whatever the weighting adds (docs/methods.md
sec. weight-health)."""
from __future__ import annotations

import math

import torch

from bilaw.methods.weighting import as_mean_one
from bilaw.metrics import TRAIN_LOSS

# Extra epoch sums copied to the metrics as they are (label-noise means, BiLAW's meta-gradient
# norm, and a weight net's learning statistics: bilaw/methods/weight_learning.py).
PASSTHROUGH = ("weight_mean_noisy", "weight_mean_clean", "meta_grad_norm", "weight_net_drift", "weight_std_init",
               "weight_rank_corr_init")


def accumulate(sums: dict[str, torch.Tensor], loss_sum, n: int, w, raw) -> None:
    """Device-side sums for the epoch metrics (no host sync per batch)."""
    if "loss" not in sums:
        sums.update(loss=torch.zeros((), device=loss_sum.device), n=torch.zeros((), device=loss_sum.device),
                    w_sum=torch.zeros((), device=loss_sum.device), w_dev_sq=torch.zeros((), device=loss_sum.device),
                    w_min=torch.full((), math.inf, device=loss_sum.device),
                    w_max=torch.full((), -math.inf, device=loss_sum.device),
                    raw_sum=torch.zeros((), device=loss_sum.device))
    sums["loss"] += loss_sum.float()
    sums["n"] += n
    if w is None:  # uniform: every weight is 1 (no tensors allocated in the hot loop)
        sums["w_sum"] += n
        sums["w_min"].clamp_(max=1.0)
        sums["w_max"].clamp_(min=1.0)
        sums["raw_sum"] += n
        return
    w1 = as_mean_one(w)
    sums["w_sum"] += w1.sum()
    sums["w_dev_sq"] += (w1 - 1).square().sum()  # about 1, so deviations keep float32's precision
    sums["w_min"] = torch.minimum(sums["w_min"], w1.min())
    sums["w_max"] = torch.maximum(sums["w_max"], w1.max())
    sums["raw_sum"] += raw.detach().float().sum()


def finish_epoch(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """The epoch's metrics from its sums: one host read. `weight_std` is the population standard
    deviation of all the epoch's mean-1 weights."""
    v = dict(zip(sums, torch.stack([t.float() for t in sums.values()]).tolist()))
    n = max(v["n"], 1.0)
    mean = v["w_sum"] / n
    # Var(w) = E[(w - 1)^2] - (E[w] - 1)^2: sums of squared deviations from 1, not E[w^2] - E[w]^2,
    # which cancels catastrophically in float32 when the weights are nearly uniform.
    out = {TRAIN_LOSS: v["loss"] / n,
           "weight_std": math.sqrt(max(v["w_dev_sq"] / n - (mean - 1) ** 2, 0.0)),
           "weight_min": v["w_min"], "weight_max": v["w_max"], "weight_raw_mean": v["raw_sum"] / n}
    out.update({k: v[k] for k in PASSTHROUGH if k in v})
    return out
