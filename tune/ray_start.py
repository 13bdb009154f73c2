"""The search's Ray: a local one of the driver's own, started with the trials' environment and
stopped at once, or the cluster --address names, joined; opened beside the MLflow store."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray

from tune import library_adapters as adapters
from tune.plan import Plan
from tune.stopping import STOP
from tune.system_metrics import INTERVAL_ENV
from tune.tracking.runs import SearchTracking
from tune.worker_exit import worker_runtime_env

LOCAL_RAY = "local"  # ray.init's address for a new Ray of this driver's own

# Ray settings for a local Ray of the driver's own (a value the user set in the environment wins).
# Ray starts one idle worker per CPU when the driver connects, for later tasks; Ray Tune starts
# each trial's actor with a runtime environment of its own (its env_vars), which such a worker
# never matches, so they were two to eight processes per search that never ran a trial, starting
# up beside the first trials' workers.
LOCAL_RAY_ENV = {"RAY_prestart_worker_first_driver": "0", "RAY_enable_worker_prestart": "0"}


def ray_address(plan: Plan) -> str:
    """The cluster --address names, else a new local Ray. Never what ray.init would find on its own
    (RAY_ADDRESS, or the cluster file in Ray's temp folder): that file outlives a killed head and
    then names a dead address, and a live cluster there belongs to someone else."""
    return plan.options.address or LOCAL_RAY


def start_ray(plan: Plan) -> tuple[float, str]:
    """Start Ray, or join the --address cluster, with the trials' environment; return the GPUs
    the cluster has and the Ray session's folder (the driver's record names it)."""
    # trials get no tracking URI: the driver writes MLflow
    env = {"RAY_AIR_NEW_OUTPUT": "0", INTERVAL_ENV: str(plan.system_metrics_interval_s)}
    kwargs: dict[str, Any] = dict(include_dashboard=False, runtime_env=worker_runtime_env(env),
                                  log_to_driver=True, configure_logging=True, logging_level="WARNING")
    address = ray_address(plan)
    if address == LOCAL_RAY:  # a joined cluster keeps its own object store (Ray refuses the option)
        kwargs["object_store_memory"] = 256 * 1024 ** 2
        for key, value in LOCAL_RAY_ENV.items():  # read by the raylet this driver starts
            os.environ.setdefault(key, value)
    with STOP.ray_starting(local=address == LOCAL_RAY):
        context = ray.init(address=address, **kwargs)
    return float(ray.cluster_resources().get("GPU", 0.0)), context.address_info["session_dir"]


def start_ray_and_tracking(plan: Plan) -> tuple[SearchTracking, float, str]:
    """A new search's Ray and MLflow store, opened side by side: Ray's start is mostly waiting for
    its processes, and a new SQLite store spends about as long making its tables. A store that
    fails to open stops Ray again."""
    def open_tracking() -> SearchTracking:
        STOP.keep_signals_off_this_thread()
        return SearchTracking(plan.tracking_uri, plan.experiment)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="open-tracking") as pool:
        pending = pool.submit(open_tracking)
        available, session_dir = start_ray(plan)  # a failed start waits for the store, then raises
        try:
            tracking = pending.result()
        except BaseException:
            adapters.shut_down_ray_at_once()
            raise
    return tracking, available, session_dir
