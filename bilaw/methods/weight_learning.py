"""Did the weight net learn its map, or only pass on the classifier's margins? The statistics
that tell a trained weight net from one frozen at its seeded initialisation.

`weight_std` alone cannot tell: with the net fixed, the weights still spread and shrink as the
classifier's margins move. So a weight-net weighting keeps its net's initial state, and each
epoch records, on the very samples it weighted:
- `weight_net_drift`: ||theta - theta_0|| / ||theta_0|| over all the net's parameters;
- `weight_std_init`: the spread the initial net gives the same samples (the same statistic as
  `weight_std`: population std of the mean-1 batch weights);
- `weight_rank_corr_init`: Spearman's rank correlation of the current and the initial weights.
The map itself, at a few epochs, is `bilaw/analysis/weight_maps.py`'s.
"""
from __future__ import annotations

import torch
from torch import nn


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
        from bilaw.methods.weighting import as_mean_one

        self.current.append(as_mean_one(w))
        self.initial.append(as_mean_one(w_init))

    def epoch_sums(self, net: nn.Module, initial: nn.Module) -> dict[str, torch.Tensor]:
        if not self.current:  # no weighted batch this epoch (burn-in)
            return {}
        cur, init = torch.cat(self.current), torch.cat(self.initial)
        return {"weight_net_drift": parameter_drift(net, initial), "weight_std_init": mean_one_std(init),
                "weight_rank_corr_init": spearman(cur, init)}
