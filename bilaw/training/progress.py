"""What a training run shows while it runs: a progress bar per epoch and one line per epoch."""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

from bilaw.metrics import BEST_VAL_PGD_ACC, TRAIN_LOSS, VAL_CLEAN_ACC, VAL_PGD_ACC


def batch_progress(enabled: bool, run: Any) -> Callable[[Iterable], Iterable]:
    """A wrapper that shows a tqdm bar over one epoch's batches of `run` (or passes them through)."""
    if not enabled:
        return lambda it: it
    from tqdm.auto import tqdm

    n_batches = math.ceil(len(run.data.y_train) / run.cfg.batch_size)

    def wrap(it):
        return tqdm(it, total=n_batches, desc=f"epoch {run.epoch + 1}/{run.cfg.epochs}", leave=False,
                    unit="batch", dynamic_ncols=True)

    return wrap


def format_epoch(m: dict[str, Any], epochs: int) -> str:
    """One epoch's log line."""
    meta = f"  meta |g| {m['meta_grad_norm']:.3g}" if "meta_grad_norm" in m else ""
    return (f"epoch {m['epoch']:>3}/{epochs}  loss {m[TRAIN_LOSS]:.4f}  val clean {m[VAL_CLEAN_ACC]:.4f}  "
            f"val pgd {m[VAL_PGD_ACC]:.4f}  best {m[BEST_VAL_PGD_ACC]:.4f}  lr {m['lr']:.4g}  "
            f"w std {m['weight_std']:.3f}{meta}  {m['epoch_time_s']:.1f}s")
