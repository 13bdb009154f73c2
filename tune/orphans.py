"""What a stopped or killed driver leaves open in the stores, closed so that nothing stays
"running" forever and nothing half-done reads as a result.

- MLflow: a run of the search still RUNNING while no driver runs it (the driver was SIGKILLed,
  its node was lost, a race round was killed) is ended KILLED, tagged KILLED_TAG with why. A
  resumed trial re-opens its own run (found by its Ray trial id) and finishes it; `clear_closed_tag`
  then takes the tag off the runs that finished after all. A graceful stop (signal, time budget)
  ends the running runs KILLED the same way, naming what stopped it.
- Optuna: a graceful stop leaves the study's running trials WAITING (Optuna has no "paused"
  state), tagged with the user attribute INTERRUPTED_ATTR; `--resume` puts them back to RUNNING
  before Ray Tune continues them, so they finish as the same study trials. A WAITING trial
  without that attribute is Optuna's own (an enqueued first trial) and is left alone.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

KILLED_TAG = "killed_because"     # why a run was ended KILLED by this module
INTERRUPTED_ATTR = "interrupted_by"  # study trial user attribute: what stopped it (SIGTERM, ...)
PARENT_TAG = "mlflow.parentRunId"


def _children(client: Any, experiment_id: str, parent_run_id: str) -> list:
    from tune.tracking.runs import find_runs

    return find_runs(client, [experiment_id], {f"tags.{PARENT_TAG}": parent_run_id})


def _running_children(client: Any, experiment_id: str, parent_run_id: str) -> list:
    return [r for r in _children(client, experiment_id, parent_run_id) if r.info.status == "RUNNING"]


def close_running_runs(client: Any, experiment_id: str, parent_run_id: str, why: str, parent: bool = False) -> int:
    """End every RUNNING child run of `parent_run_id` as KILLED, tagged KILLED_TAG = `why`; with
    `parent`, the parent too when it is RUNNING (or was just ended KILLED without saying why).
    Returns how many child runs it closed."""
    closed = 0
    for run in _running_children(client, experiment_id, parent_run_id):
        client.set_tag(run.info.run_id, KILLED_TAG, why)
        client.set_terminated(run.info.run_id, "KILLED")
        closed += 1
    if parent:
        run = client.get_run(parent_run_id)
        if run.info.status in ("RUNNING", "KILLED") and KILLED_TAG not in run.data.tags:
            client.set_tag(parent_run_id, KILLED_TAG, why)
        if run.info.status == "RUNNING":
            client.set_terminated(parent_run_id, "KILLED")
    return closed


def clear_closed_tag(client: Any, experiment_id: str, parent_run_id: str) -> None:
    """Take KILLED_TAG off the runs that were closed but then resumed and ended otherwise."""
    for run in [*_children(client, experiment_id, parent_run_id), client.get_run(parent_run_id)]:
        if KILLED_TAG in run.data.tags and run.info.status != "KILLED":
            client.delete_tag(run.info.run_id, KILLED_TAG)


def orphan_reason(what: str) -> str:
    return f"{what} (closed {time.strftime('%Y-%m-%d %H:%M:%S')})"


def close_orphans_in_experiment(uri: str, experiment: str) -> tuple[int, list[str]]:
    """For readers (report.py): end KILLED every run of the experiment's searches still RUNNING
    while no driver runs that search (tune/search_lock.py's holder_state of the state folder its
    parent run names). Returns how many runs it closed and notes on searches it could not judge."""
    from mlflow.tracking import MlflowClient

    from tune.search_lock import holder_state

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return 0, []
    from tune.tracking.runs import find_runs

    running = find_runs(client, [exp.experiment_id], {"attributes.status": "RUNNING"})
    parent_ids = {r.data.tags.get(PARENT_TAG) or r.info.run_id for r in running}
    closed, notes = 0, []
    for parent_id in sorted(parent_ids):
        parent = client.get_run(parent_id)
        folder = parent.data.tags.get("state_dir")
        if not folder:
            continue  # not a search's parent (a re-run's own runs)
        state = holder_state(Path(folder))
        if state == "running":
            continue
        if state != "none":
            notes.append(f"search {parent.info.run_name!r} has runs marked RUNNING; its state folder {folder} "
                         f"{'is on another host' if state == 'other host' else 'is not readable here'}, so "
                         f"whether its driver still runs cannot be told: they are left as they are")
            continue
        why = orphan_reason("its driver was gone: killed, or its node lost; closed by report.py")
        closed += close_running_runs(client, exp.experiment_id, parent_id, why, parent=True)
    return closed, notes


# -- the Optuna study ---------------------------------------------------------------------------
def _storage(db: Path):
    import optuna

    return optuna.storages.RDBStorage(f"sqlite:///{db}")


def _study_trials(db: Path, study_name: str):
    """The study's storage, its id there, and its trials."""
    storage = _storage(db)
    study_id = storage.get_study_id_from_name(study_name)
    return storage, study_id, storage.get_all_trials(study_id, deepcopy=False)


def set_running_trials_aside(db: Path, study_name: str, why: str) -> int:
    """RUNNING study trials -> WAITING with INTERRUPTED_ATTR = `why`; returns how many."""
    import optuna

    if not Path(db).exists():
        return 0
    storage, study_id, trials = _study_trials(db, study_name)
    moved = 0
    for t in trials:
        if t.state == optuna.trial.TrialState.RUNNING:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            storage.set_trial_user_attr(trial_id, INTERRUPTED_ATTR, why)
            storage.set_trial_state_values(trial_id, optuna.trial.TrialState.WAITING)
            moved += 1
    return moved


def take_trials_back(db: Path, study_name: str) -> int:
    """Before a resume: the trials `set_running_trials_aside` left WAITING -> RUNNING again, so
    the restored searcher tells them their results; returns how many."""
    import optuna

    if not Path(db).exists():
        return 0
    storage, study_id, trials = _study_trials(db, study_name)
    back = 0
    for t in trials:
        if t.state == optuna.trial.TrialState.WAITING and INTERRUPTED_ATTR in t.user_attrs:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            storage.set_trial_state_values(trial_id, optuna.trial.TrialState.RUNNING)
            back += 1
    return back
