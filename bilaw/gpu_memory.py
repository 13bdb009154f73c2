"""GPU memory caps for trials that share one GPU.

A trial given a fraction of a GPU (Ray's fractional `num_gpus`) is only promised that share of
the device's memory, but PyTorch's caching allocator would take whatever is free. Capping the
allocator at the share, less a fixed reserve for the process's CUDA context (which the allocator
does not count), keeps packed trials from starving each other; a trial that needs more fails
with an out-of-memory error that `gpu_oom_message` turns into advice.
"""
from __future__ import annotations

from typing import Callable

import torch

# Memory a process's CUDA context (kernels, cuBLAS/cuDNN handles) takes outside the allocator.
CUDA_CONTEXT_RESERVE_MB = 512


def memory_fraction(share: float, total_bytes: int, reserve_mb: int = CUDA_CONTEXT_RESERVE_MB) -> float | None:
    """The allocator fraction for a trial holding `share` of a GPU of `total_bytes`: the share
    less the context reserve, never above the share. None for a whole GPU (no cap)."""
    if not 0.0 < share <= 1.0:
        raise ValueError(f"GPU share {share!r}: allowed is a fraction in (0, 1]")
    if share >= 1.0:
        return None
    fraction = share - reserve_mb * 2 ** 20 / total_bytes
    if fraction <= 0.0:
        raise ValueError(f"GPU share {share:g} of a {total_bytes / 2 ** 30:.1f} GiB GPU is "
                         f"{share * total_bytes / 2 ** 20:.0f} MiB, under the {reserve_mb} MiB a CUDA context "
                         f"needs; give each trial more (--gpus-per-trial)")
    return min(fraction, share)


def cap_gpu_memory(share: float, device: int | torch.device = 0, *, total_bytes: int | None = None,
                   setter: Callable[..., None] | None = None) -> float | None:
    """Cap this process's CUDA allocator at its `share` of `device` (see `memory_fraction`);
    return the fraction set, or None where nothing was capped (whole GPU, or no CUDA).
    `setter` and `total_bytes` replace the CUDA calls (tests without a GPU)."""
    if setter is None:
        if not torch.cuda.is_available():
            return None
        setter = torch.cuda.set_per_process_memory_fraction
    if total_bytes is None:
        total_bytes = torch.cuda.get_device_properties(device).total_memory
    fraction = memory_fraction(share, total_bytes)
    if fraction is not None:
        setter(fraction, device)
    return fraction


def gpu_oom_message(share: float, fraction: float | None, total_bytes: int | None) -> str:
    """What a trial that ran out of its GPU share says: the share, the cap, how to ask for more."""
    cap = "" if fraction is None or not total_bytes else f", allocator capped at {fraction * total_bytes / 2 ** 30:.2f} GiB"
    more = min(1.0, 2 * share)
    return (f"out of GPU memory within this trial's share of the GPU ({share:g}{cap}); give each trial "
            f"more with --gpus-per-trial (e.g. {more:g}), or make the trial smaller (batch_size, eval_batch_size)")
