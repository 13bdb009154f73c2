"""Evaluation: clean, PGD and AutoAttack accuracy, per-class accuracy, adversarial confusion.

Everything returns plain data (floats, lists) for the caller to log; nothing here prints.
All evaluation runs the model in eval mode under no_grad (PGD takes its own input gradients)
and restores each submodule's mode afterwards. Batches are moved to the model's device, so the
data may stay on the CPU; counts accumulate on the device and are read back once.

Usage::

    metrics = evaluate_model(model, x_test, y_test, num_classes=10, norm="linf", eps=0.031,
                             pgd_steps=20, aa_samples=1000)
    metrics["clean_acc"], metrics["pgd_acc"], metrics["aa_acc"], metrics["adv_confusion"]
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor

from bilaw.eval.attacks import eval_mode, model_device, pgd
from bilaw.eval.autoattack import run_autoattack

__all__ = ["accuracy", "predict", "pgd_accuracy", "pgd_predictions", "confusion_matrix",
           "evaluate_model"]

Model = Callable[[Tensor], Tensor]


def _slices(n: int, batch_size: int) -> Iterator[slice]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    return (slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size))


def predict(model: Model, x: Tensor, batch_size: int = 1024) -> Tensor:
    """Predicted classes (N,) int64 on the model's device, in eval mode, no_grad, batched."""
    device = model_device(model, default=x.device)
    with eval_mode(model), torch.no_grad():
        preds = [model(x[s].to(device)).argmax(dim=1) for s in _slices(len(x), batch_size)]
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.int64, device=device)


def accuracy(model: Model, x: Tensor, y: Tensor, batch_size: int = 1024) -> float:
    """Clean accuracy in [0, 1] of model on (x (N, ...), y (N,))."""
    preds = predict(model, x, batch_size)
    return preds.eq(y.to(preds.device)).sum().item() / max(len(y), 1)  # exact count / N


def pgd_predictions(model: Model, x: Tensor, y: Tensor, *, norm: str, eps: float,
                    steps: int = 20, step_size: Optional[float] = None,
                    batch_size: int = 1024,
                    generator: Optional[torch.Generator] = None) -> Tensor:
    """Predictions (N,) int64 on PGD-`steps` examples (random start, CE), on the model's device.

    Args:
        model: images in [0, 1] -> logits; attacked and evaluated in eval mode.
        x, y: (N, ...) images in [0, 1] and (N,) labels; may live on the CPU.
        norm, eps, steps, step_size: as in `bilaw.eval.attacks.pgd` (step default eps / 4).
        batch_size: attack batch size. The random starts are drawn batch by batch from
            `generator`, so the same generator seed and batch size give the same predictions.
        generator: torch.Generator for the random starts (model's device or CPU).
    """
    device = model_device(model, default=x.device)
    preds = []
    with eval_mode(model):
        for s in _slices(len(x), batch_size):
            xb, yb = x[s].to(device), y[s].to(device)
            x_adv = pgd(model, xb, yb, norm=norm, eps=eps, steps=steps, step_size=step_size,
                        random_start=True, generator=generator)
            with torch.no_grad():
                preds.append(model(x_adv).argmax(dim=1))
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.int64, device=device)


def pgd_accuracy(model: Model, x: Tensor, y: Tensor, *, norm: str, eps: float,
                 steps: int = 20, step_size: Optional[float] = None, batch_size: int = 1024,
                 generator: Optional[torch.Generator] = None) -> float:
    """Robust accuracy in [0, 1] under PGD-`steps` (see `pgd_predictions`)."""
    preds = pgd_predictions(model, x, y, norm=norm, eps=eps, steps=steps, step_size=step_size,
                            batch_size=batch_size, generator=generator)
    return preds.eq(y.to(preds.device)).sum().item() / max(len(y), 1)  # exact count / N


def confusion_matrix(y: Tensor, pred: Tensor, num_classes: int) -> Tensor:
    """(k, k) int64 counts on y's device: rows = true class, columns = predicted class."""
    k = num_classes
    counts = torch.bincount(y.long() * k + pred.long(), minlength=k * k)
    if counts.numel() != k * k:
        raise ValueError(f"labels or predictions outside [0, num_classes={k})")
    return counts.view(k, k)


def _per_class(conf: Sequence[Sequence[int]]) -> list[float]:
    """Per-class accuracy diag / row sum; NaN for a class with no samples."""
    return [row[i] / sum(row) if sum(row) else math.nan for i, row in enumerate(conf)]


def _overall(conf: Sequence[Sequence[int]]) -> float:
    total = sum(map(sum, conf))
    return sum(row[i] for i, row in enumerate(conf)) / total if total else math.nan


def evaluate_model(model: Model, x: Tensor, y: Tensor, *, num_classes: int, norm: str,
                   eps: float, pgd_steps: int = 20, aa_samples: int = 0,
                   aa_version: str = "standard", aa_attacks: Optional[Sequence[str]] = None,
                   aa_n_iter: Optional[int] = None, seed: int = 0,
                   batch_size: int = 1024, per_point: bool = False) -> dict:
    """Clean, PGD-`pgd_steps` (step eps/4, random start) and optionally AutoAttack results.

    The PGD random starts come from `torch.Generator(device=<model's device>).manual_seed(seed)`,
    so `pgd_predictions(..., batch_size=batch_size, generator=<same>)` reproduces them.

    Args:
        model: images in [0, 1] -> logits (B, num_classes).
        x, y: (N, ...) images in [0, 1] and (N,) labels in [0, num_classes).
        num_classes: k.
        norm, eps: threat model ("linf" / "l2").
        pgd_steps: PGD iterations (the paper evaluates with PGD-20).
        aa_samples: AutoAttack on the first aa_samples points; 0 skips it.
        aa_version, aa_attacks, aa_n_iter: passed to `run_autoattack` (version, attacks, n_iter).
        seed: seeds the PGD starts and AutoAttack.
        batch_size: evaluation batch size (AutoAttack keeps its own 250).
        per_point: also return `points`: which points each attack leaves correct (CPU bool
            tensors `clean` and `pgd` over all N, `aa` over AutoAttack's first points).

    Returns:
        dict with fractions in [0, 1]: `clean_acc`, `pgd_acc`, `aa_acc` and
        `pgd_acc_aa_subset` (PGD on the same first aa_samples points; both only if aa_samples > 0,
        with `aa_warnings`, what AutoAttack's own sanity checks said), `per_class_clean_acc` and `per_class_pgd_acc` (k floats, NaN for an absent
        class), `adv_confusion` (k x k ints: rows true class, columns class predicted on the
        PGD examples).
    """
    device = model_device(model, default=x.device)
    generator = torch.Generator(device=device).manual_seed(seed)
    y_dev = y.to(device)
    with eval_mode(model):
        clean = predict(model, x, batch_size)
        adv = pgd_predictions(model, x, y, norm=norm, eps=eps, steps=pgd_steps,
                              batch_size=batch_size, generator=generator)
        conf = torch.stack([confusion_matrix(y_dev, clean, num_classes),
                            confusion_matrix(y_dev, adv, num_classes)]).tolist()  # one host read
        metrics = {
            "clean_acc": _overall(conf[0]),
            "pgd_acc": _overall(conf[1]),
            "per_class_clean_acc": _per_class(conf[0]),
            "per_class_pgd_acc": _per_class(conf[1]),
            "adv_confusion": conf[1],
        }
        if aa_samples > 0:
            n = min(aa_samples, len(y))  # PGD on exactly AutoAttack's points, for a like-for-like gap
            metrics["pgd_acc_aa_subset"] = adv[:n].eq(y_dev[:n]).sum().item() / n
            aa = run_autoattack(model, x, y, norm=norm, eps=eps, n=aa_samples, version=aa_version,
                                attacks=aa_attacks, n_iter=aa_n_iter, seed=seed)
            metrics["aa_acc"] = aa.accuracy
            metrics["aa_warnings"] = list(aa.warnings)
        if per_point:
            metrics["points"] = {"clean": clean.eq(y_dev).cpu(), "pgd": adv.eq(y_dev).cpu()}
            if aa_samples > 0:
                metrics["points"]["aa"] = aa.y_pred.to(y_dev.device).eq(y_dev[:aa.n]).cpu()
    return metrics
