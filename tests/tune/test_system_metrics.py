"""Trials' system metrics: machine-wide samples averaged per epoch under MLflow's names."""
from __future__ import annotations

import time

import psutil
import pytest

from tune.system_metrics import SystemSampler, sample

KEYS = {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
        "system/system_memory_usage_percentage"}


def test_one_sample_reads_the_machine():
    one = sample()
    assert KEYS <= set(one)
    assert 0.0 <= one["system/cpu_utilization_percentage"] <= 100.0
    total_mb = psutil.virtual_memory().total / 2 ** 20
    assert 0.0 < one["system/system_memory_usage_megabytes"] < total_mb
    assert one["system/system_memory_usage_percentage"] == pytest.approx(
        100 * one["system/system_memory_usage_megabytes"] / total_mb, abs=5.0)


def test_the_sampler_averages_what_it_sampled_since_the_last_take():
    sampler = SystemSampler(interval_s=0.05)
    try:
        time.sleep(0.4)
        with sampler.lock:
            seen = list(sampler.samples)
        assert len(seen) >= 3
        means = sampler.take()
        assert set(means) >= KEYS
        assert KEYS <= set(sampler.take())  # nothing sampled since: one reading at once
    finally:
        sampler.stop()
    assert not sampler.thread.is_alive()
    # the mean, key by key, of exactly the samples taken (a GPU key only some samples have counts
    # over those), and the list starts again empty
    sampler.samples = [{"a": 1.0, "gpu": 10.0}, {"a": 3.0}, {"a": 8.0, "gpu": 20.0}]
    assert sampler.take() == {"a": 4.0, "gpu": 15.0} and sampler.samples == []


def test_a_bad_interval_stops_the_search_before_ray(tmp_path, capsys, monkeypatch):
    from tune.run_search import main

    monkeypatch.chdir(tmp_path)
    assert main(["--space", "ablation_capacity", "--system-metrics-interval", "0"]) == 2
    assert "--system-metrics-interval 0: must be > 0 seconds (--no-system-metrics turns them off)" in \
        capsys.readouterr().err
