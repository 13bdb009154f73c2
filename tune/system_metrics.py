"""Machine-wide system metrics sampled in a trial's process while it trains, reported with each
epoch's results so the driver logs them to the trial's MLflow run (trials never talk to MLflow).

Every `interval_s` seconds a background thread samples the CPU utilisation, the memory in use
and, where NVIDIA's management library (`nvidia-ml-py`, the `gpu` extra) finds GPUs, each GPU's
utilisation and memory. An epoch's report carries the mean of its samples under MLflow's own
system-metric names (`system/...`), which its UI shows in the run's "System metrics" tab. The
figures are the whole machine's, not the trial's alone: trials packed on one machine see the
same numbers.
"""
from __future__ import annotations

import os
import threading
from typing import Any

DEFAULT_INTERVAL_S = 2.0
# The sampling interval reaches the trials through their workers' environment, not their config,
# so a resumed search may change it (trials restored by Ray keep the config they started with).
INTERVAL_ENV = "BILAW_SYSTEM_METRICS_INTERVAL_S"


def trial_interval_s() -> float:
    """The interval a trial samples at (0: none), as its search's driver set it."""
    return float(os.environ.get(INTERVAL_ENV, "0") or 0)


def _gpu_handles() -> list[Any]:
    try:
        import pynvml

        pynvml.nvmlInit()
        return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # no library, no driver, no GPU: CPU and memory only
        return []


def sample(gpus: list[Any] | None = None) -> dict[str, float]:
    """One sample of the machine: CPU %, memory used (MB and %), and per GPU utilisation % and memory MB."""
    import psutil

    mem = psutil.virtual_memory()
    out = {"system/cpu_utilization_percentage": psutil.cpu_percent(interval=None),
           "system/system_memory_usage_megabytes": (mem.total - mem.available) / 2 ** 20,
           "system/system_memory_usage_percentage": mem.percent}
    for i, handle in enumerate(gpus or []):
        import pynvml

        out[f"system/gpu_{i}_utilization_percentage"] = float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        out[f"system/gpu_{i}_memory_usage_megabytes"] = pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2 ** 20
    return out


class SystemSampler:
    """Samples every `interval_s` seconds on a daemon thread; `take()` returns the means since
    the last call (the first sample comes at once, so even a short epoch gets one)."""

    def __init__(self, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        import psutil

        psutil.cpu_percent(interval=None)  # starts the CPU counter: the first reading is since now
        self.interval_s = interval_s
        self.gpus = _gpu_handles()
        self.samples: list[dict[str, float]] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="system-metrics", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            try:
                one = sample(self.gpus)
            except Exception:  # a failed reading is skipped, never the end of the trial
                continue
            with self.lock:
                self.samples.append(one)

    def take(self) -> dict[str, float]:
        with self.lock:
            samples, self.samples = self.samples, []
        if not samples:
            samples = [sample(self.gpus)]
        keys = set().union(*samples)
        return {k: sum(s[k] for s in samples if k in s) / sum(k in s for s in samples) for k in sorted(keys)}

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
