"""The training set split into train / meta-validation / held-out validation (class-stratified,
fixed by the run seed), and symmetric label noise on the train part only."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class SplitIndices:
    """Disjoint indices into a training set: what is trained on and the two validation sets."""

    train: torch.Tensor
    meta_val: torch.Tensor
    holdout: torch.Tensor


def _stratified_quota(counts: list[int], total: int) -> list[int]:
    """How many to take from each class: as equal as the class sizes allow; the remainder goes
    one each to the lowest-numbered classes that still have samples left."""
    quota = [0] * len(counts)
    remaining = total
    while remaining > 0:
        open_classes = [c for c, n in enumerate(counts) if quota[c] < n]
        share = remaining // len(open_classes)
        if share == 0:
            for c in open_classes[:remaining]:
                quota[c] += 1
            break
        for c in open_classes:
            take = min(share, counts[c] - quota[c])
            quota[c] += take
            remaining -= take
    return quota


def split_indices(
    y: torch.Tensor | np.ndarray, *, meta_val_size: int, holdout_val_size: int, seed: int
) -> SplitIndices:
    """Class-stratified, disjoint train / meta-val / hold-out indices, fixed by `seed`.

    Each validation set takes an equal share of every class (e.g. 100 per class for 1000 and 10
    classes); the training part is the rest. Each class is shuffled with a generator seeded by
    `seed`: its first indices go to meta-val, the next to hold-out. Returned indices are sorted.
    """
    y = torch.as_tensor(y).reshape(-1).cpu()
    n = y.numel()
    if meta_val_size < 0 or holdout_val_size < 0:
        raise ValueError(
            f"validation sizes must be >= 0, got meta_val_size={meta_val_size}, "
            f"holdout_val_size={holdout_val_size}"
        )
    if meta_val_size + holdout_val_size >= n:
        raise ValueError(
            f"meta_val_size={meta_val_size} + holdout_val_size={holdout_val_size} must leave "
            f"training samples, but the training set has only {n}"
        )
    classes = torch.unique(y).tolist()
    members = [torch.nonzero(y == c).flatten() for c in classes]
    counts = [len(m) for m in members]
    meta_q = _stratified_quota(counts, meta_val_size)
    hold_q = _stratified_quota([n_c - q for n_c, q in zip(counts, meta_q)], holdout_val_size)
    g = torch.Generator().manual_seed(seed)
    parts: dict[str, list[torch.Tensor]] = {"train": [], "meta": [], "hold": []}
    for idx, mq, hq in zip(members, meta_q, hold_q):
        shuffled = idx[torch.randperm(len(idx), generator=g)]
        parts["meta"].append(shuffled[:mq])
        parts["hold"].append(shuffled[mq:mq + hq])
        parts["train"].append(shuffled[mq + hq:])
    return SplitIndices(
        train=_sorted_cat(parts["train"]),
        meta_val=_sorted_cat(parts["meta"]),
        holdout=_sorted_cat(parts["hold"]),
    )


def _sorted_cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.sort(torch.cat(parts)).values if parts else torch.empty(0, dtype=torch.long)


def apply_label_noise(
    y: torch.Tensor, fraction: float, num_classes: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric label noise: exactly round(fraction * N) random samples get a uniformly drawn
    wrong class (never their own). Returns (noisy copy of y, sorted indices that were changed).

    Drawn on the generator's device and moved to y's device.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"label noise fraction must be in [0, 1), got {fraction}")
    n_noisy = int(round(fraction * y.numel()))
    if n_noisy and num_classes < 2:
        raise ValueError(f"label noise needs num_classes >= 2, got {num_classes}")
    gdev = generator.device
    idx = torch.randperm(y.numel(), generator=generator, device=gdev)[:n_noisy]
    idx = torch.sort(idx).values.to(y.device)
    # Adding 1..K-1 (mod K) reaches every other class with equal probability, never the same one.
    shift = torch.randint(1, max(num_classes, 2), (n_noisy,), generator=generator, device=gdev)
    y_noisy = y.clone()
    y_noisy[idx] = (y[idx] + shift.to(y.device)) % num_classes
    return y_noisy, idx


def noise_generator(seed: int) -> torch.Generator:
    """A generator for label noise, independent of the split's generator for the same seed."""
    mixed = int(np.random.SeedSequence([seed, 1]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(mixed)


def split_and_corrupt(raw: Any, *, meta_val_size: int, holdout_val_size: int, seed: int,
                      label_noise: float) -> tuple[SplitIndices, torch.Tensor, torch.Tensor]:
    """How `bilaw.data.datasets.load_data` splits a raw dataset (its `y_train`, `num_classes`) and
    corrupts its training-only labels: (the split, the noisy labels of split.train, which of
    split.train were corrupted)."""
    split = split_indices(raw.y_train, meta_val_size=meta_val_size, holdout_val_size=holdout_val_size, seed=seed)
    y_noisy_part, noisy_local = apply_label_noise(raw.y_train[split.train], label_noise, raw.num_classes,
                                                  noise_generator(seed))
    return split, y_noisy_part, noisy_local
