"""The Optuna study names what MLflow holds: before a study trial is told its value, it gets user
attributes with its MLflow run ids, its seeds and its test metrics (the mean over its seeds), so
optuna-dashboard shows, beside a trial's value, where its runs are and how it tested.

A trial of several seeds (Ray Tune's Repeater) is told once, with the mean of its seeds' values;
`SeedRecordingRepeater` keeps each seed's last result for that moment. Study user attributes
cannot change once a trial is finished, so they are written then, never after. The study also
names its objectives (optuna-dashboard's axis labels).

A race (`--race`) runs configs again on more seeds outside the searcher; `record_race` adds each
of its finished runs, once, as a trial of a study of its own, `<search>-race`, in the same file.
"""
from __future__ import annotations

import statistics
import sys
import warnings
from typing import Any

import optuna
from ray.tune.search import Repeater

from bilaw.metrics import TEST_AA_ACC, TEST_CLEAN_ACC, TEST_PGD_ACC
from tune import library_adapters

TEST_METRICS = (TEST_CLEAN_ACC, TEST_PGD_ACC, TEST_AA_ACC)
RUN_IDS_ATTR = "mlflow_run_ids"


class _Runs:
    """Where the search's MLflow child runs are (set by the driver; never pickled with a searcher)."""

    def __init__(self) -> None:
        self.tracking: Any = None
        self.metrics: list[str] = []
        self.seed_results: dict[str, dict[str, dict]] = {}  # a study trial's Ray id -> its seeds' results

    def use(self, tracking: Any, metrics: list[str]) -> None:
        self.tracking, self.metrics = tracking, list(metrics)
        self.seed_results.clear()

    def runs(self, ray_trial_ids: list[str]) -> list:
        """The MLflow child runs of these Ray trials."""
        if self.tracking is None or self.tracking.parent_run_id is None:
            return []
        from tune.tracking.queries import find_runs
        from tune.tracking.runs import PARENT_TAG

        found = []
        for trial_id in ray_trial_ids:
            runs = find_runs(self.tracking.client, [self.tracking.experiment_id],
                             {f"tags.{PARENT_TAG}": self.tracking.parent_run_id, "tags.ray_trial_id": trial_id})
            found += runs
        return found


RUNS = _Runs()


class SeedRecordingRepeater(Repeater):
    """Ray Tune's Repeater, keeping each seed's last result until its group is told to the study."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, **kwargs) -> None:
        group = library_adapters.repeater_group(self, trial_id)
        if group is not None and result:
            RUNS.seed_results.setdefault(group, {})[trial_id] = result
        super().on_trial_complete(trial_id, result=result, **kwargs)


def trial_attrs(trial_id: str, result: dict | None) -> dict[str, Any]:
    """The user attributes of the study trial Ray knows as `trial_id`, told with `result`."""
    seeds = RUNS.seed_results.pop(trial_id, None) or ({trial_id: result} if result else {})
    runs = sorted(RUNS.runs(sorted(seeds)), key=lambda r: int(r.data.params.get("seed", -1)))
    attrs: dict[str, Any] = {RUN_IDS_ATTR: [r.info.run_id for r in runs],
                             "seeds": [int(r.data.params["seed"]) for r in runs if "seed" in r.data.params]}
    for key in TEST_METRICS:
        values = [float(r[key]) for r in seeds.values() if isinstance(r.get(key), (int, float))]
        if values:
            attrs[key] = statistics.fmean(values)
    return attrs


def record(trial: Any, trial_id: str, result: dict | None) -> None:
    """Set `trial_attrs` on the Optuna trial (before it is told); a failure only warns."""
    try:
        if RUNS.metrics and trial.study.metric_names is None:
            with warnings.catch_warnings():  # experimental in the pinned Optuna, and a label only
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                trial.study.set_metric_names(RUNS.metrics)
        for key, value in trial_attrs(trial_id, result).items():
            trial.set_user_attr(key, value)
    except Exception as exc:  # noqa: BLE001 - the study's value matters more than its notes
        print(f"warning: could not note trial {trial_id}'s runs in the Optuna study: {exc}", file=sys.stderr)


RACE_SUFFIX = "-race"


def _param_value(text: str, dist: Any) -> Any:
    """An MLflow param (a string) as the value `dist` holds, or None where it holds none such."""
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return next((c for c in dist.choices if str(c) == text), None)
    try:
        value = int(text) if isinstance(dist, optuna.distributions.IntDistribution) else float(text)
    except ValueError:
        return None
    return value if dist.low <= value <= dist.high else None


def record_race(storage_url: str, study_name: str, runs: list, metric: str, direction: str) -> int:
    """Add each finished race run not yet recorded as a trial of the study `<study_name>-race`:
    its searched params (the search study's distributions), its `metric` as value, and user
    attributes like a search trial's plus its round. Return how many were added."""
    storage = optuna.storages.RDBStorage(storage_url)
    dists: dict[str, Any] = {}
    for t in optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False):
        dists.update(t.distributions)
    race = optuna.create_study(study_name=study_name + RACE_SUFFIX, storage=storage, direction=direction,
                               load_if_exists=True)
    if race.metric_names is None:
        race.set_metric_names([metric])
    known = {run_id for t in race.get_trials(deepcopy=False) for run_id in t.user_attrs.get(RUN_IDS_ATTR, [])}
    added = 0
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):
        if run.info.status != "FINISHED" or run.info.run_id in known or metric not in run.data.metrics:
            continue
        params = {k: v for k, v in ((k, _param_value(run.data.params[k], d)) for k, d in dists.items()
                                    if k in run.data.params) if v is not None}
        attrs = {RUN_IDS_ATTR: [run.info.run_id], "seeds": [int(run.data.params.get("seed", -1))],
                 "race_round": run.data.tags.get("race_round", "?"),
                 **{k: run.data.metrics[k] for k in TEST_METRICS if k in run.data.metrics}}
        race.add_trial(optuna.trial.create_trial(params=params, distributions={k: dists[k] for k in params},
                                                 value=run.data.metrics[metric], user_attrs=attrs))
        added += 1
    return added
