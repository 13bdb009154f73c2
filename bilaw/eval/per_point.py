"""Which points a run's best state classifies correctly, kept beside its metrics
(`per_point.npz`), and the paired test that reads them: McNemar's exact test on the points two
evaluations disagree on. A PGD-20 accuracy well above AutoAttack's on the same points, by more
than chance allows, is the mark of gradient masking: PGD's gradients are misleading it."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

PER_POINT_NAME = "per_point.npz"
MASKING_MIN_POINTS = 500  # fewer: a gap of a few points is within the sampling noise; no flag


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: the discordant points (correct under A only, under B
    only) as a Binomial(only_a + only_b, 1/2) draw."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def masking_check(pgd: Any, aa: Any, gap_points: float) -> dict[str, float | bool | int]:
    """PGD against AutoAttack on the same points (bool arrays, AutoAttack's first n): the gap in
    accuracy points, McNemar's p, and the flag (at least MASKING_MIN_POINTS points, a gap above
    `gap_points`, p < 0.05)."""
    pgd, aa = np.asarray(pgd, dtype=bool)[:len(aa)], np.asarray(aa, dtype=bool)
    n = len(aa)
    only_pgd, only_aa = int((pgd & ~aa).sum()), int((~pgd & aa).sum())
    gap = 100.0 * (pgd.mean() - aa.mean()) if n else 0.0
    p = mcnemar_p(only_pgd, only_aa)
    return {"masking_gap_points": float(gap), "masking_p_value": p,
            "suspect_gradient_masking": bool(n >= MASKING_MIN_POINTS and gap > gap_points and p < 0.05)}


def save_per_point(path: str | Path, test: dict[str, Any], holdout: dict[str, Any] | None) -> None:
    """per_point.npz: `test_<clean|pgd|aa>` (the best state), `test_last_<clean|pgd>` (the last
    epoch's state) and `holdout_<clean|pgd>` (bool per point) and `test_index` /
    `holdout_index`: each point's position in the test set and in the hold-out validation set
    (`aa` covers AutoAttack's first points of the test set)."""
    arrays = {f"test_{k}": np.asarray(v, dtype=bool) for k, v in test.items()}
    arrays["test_index"] = np.arange(len(arrays["test_clean"]))
    for k, v in (holdout or {}).items():
        arrays[f"holdout_{k}"] = np.asarray(v, dtype=bool)
    if holdout:
        arrays["holdout_index"] = np.arange(len(arrays["holdout_clean"]))
    np.savez_compressed(path, **arrays)


VAL_ATTACK_SEED_OFFSET = 99  # the held-out PGD starts' generator seed is cfg.seed + this


def holdout_correct(model, cfg, data) -> dict[str, Any]:
    """Which held-out validation points `model` classifies correctly (CPU bool tensors `clean`
    and `pgd`): PGD with the evaluation's steps and the default step eps/4 whatever
    `pgd_step_size` says, its random starts from a generator seeded cfg.seed + 99, so every epoch
    is scored against the same starts. The trainer's held-out accuracies are the means of these,
    so a run's per-point held-out results at its best state are exactly its best_val_pgd_acc."""
    import torch

    from bilaw.eval.attacks import default_step_size, model_device
    from bilaw.eval.evaluate import pgd_predictions, predict

    device = model_device(model, default=data.x_holdout.device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed + VAL_ATTACK_SEED_OFFSET)
    y = data.y_holdout.to(device)
    clean = predict(model, data.x_holdout, cfg.eval_batch_size).eq(y)
    adv = pgd_predictions(model, data.x_holdout, data.y_holdout, norm=cfg.norm, eps=cfg.eps, steps=cfg.eval_pgd_steps,
                          step_size=default_step_size(cfg.eps), batch_size=cfg.eval_batch_size, generator=gen).eq(y)
    return {"clean": clean.cpu(), "pgd": adv.cpu()}


def holdout_points(run) -> dict[str, Any] | None:
    """`holdout_correct` of `run`'s best state (a trainer RunState with its best state loaded):
    kept from the epoch that was best, else (a checkpoint from before they were kept, or no best
    epoch) computed now; None without a held-out set."""
    if not len(run.data.y_holdout):
        return None
    kept = run.best.get("holdout")
    return kept if kept is not None else holdout_correct(run.model, run.cfg, run.data)
