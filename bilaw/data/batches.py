"""Batches as index tensors on the device (`batch_indices`, `CyclingBatches`) and CIFAR
augmentation on the whole batch on the device (`augment_crop_flip`): no DataLoader and no
per-sample Python work in the training loop."""
from __future__ import annotations

from typing import Any, Iterator

import torch
import torch.nn.functional as F


def _permutation(n: int, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else "cpu"
    return torch.randperm(n, generator=generator, device=device)


def batch_indices(
    n: int,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
    device: str | torch.device = "cpu",
) -> Iterator[torch.Tensor]:
    """One epoch of index batches over range(n), as LongTensors on `device`.

    The permutation is drawn from `generator` on the generator's device and moved to `device`
    once per epoch; every index appears exactly once (unless `drop_last` drops the short tail).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = _permutation(n, generator) if shuffle else torch.arange(n)
    order = order.to(device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


class CyclingBatches:
    """An endless iterator of shuffled (x, y) batches, reshuffled on every pass (meta-val batches).

    Batches are always min(batch_size, N) long: a pass ends when fewer than that are left (the
    tail waits for a later pass, reshuffled). `state_dict()` holds the current permutation, the
    position and the generator's state, so `load_state_dict()` continues identically; give it its
    own generator, since restoring rewinds that generator.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                 generator: torch.Generator) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"need equally many (>0) inputs and labels, got {len(x)} and {len(y)}")
        self.x, self.y = x, y
        self.batch_size = min(batch_size, len(x))
        self.generator = generator
        self._perm: torch.Tensor | None = None
        self._pos = 0

    def __iter__(self) -> "CyclingBatches":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._perm is None or self._pos + self.batch_size > len(self._perm):
            self._perm = _permutation(len(self.x), self.generator).to(self.x.device)
            self._pos = 0
        idx = self._perm[self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        return self.x[idx], self.y[idx]

    def state_dict(self) -> dict[str, Any]:
        """Permutation (CPU), position and generator state: enough to resume identically."""
        return {
            "perm": None if self._perm is None else self._perm.cpu().clone(),
            "pos": self._pos,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict()` returned (also rewinds the generator)."""
        perm = state["perm"]
        self._perm = None if perm is None else perm.to(self.x.device)
        self._pos = int(state["pos"])
        self.generator.set_state(state["generator"])


def augment_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """CIFAR augmentation for a whole batch: random crop from the zero-padded image (an
    independent offset per sample) and horizontal flip with p = 0.5.

    All randomness comes from `generator`, drawn on the generator's device (CPU or x's device)
    and moved to x's device, so a given generator state always gives the same result. No Python
    loop over samples: one gather with per-sample row/column indices.
    """
    n, c, h, w = x.shape
    gdev = generator.device
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=gdev).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=gdev).to(x.device)
    flip = (torch.rand(n, generator=generator, device=gdev) < 0.5).to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = dx[:, None] + torch.arange(w, device=x.device)  # (N, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]
