"""Packed trials' GPU memory caps: the allocator fraction from a trial's share, where it is
applied, and what a trial that runs out of its share says."""
from __future__ import annotations

import pytest
import torch

from bilaw.config.train_config import TrainConfig
from bilaw.gpu_memory import CUDA_CONTEXT_RESERVE_MB, cap_gpu_memory, gpu_oom_message, memory_fraction

GIB = 2 ** 30


def test_the_fraction_is_the_share_less_the_context_reserve():
    assert CUDA_CONTEXT_RESERVE_MB == 512
    assert memory_fraction(0.25, 80 * GIB) == pytest.approx(0.25 - 0.5 / 80)
    assert memory_fraction(0.125, 141 * GIB) == pytest.approx(0.125 - 0.5 / 141)
    assert memory_fraction(1.0, 80 * GIB) is None  # a whole GPU is not capped
    with pytest.raises(ValueError, match=r"GPU share 0.05 of a 8.0 GiB GPU is 410 MiB, under the 512 MiB"):
        memory_fraction(0.05, 8 * GIB)
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=rf"GPU share {bad!r}: allowed is a fraction in \(0, 1\]"):
            memory_fraction(bad, 8 * GIB)


def test_the_cap_is_applied_through_the_cuda_call():
    calls = []
    fraction = cap_gpu_memory(0.5, 1, total_bytes=16 * GIB, setter=lambda f, d: calls.append((f, d)))
    assert fraction == pytest.approx(0.5 - 0.5 / 16) and calls == [(fraction, 1)]
    assert cap_gpu_memory(1.0, total_bytes=16 * GIB, setter=lambda f, d: calls.append((f, d))) is None
    assert len(calls) == 1
    if not torch.cuda.is_available():
        assert cap_gpu_memory(0.5) is None  # no CUDA: nothing to cap, no error


def test_a_trial_caps_itself_from_its_share(monkeypatch):
    from tune import trainable

    calls = []
    monkeypatch.setattr(trainable, "cap_gpu_memory", lambda share: calls.append(share) or share - 0.01)
    gpu, cpu = TrainConfig.from_dict({"device": "cuda"}), TrainConfig.from_dict({"device": "cpu"})
    assert trainable.apply_gpu_share({"gpu_share": 0.25}, gpu) == (0.25, 0.24) and calls == [0.25]
    assert trainable.apply_gpu_share({"gpu_share": 1.0}, gpu) == (1.0, None)
    assert trainable.apply_gpu_share({"gpu_share": 0.25}, cpu) == (0.25, None)
    assert trainable.apply_gpu_share({}, gpu) == (0.0, None)  # a search planned before gpu_share existed
    assert calls == [0.25]


def test_running_out_of_the_share_names_it_and_the_flag():
    msg = gpu_oom_message(0.25, 0.2464, 80 * GIB)
    assert "share of the GPU (0.25, allocator capped at 19.71 GiB)" in msg
    assert "--gpus-per-trial (e.g. 0.5)" in msg
    assert "--gpus-per-trial (e.g. 1)" in gpu_oom_message(0.5, None, None)


@pytest.mark.gpu
def test_the_cap_holds_on_a_real_gpu():
    total = torch.cuda.get_device_properties(0).total_memory
    share = min(1.0, 2 * (CUDA_CONTEXT_RESERVE_MB * 2 ** 20 + GIB) / total)  # 3 GiB: an allocator cap of 2.5 GiB
    fraction = cap_gpu_memory(share)
    try:
        cap = fraction * total
        torch.empty(int(cap * 0.5), dtype=torch.uint8, device="cuda")  # fits
        with pytest.raises(torch.cuda.OutOfMemoryError):
            torch.empty(int(cap * 1.2), dtype=torch.uint8, device="cuda")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        torch.cuda.empty_cache()
