"""AutoAttack adapter: the only module that imports `pyautoattack` (0.2.0).

pyautoattack's API differs from upstream fra31/auto-attack (docs/methods.md sec. autoattack):
keyword-only constructor, `device` defaults to 'cpu', no `log_path`/`verbose` arguments (it logs
to the 'auto-attack' logger), and `run_standard_evaluation` returns `(x_adv, y_adv)`, where
y_adv is the final prediction per point, so robust accuracy = mean(y_adv == y).

Things this adapter fixes up around the library:
- Sub-attacks reseed the *global* torch RNGs (`torch.random.manual_seed(seed)`) on every call;
  we run inside `torch.random.fork_rng` so the caller's RNG streams are untouched.
- APGD derives its step-size checkpoints (`n_iter_2`, `n_iter_min`, `size_decr`) from `n_iter`
  in its constructor; overriding `n_iter` afterwards must recompute them or the step size is
  never adapted in short runs.
- The 9-target attacks (apgd-t, fab-t) get min(9, k - 1) targets, so k < 10 classes work.
- 'custom' alone would use the constructor defaults (APGD 5 restarts, FAB 5 restarts); we give
  it the standard version's per-attack settings (1 restart each) and only change the list.

Usage::

    res = run_autoattack(model, x_test, y_test, norm="linf", eps=0.031, n=1000)
    res.accuracy  # robust accuracy on the first 1000 points, a fraction in [0, 1]
"""
from __future__ import annotations

import logging
import numbers
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch
from pyautoattack import AutoAttack
from torch import Tensor, nn

from bilaw.eval.attacks import NORMS, eval_mode, model_device

__all__ = ["AutoAttackResult", "run_autoattack", "VERSIONS", "ATTACKS"]

VERSIONS = ("standard", "plus", "rand", "custom")
ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")


@dataclass(frozen=True)
class AutoAttackResult:
    """Outcome of one AutoAttack run on the first n points.

    Attributes:
        x_adv: (n, ...) adversarial points (the clean point where no attack succeeded), on x's
            device.
        y_pred: (n,) int64 final predictions (on x_adv), on y's device.
        accuracy: robust accuracy, mean(y_pred == y), in [0, 1].
        n: number of points evaluated (min(n, len(x))).
        warnings: what AutoAttack's own sanity checks said of the model (a randomised or dynamic
            defence, probabilities instead of logits, points with zero gradient, Square beating
            the gradient attacks): each a sign that its number may overstate robustness.
    """

    x_adv: Tensor
    y_pred: Tensor
    accuracy: float
    n: int
    warnings: tuple[str, ...] = ()


def _check_args(norm: str, version: str, attacks: Optional[Sequence[str]],
                n_iter: Optional[int], n: int) -> None:
    """Raise a ValueError (or UnknownNameError) naming the bad argument and the valid values."""
    NORMS.get(norm)  # an unknown norm is an UnknownNameError naming the registered ones
    if version not in VERSIONS:
        raise ValueError(f"unknown AutoAttack version {version!r}; valid: {', '.join(VERSIONS)}")
    if version == "custom" and not attacks:
        raise ValueError(f"version='custom' needs a non-empty attacks list, e.g. ['apgd-ce']; "
                         f"valid attacks: {', '.join(ATTACKS)}")
    if version != "custom" and attacks is not None:
        raise ValueError(f"attacks={list(attacks)!r} is only used with version='custom' "
                         f"(got version={version!r})")
    bad = [a for a in attacks or () if a not in ATTACKS]
    if bad:
        raise ValueError(f"unknown AutoAttack attack(s) {bad}; valid: {', '.join(ATTACKS)}")
    if n_iter is not None and (isinstance(n_iter, bool)
                               or not isinstance(n_iter, numbers.Integral) or n_iter < 1):
        raise ValueError(f"n_iter must be a positive int or None, got {n_iter!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n!r}")


def _set_apgd_iters(apgd: object, n_iter: int) -> None:
    """Set an APGD attack's iterations and the checkpoint schedule its constructor derives."""
    apgd.n_iter = apgd.n_iter_orig = n_iter
    apgd.n_iter_2 = max(int(0.22 * n_iter), 1)
    apgd.n_iter_min = max(int(0.06 * n_iter), 1)
    apgd.size_decr = max(int(0.03 * n_iter), 1)


def _configure(adversary: AutoAttack, *, version: str, num_classes: int,
               n_iter: Optional[int]) -> None:
    """Per-attack settings after construction (pyautoattack has no constructor args for them)."""
    targets = max(1, min(9, num_classes - 1))
    adversary.apgd_targeted.n_target_classes = targets
    adversary.fab.n_target_classes = targets
    if version == "custom":  # the standard version's restarts, not the constructor's 5
        adversary.apgd.n_restarts = 1
        adversary.apgd_targeted.n_restarts = 1
        adversary.fab.n_restarts = 1
    if n_iter is not None:
        _set_apgd_iters(adversary.apgd, n_iter)
        _set_apgd_iters(adversary.apgd_targeted, n_iter)
        adversary.fab.n_iter = n_iter
        adversary.square.n_queries = n_iter


class _Collect(logging.Handler):
    """Keeps the messages of the WARNING records it is handed (AutoAttack's sanity checks log
    there), and hands ERROR records on to `errors_to` where given."""

    def __init__(self, errors_to: Optional[logging.Logger]) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.errors_to = errors_to

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR and self.errors_to is not None:
            self.errors_to.handle(record)
        elif record.getMessage() not in self.messages:
            self.messages.append(record.getMessage())


@contextmanager
def _collected(verbose: bool) -> Iterator[list[str]]:
    """Collect the 'auto-attack' logger's warnings into the yielded list; unless verbose only its
    errors are printed (the logger stops propagating while it runs and the collector passes
    errors on; level and propagation restored after)."""
    logger = logging.getLogger("auto-attack")
    level, propagate = logger.level, logger.propagate
    collect = _Collect(None if verbose else logger.parent)
    logger.addHandler(collect)
    if not verbose:
        logger.setLevel(logging.WARNING)
        logger.propagate = False
    try:
        yield collect.messages
    finally:
        logger.removeHandler(collect)
        logger.setLevel(level)
        logger.propagate = propagate


def run_autoattack(model: nn.Module, x: Tensor, y: Tensor, *, norm: str, eps: float,
                   n: int = 1000, version: str = "standard",
                   attacks: Optional[Sequence[str]] = None, n_iter: Optional[int] = None,
                   seed: int = 0, batch_size: int = 250,
                   verbose: bool = False) -> AutoAttackResult:
    """AutoAttack (Croce & Hein, 2020) robust accuracy on the first n points.

    Distance measure: norm "linf" (-> 'Linf') or "l2" (-> 'L2'), radius eps; inputs in [0, 1].

    Args:
        model: maps (B, ...) inputs in [0, 1] to logits (B, k); run on its own device (x and y
            may stay on the CPU: the library moves each batch). Eval mode during the run, every
            submodule's mode restored afterwards.
        x: (N, ...) inputs in [0, 1]; only x[:n] is evaluated.
        y: (N,) int64 labels.
        norm: "linf" or "l2".
        eps: perturbation budget.
        n: number of leading points to evaluate (the paper: the first 1000 test points).
        version: "standard" (apgd-ce, apgd-t, fab-t, square), "plus", "rand" or "custom".
        attacks: the sub-attack list for version="custom", e.g. ["apgd-ce"] (see ATTACKS).
        n_iter: override the iterations of APGD/APGD-T/FAB and Square's queries (cheap test
            runs; the result is then not a standard AutoAttack number). None keeps 100/5000.
        seed: seed for every sub-attack (the caller's RNG state is preserved).
        batch_size: attack batch size.
        verbose: let the 'auto-attack' logger's messages through (else none are printed; its
            warnings are returned either way).

    Returns:
        AutoAttackResult(x_adv (n, ...), y_pred (n,), accuracy, n, warnings).

    Raises:
        ValueError: unknown version or attack, attacks without version="custom" or the reverse.
        UnknownNameError: unknown norm.
    """
    _check_args(norm, version, attacks, n_iter, n)
    x, y = x[:n].detach(), y[:n].detach()
    device = model_device(model, default=x.device)
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with eval_mode(model), torch.random.fork_rng(devices=cuda), _collected(verbose) as said:
        with torch.no_grad():
            num_classes = model(x[:1].to(device)).shape[1]
        adversary = AutoAttack(model, attacks=list(attacks) if attacks else None, device=device,
                               eps=eps, norm=NORMS.facts(norm)["autoattack"], seed=seed, version=version)
        _configure(adversary, version=version, num_classes=num_classes, n_iter=n_iter)
        x_adv, y_pred = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    accuracy = y_pred.eq(y).sum().item() / max(x.shape[0], 1)  # exact count / N
    return AutoAttackResult(x_adv=x_adv, y_pred=y_pred, accuracy=accuracy, n=x.shape[0], warnings=tuple(said))
