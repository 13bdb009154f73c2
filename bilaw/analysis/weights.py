"""What the learned (or heuristic) weights mean: the data behind the paper's figures and two
numbers, computed from what the trainer already holds.

- Per-sample training weights: every epoch the trainer records the weight each training sample
  got (on the mean-1 scale of the batch it was in; uniform = 1). With label noise these give
  `weight_mean_noisy` / `weight_mean_clean` per epoch (`noise_weight_means`).
- A weight trace (Fig. 5): the run's weighting evaluated each epoch on a fixed subset of training
  samples, on the clean and on the PGD inputs (`trace_weights`).
- At the end (`collect`), on a fixed subset of training samples and the last state (the state
  that produced the last epoch's weights): clean and PGD logits, GAIRAT's kappa, the MAIL and
  GAIRAT weights of the same samples, and on a test subset the rank of the adversarial class in
  the clean logits (Fig. 1b). `weight_auroc` is how well a sample's weight predicts that its PGD
  example is misclassified (the paper's Contribution 2).
"""
from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn
from torch.nn import functional as F

from bilaw.config.train_config import TrainConfig
from bilaw.data.datasets import DataBundle
from bilaw.eval.attacks import eval_mode, pgd
from bilaw.methods.margins import binary_margin
from bilaw.methods.weighting import Weighting, as_mean_one, gairat_lambda, gairat_weights, mail_weights


class AnalysedRun(Protocol):
    """What the analysis reads of a training run (the trainer's run state has it)."""

    cfg: TrainConfig
    model: nn.Module
    data: DataBundle
    weighting: Weighting
    epoch: int


TRACE_SIZE = 64
ANALYSIS_SEED_OFFSET = 4242


def fixed_subset(n: int, k: int, seed: int) -> torch.Tensor:
    """k distinct indices of range(n), the same for every epoch and on resume (CPU tensor)."""
    g = torch.Generator().manual_seed(seed + ANALYSIS_SEED_OFFSET)
    return torch.randperm(n, generator=g)[: min(k, n)].sort().values


def noise_weight_means(epoch_weights: torch.Tensor, noisy_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean recorded weight of the corrupted and of the clean training samples (device scalars)."""
    return {"weight_mean_noisy": epoch_weights[noisy_mask].mean(),
            "weight_mean_clean": epoch_weights[~noisy_mask].mean()}


def _attack(run: AnalysedRun, x: torch.Tensor, y: torch.Tensor, steps: int, kappa: bool = False):
    cfg = run.cfg
    g = torch.Generator(device=x.device).manual_seed(cfg.seed + ANALYSIS_SEED_OFFSET + run.epoch)
    return pgd(run.model, x, y, norm=cfg.norm, eps=cfg.eps, steps=steps, step_size=cfg.pgd_step_size,
               generator=g, return_kappa=kappa)


def _logits(model, x: torch.Tensor) -> torch.Tensor:
    with eval_mode(model), torch.no_grad():
        return model(x).float()


def weights_on(run: AnalysedRun, y: torch.Tensor, logits: torch.Tensor, logits_clean: torch.Tensor,
               logits_adv: torch.Tensor, kappa: torch.Tensor | None) -> torch.Tensor | None:
    """The run's weighting evaluated on `logits` (clean or adversarial) of a subset, mean-1 over
    the subset; None for weightings without a per-sample formula (none, nonparam)."""
    return run.weighting.on_subset(y, logits, logits_clean, logits_adv, kappa, run.epoch)


def trace_weights(run: AnalysedRun, idx: torch.Tensor) -> dict[str, list[float]] | None:
    """Fig. 5: the weighting on clean and on PGD inputs of the fixed subset `idx`, now."""
    if run.weighting.uniform or not run.weighting.per_sample_formula:
        return None
    x, y = run.data.x_train[idx], run.data.y_train[idx]
    x_adv, kappa = _attack(run, x, y, run.cfg.pgd_steps, kappa=True)
    clean, adv = _logits(run.model, x), _logits(run.model, x_adv)
    w_clean = weights_on(run, y, clean, clean, adv, kappa)
    w_adv = weights_on(run, y, adv, clean, adv, kappa)
    return {"clean": w_clean.tolist(), "adv": w_adv.tolist()}


def adversarial_ranks(logits_clean: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """For samples whose prediction the attack changed: the rank (1 = second largest, ...) of the
    adversarial prediction among the clean logits (Fig. 1b)."""
    pred_clean, pred_adv = logits_clean.argmax(1), logits_adv.argmax(1)
    changed = pred_adv != pred_clean
    order = logits_clean[changed].argsort(1, descending=True)
    return (order == pred_adv[changed, None]).float().argmax(1)


def weight_auroc(weights: torch.Tensor, misclassified: torch.Tensor) -> float:
    """AUROC of the weight as a score for 'the PGD example is misclassified'; NaN when one of the
    two groups is empty or the weights are all equal (no ranking to judge)."""
    from sklearn.metrics import roc_auc_score

    labels = misclassified.cpu().numpy().astype(int)
    scores = weights.cpu().double().numpy()
    if labels.min() == labels.max() or scores.min() == scores.max():
        return float("nan")
    return float(roc_auc_score(labels, scores))


def collect(run: AnalysedRun, sample_weights: list[torch.Tensor], n: int) -> dict[str, Any]:
    """The end-of-training analysis at the run's current (last) state; CPU tensors."""
    cfg, d = run.cfg, run.data
    idx = fixed_subset(len(d.y_train), n, cfg.seed).to(d.x_train.device)
    x, y = d.x_train[idx], d.y_train[idx]
    x_adv, kappa = _attack(run, x, y, cfg.pgd_steps, kappa=True)
    clean, adv = _logits(run.model, x), _logits(run.model, x_adv)
    w = sample_weights[-1][idx.cpu()] if sample_weights else torch.ones(len(idx))
    t_idx = fixed_subset(len(d.y_test), n, cfg.seed).to(d.x_test.device)
    x_t, y_t = d.x_test[t_idx], d.y_test[t_idx]
    t_clean, t_adv = _logits(run.model, x_t), _logits(run.model, _attack(run, x_t, y_t, cfg.eval_pgd_steps))
    probs_adv = F.softmax(adv, 1)
    lam = gairat_lambda(max(run.epoch - 1, 0), cfg.epochs, cfg)  # GAIRAT's Lambda at the last epoch
    out = {
        "weighting": cfg.weighting, "idx": idx.cpu(), "x": x.cpu(), "y": y.cpu(),
        "y_clean": d.y_train_clean[idx].cpu(), "weights": w.cpu(),
        "probs_clean": F.softmax(clean, 1).cpu(), "misclassified_adv": (adv.argmax(1) != y).cpu(),
        "kappa": kappa.cpu(),
        "mail": as_mean_one(mail_weights(binary_margin(probs_adv, y), cfg.mail_gamma, cfg.mail_beta)).cpu(),
        "gairat": as_mean_one(gairat_weights(kappa, cfg.pgd_steps, lam, cfg.gairat_weight_fn)).cpu(),
        "adv_ranks": adversarial_ranks(t_clean, t_adv).cpu(), "num_classes": d.num_classes,
        "noisy": torch.isin(idx, d.noisy_idx).cpu() if len(d.noisy_idx) else torch.zeros(len(idx), dtype=torch.bool),
    }
    return out
