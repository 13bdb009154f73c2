"""The one module of tune/ that reaches past the public API of the pinned libraries (ray, optuna
and mlflow, pinned in pyproject.toml), for what that API lacks; every other module uses only
their public names (tests/tune/test_library_adapters.py checks that, and each reader here on the
pinned versions).

A reader takes one private attribute and raises `LibraryChanged`, naming the installed version,
where the attribute is gone or holds something else: never a default that would quietly drop
what the search relies on (a study entry, a concurrency limit). Nothing here imports Ray, Optuna
or MLflow at import time: `run_search.py` checks its inputs before any of them is loaded."""
from __future__ import annotations

import functools
from importlib import metadata
from typing import Any

# The versions this module was written against (pyproject.toml pins the same).
PINNED = {"ray": "2.60.0", "optuna": "5.0.0", "mlflow": "3.17.2"}

# Ray's loggers that write a traceback when a write to the storage fails (tune/disk_full.py
# filters them). Logger names, not imports: Ray names them after its internal modules.
RAY_STORAGE_LOGGERS = ("ray.train._internal.syncer", "ray.train._internal.storage",
                       "ray.tune.execution.tune_controller", "ray.tune.execution.experiment_state")
# Ray's logger that writes a line per reported epoch in a trial (tune/trainable.py quiets it).
RAY_TRIAL_STORAGE_LOGGER = "ray.train._internal.storage"


class LibraryChanged(RuntimeError):
    """A private attribute this module reads is missing or different in the installed library."""


def installed_version(library: str) -> str:
    """The installed version of `library` ("not installed" when it is absent)."""
    try:
        return metadata.version(library)
    except metadata.PackageNotFoundError:
        return "not installed"


def _private(obj: Any, name: str, library: str, kind: type | tuple[type, ...] | None = None) -> Any:
    """`obj.name`, a private attribute of `library`'s; LibraryChanged where it is not there or not a `kind`."""
    owner = obj.__name__ if isinstance(obj, type) else type(obj).__name__
    try:
        value = getattr(obj, name)
    except AttributeError:
        problem = "has no attribute"
    else:
        if kind is None or isinstance(value, kind):
            return value
        problem = f"holds a {type(value).__name__}, not what tune expects, in attribute"
    raise LibraryChanged(
        f"{library} {installed_version(library)}: {owner} {problem} {name!r}, which tune/library_adapters.py "
        f"reads (written for {library} {PINNED[library]}, whose public API lacks it); install "
        f"{library}=={PINNED[library]} as pyproject.toml pins it, or update the adapter for this version")


# -- Ray Tune's OptunaSearch ---------------------------------------------------------------------
def optuna_search_trials(searcher: Any) -> dict[str, Any]:
    """Ray trial id -> the Optuna trial a Ray OptunaSearch asked its study for: the searcher's
    own dict. The study records a trial's runs before it is told (tune/search.py)."""
    return _private(searcher, "_ot_trials", "ray", dict)


def optuna_search_study(searcher: Any) -> Any:
    """The Optuna study a Ray OptunaSearch tells (tune/search.py tells it PRUNED trials itself)."""
    import optuna

    return _private(searcher, "_ot_study", "ray", optuna.Study)


def optuna_search_told(searcher: Any) -> set[str]:
    """The Ray trial ids a Ray OptunaSearch has told its study: the searcher's own set, so adding
    an id makes it ignore that trial's results, and discarding one makes it tell the study again."""
    return _private(searcher, "_completed_trials", "ray", set)


# -- Ray Tune's search wrappers and Tuner --------------------------------------------------------
def limiter_is_limiting(limiter: Any) -> bool:
    """Whether a Ray ConcurrencyLimiter keeps its own set of live trials (False where the searcher
    it wraps took the limit itself)."""
    return _private(limiter, "_limit_concurrency", "ray", bool)


def repeater_group(repeater: Any, trial_id: str) -> str | None:
    """The first Ray trial id of the seed group a Ray Repeater put `trial_id` in (the trial its
    searcher knows the group by), or None where the trial is not one of its own."""
    group = _private(repeater, "_trial_id_to_group", "ray", dict).get(trial_id)
    return None if group is None else _private(group, "primary_trial_id", "ray", str)


def _local_tuner(tuner: Any) -> Any:
    """The TunerInternal a ray.tune.Tuner runs in this process, or None under Ray Client (where
    it runs in a remote actor, out of reach)."""
    attrs = vars(tuner)
    if "_local_tuner" not in attrs and "_remote_tuner" in attrs:
        return None
    return _private(tuner, "_local_tuner", "ray")


def tuner_search_alg(tuner: Any) -> Any:
    """The search algorithm of a Tuner (a restored one's comes from Ray's snapshot), or None
    under Ray Client. Ray's Tuner has no public getter of its TuneConfig."""
    local = _local_tuner(tuner)
    return None if local is None else _private(local, "_tune_config", "ray").search_alg


def tuner_run_config(tuner: Any) -> Any:
    """The RunConfig of a Tuner (a restored one's comes from Ray's snapshot, its callbacks
    too), or None under Ray Client."""
    local = _local_tuner(tuner)
    return None if local is None else _private(local, "get_run_config", "ray")()


# -- Ray Tune's progress reporter ------------------------------------------------------------------
@functools.cache
def best_trial_reporter() -> type:
    """Ray Tune's CLIReporter with a public hook on its current-best-trial line: a subclass
    overrides `best_trial_view(trial, metric)`, which gets Ray's own pick of the best trial (never
    None) and returns the (trial, metric) the line shows; `parameter_columns` names the
    parameter columns. Ray has neither in public (CLIReporter._current_best_trial and
    CLIReporter._parameter_columns). A function, so that Ray is imported only when it is called."""
    from ray.tune import CLIReporter

    _private(CLIReporter, "_current_best_trial", "ray")  # checked when the class is made, not at a first report

    class BestTrialReporter(CLIReporter):
        @property
        def parameter_columns(self) -> list[str]:
            return list(_private(self, "_parameter_columns", "ray", (list, dict)))

        def best_trial_view(self, trial: Any, metric: str) -> tuple[Any, str]:
            return trial, metric

        def _current_best_trial(self, trials):
            trial, metric = super()._current_best_trial(trials)
            return (None, metric) if trial is None else self.best_trial_view(trial, metric)

    return BestTrialReporter


# -- Ray's shutdown --------------------------------------------------------------------------------
def shut_down_ray_at_once() -> None:
    """`ray.shutdown()`, where a local Ray's processes are killed at once instead of each being
    sent SIGTERM and given a second to exit. A search starts its local Ray with SIGTERM blocked
    (tune/stopping.py), so that second is always spent waiting and SIGKILL follows anyway: five
    processes, five seconds at every search's end. What the raylet started (its agents, the
    workers) is killed with it: an agent whose raylet dies first reports that to Ray's GCS, and
    with the GCS killed at once too it would wait on it for minutes. A joined cluster's driver
    owns no processes and only disconnects, as before. Ray's `shutdown` takes no such option;
    the head node's `kill_all_processes` is called with `allow_graceful=False` here."""
    import psutil
    import ray
    from ray._private import worker

    node = _private(worker, "_global_node", "ray")
    started: list[psutil.Process] = []
    if node is not None and node.is_head():
        processes = _private(node, "all_processes", "ray", dict)
        for info in processes.get("raylet", []):
            try:
                started += psutil.Process(info.process.pid).children(recursive=True)
            except psutil.Error:  # the raylet is gone already
                pass
        kill_all = _private(node, "kill_all_processes", "ray")
        node.kill_all_processes = functools.partial(_kill_ungracefully, kill_all)
    ray.shutdown()
    for process in started:
        try:
            process.kill()  # psutil checks the pid still names the process it listed
        except psutil.Error:
            pass


def _kill_ungracefully(kill_all: Any, **kwargs: Any) -> Any:
    return kill_all(**{**kwargs, "allow_graceful": False})
