"""A search's own local Ray: started without idle workers, stopped at once."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tune.plan import Plan, SearchOptions


def _workers(raylet_pid: int) -> list[psutil.Process]:
    """The raylet's worker processes: Ray titles each "ray::IDLE" or "ray::<what it runs>", and
    its agents "ray::<Name>Agent"."""
    out = []
    for p in psutil.Process(raylet_pid).children(recursive=True):
        try:
            title = " ".join(p.cmdline())
            if "default_worker.py" in title or (title.startswith("ray::") and not title.split()[0].endswith("Agent")):
                out.append(p)
        except psutil.Error:
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow  # about 10 s: a Ray of its own starts and stops
def test_a_searchs_ray_starts_no_idle_worker_and_stops_without_a_grace_period(monkeypatch, tmp_path):
    """start_ray: no worker before a trial asks for one (Ray's prestarted workers never match a
    trial's runtime environment). shut_down_ray_at_once: every process of that Ray ends (the
    raylet's agents and workers too), each killed outright, never sent the SIGTERM it blocks
    (tune/stopping.py) and waited on."""
    import ray
    from ray._private import worker

    from tune import library_adapters as adapters
    from tune.ray_start import LOCAL_RAY_ENV, start_ray

    folder = Path(tempfile.mkdtemp(prefix="raytest-", dir="/tmp"))
    monkeypatch.setenv("RAY_TMPDIR", str(folder))
    for key in LOCAL_RAY_ENV:
        monkeypatch.delenv(key, raising=False)
    plan = Plan.build(SearchOptions(space="wmmr", workload="smoke", storage_path=str(tmp_path / "ray_results"),
                                    tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}"))
    terminated = []
    real_terminate = subprocess.Popen.terminate
    monkeypatch.setattr(subprocess.Popen, "terminate", lambda self: (terminated.append(self.pid), real_terminate(self)))
    try:
        start_ray(plan)
        node = worker._global_node
        pids = [info.process.pid for infos in node.all_processes.values() for info in infos]
        raylet = node.all_processes["raylet"][0].process.pid
        time.sleep(3.0)  # Ray prestarts within about a second of the driver's connection
        assert _workers(raylet) == []

        @ray.remote
        def pid() -> int:
            import os

            return os.getpid()

        task_worker = ray.get(pid.remote())  # a worker does start when work asks for one
        assert task_worker in [p.pid for p in _workers(raylet)]
        started = [p.pid for p in psutil.Process(raylet).children(recursive=True)]  # agents and workers
        assert task_worker in started and len(started) > len(_workers(raylet))
        adapters.shut_down_ray_at_once()
        assert terminated == []
        assert not [p for p in pids if _alive(p)]  # each reaped before shutdown returns
        deadline = time.monotonic() + 2.0  # killed, not waited for: gone once the kernel has ended them
        while [p for p in started if _alive(p)] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in started if _alive(p)]
    finally:
        ray.shutdown()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow  # about 6 s: a Ray of its own starts and stops
def test_a_store_that_fails_to_open_beside_rays_start_stops_that_ray(monkeypatch, tmp_path):
    """The MLflow store opens in a thread while Ray starts; the stop signals never reach the
    driver through that thread, and its failure is the search's error, with Ray stopped again."""
    import signal

    import ray

    from tune import ray_start

    folder = Path(tempfile.mkdtemp(prefix="raytest-", dir="/tmp"))
    monkeypatch.setenv("RAY_TMPDIR", str(folder))
    plan = Plan.build(SearchOptions(space="wmmr", workload="smoke", storage_path=str(tmp_path / "ray_results"),
                                    tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}"))
    seen = {}

    def failing_store(uri: str, experiment: str):
        seen["blocked"] = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        raise RuntimeError(f"store {uri} refused {experiment}")

    monkeypatch.setattr(ray_start, "SearchTracking", failing_store)
    try:
        with pytest.raises(RuntimeError, match="refused wmmr"):
            ray_start.start_ray_and_tracking(plan)
        assert not ray.is_initialized()
        assert {signal.SIGTERM, signal.SIGHUP, signal.SIGINT} <= seen["blocked"]
        assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # the main thread's own: unchanged
    finally:
        ray.shutdown()
        shutil.rmtree(folder, ignore_errors=True)
