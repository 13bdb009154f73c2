"""The checks of a search's stores before Ray starts (`check_search_stores`, which run_search.py
calls): MLflow's and Optuna's SQLite files whole and of the right kind, a --resume's state folder
holding its study (else: where MLflow says the search kept it), and Ray Tune's experiment files
whole (a full disk cuts them short; `restore_cut_ray_files` puts back the driver's own copies).
Each failure is one error naming the file, what is intact and how to go on."""
from __future__ import annotations

import json
import os
import pickletools
import shlex
from pathlib import Path

from bilaw.file_errors import DamagedFileError, MissingFileError
from tune.plan import Plan
from tune.sqlite_files import MLFLOW_TABLES, OPTUNA_TABLES, count_rows, sqlite_path, sqlite_problem
from tune.state_files import OPTUNA_DB, read_driver_record
from tune.tracking.runs import PARENT_TAG, client_for, redact_uri


def _trial_folders(plan: Plan) -> str:
    """The search's trial folders, as the intact part of a damaged-store message."""
    if plan.storage is None:
        return f"the trial folders in {plan.experiment_path}"
    folder = plan.storage / plan.experiment
    count = sum(1 for p in folder.glob("trial_*") if p.is_dir()) if folder.is_dir() else 0
    return f"the {count} trial folders in {folder} (each trial's results and checkpoints)"


def _study(db: Path, experiment: str) -> str:
    count = count_rows(db, "select count(*) from trials t join studies s on t.study_id = s.study_id "
                            "where s.study_name = ?", (experiment,))
    return f"the Optuna study {db}" + (f" ({count} trials)" if count is not None else "")


def _tracking(db: Path, experiment: str) -> str:
    count = count_rows(db, "select count(*) from runs r join experiments e on r.experiment_id = e.experiment_id "
                            "where e.name = ?", (experiment,))
    return f"the MLflow database {db}" + (f" ({count} runs of experiment {experiment!r})" if count is not None else "")


def check_search_stores(plan: Plan) -> None:
    """Before Ray starts (and before anything is written): the search's MLflow SQLite database
    and, on --resume, its Optuna study are whole SQLite files of the right kind. A damaged one
    stops the search with a DamagedFileError naming the file, what is wrong, what is intact (the
    trial folders and the other store) and how to go on, instead of SQLite's traceback from deep
    inside MLflow or Optuna. A --resume whose state folder holds no study is a MissingFileError
    naming --state-dir and the folder the search used, where MLflow recorded it; Ray Tune's experiment
    files cut short by a full disk are put back whole (`restore_cut_ray_files`, the one write
    here). A tracking server, or a tracking database not created yet, is not checked here."""
    tracking_db = sqlite_path(plan.tracking_uri)
    study_db = Path(plan.state_dir) / OPTUNA_DB
    resume = plan.options.resume
    if tracking_db is not None and tracking_db.is_file() and tracking_db.stat().st_size > 0:  # MLflow fills an empty one
        problem = sqlite_problem(tracking_db, MLFLOW_TABLES)
        if problem:
            intact = [_trial_folders(plan)] + ([_study(study_db, plan.experiment)] if study_db.exists() else [])
            kept = (f"Intact: {' and '.join(intact)}; only MLflow's records (runs, params, metrics) are in the "
                    f"damaged file" if resume else "Nothing of this search is in it yet")
            raise DamagedFileError(
                tracking_db, f"the MLflow tracking database cannot be used: {problem}. {kept}",
                f"put back a copy of {tracking_db} from a backup and run the same command again, or log to a new "
                f"database (--tracking-uri sqlite:///NEW.db"
                + (" with --experiment NEW_NAME: a new search, since a resume needs its first run's records)"
                   if resume else ")"))
    if resume and not study_db.exists():
        raise _no_study_here(plan, study_db)
    if resume:
        note = restore_cut_ray_files(plan)
        if note:
            print(f"note: {note}", flush=True)
    if resume:
        problem = sqlite_problem(study_db, OPTUNA_TABLES)
        if problem:
            intact = [_trial_folders(plan)] + ([_tracking(tracking_db, plan.experiment)]
                                               if tracking_db is not None and tracking_db.exists() else [])
            raise DamagedFileError(
                study_db, f"the search's Optuna study cannot be used: {problem}. Intact: {' and '.join(intact)}; "
                          f"only the sampler's record of the trials is in the damaged file",
                f"put back a copy of {study_db} from a backup and run the same command again; or start a new "
                f"search with --experiment NEW_NAME (the finished trials stay in MLflow: python tune/report.py "
                f"--experiment {plan.experiment} --trials lists them)")


def _no_study_here(plan: Plan, study_db: Path) -> MissingFileError:
    """The error of a --resume whose state folder holds no Optuna study: it names --state-dir and,
    where the tracking store recorded it, the state folder (and the trials' folder) the search
    used. A right folder that lost its study is told apart from a wrong folder."""
    given = (f"--state-dir {plan.options.state_dir}" if plan.options.state_dir
             else "the default state folder (no --state-dir given)")
    problem = f"the file does not exist: --resume finds no Optuna study in {given}"
    places = recorded_search_places(plan.tracking_uri, plan.experiment)
    mine = [p for p in places if p["ray_experiment_path"] == plan.experiment_path] or places
    elsewhere = [p for p in mine if Path(p["state_dir"]) != Path(plan.state_dir)]
    if mine and not elsewhere:  # the search kept its state here, and the study is gone
        return MissingFileError(study_db, f"{problem}, though it is the state folder the search used (MLflow run "
                                          f"{mine[0]['run_id']}): its study was deleted or moved",
                                f"put back a copy of it from a backup and run the same command again, or start a new "
                                f"search with --experiment NEW_NAME (the finished trials stay in MLflow and in "
                                f"{plan.experiment_path})")
    if elsewhere:
        options = []
        for place in elsewhere[:3]:
            option = f"--state-dir {shlex.quote(place['state_dir'])}"
            trials = place["ray_experiment_path"]
            if trials and trials != plan.experiment_path and "://" not in trials:
                option += f" --storage-path {shlex.quote(str(Path(trials).parent))}"
            options.append(option)
        return MissingFileError(study_db, f"{problem}. MLflow ({redact_uri(plan.tracking_uri)}) records that the "
                                          f"search {plan.experiment!r} kept its state in "
                                          f"{' or '.join(p['state_dir'] for p in elsewhere[:3])}",
                                f"run the same command with {'; or with '.join(options)}")
    return MissingFileError(study_db, f"{problem}, and {redact_uri(plan.tracking_uri)} records no search "
                                      f"{plan.experiment!r} that says where its state was",
                            "pass the --state-dir the search used (the folder holding its optuna.db, printed as "
                            "'search state:' when it started; by default the experiment's folder in --storage-path) "
                            "and the --tracking-uri it used")


def recorded_search_places(uri: str, experiment: str) -> list[dict[str, str]]:
    """Where the searches of `experiment` in the tracking store kept their files, newest first:
    each parent run's `ray_experiment_path` (the trials' results) and `state_dir` (the Optuna
    study and the driver's files), as `search.parent_tags` recorded them. For advice only: [] when
    the store is a SQLite file that does not exist (it is not created here), holds no such
    experiment or cannot be read."""
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        return []
    try:
        client = client_for(uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return []
        runs = client.search_runs([exp.experiment_id], filter_string="tags.`state_dir` LIKE '%'", max_results=1000,
                                  order_by=["attributes.start_time DESC"])
    except Exception:  # noqa: BLE001 - the advice is left out, never the reason to fail
        return []
    places = []
    for run in runs:
        place = {"ray_experiment_path": run.data.tags.get("ray_experiment_path", ""),
                 "state_dir": run.data.tags["state_dir"], "run_id": run.info.run_id}
        seen = {(p["ray_experiment_path"], p["state_dir"]) for p in places}
        if PARENT_TAG not in run.data.tags and (place["ray_experiment_path"], place["state_dir"]) not in seen:
            places.append(place)
    return places


# Ray Tune's own files of an experiment, rewritten after every result; the newest set is read at --resume.
RAY_EXPERIMENT_FILES = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl")


def _whole(data: bytes) -> bool:
    """Whether one of Ray Tune's experiment files is whole: a pickle (these start with its
    protocol byte, 0x80) read to its STOP opcode without loading anything, else JSON that parses."""
    try:
        if data[:1] == b"\x80":
            for _ in pickletools.genops(data):
                pass
        else:
            json.loads(data)
    except Exception:  # noqa: BLE001 - any decoder error means: not whole
        return False
    return bool(data)


def restore_cut_ray_files(plan: Plan) -> str | None:
    """On --resume, before Ray starts: Ray Tune's experiment files in the storage, whole. Ray writes
    each in the driver's session folder, then copies it to the storage; a full disk cuts that
    copy short, and Ray, finding its newest experiment state unreadable at --resume, logs an error
    and starts the search over from nothing (measured: a 4-trial search resumed as 1 new trial).
    A cut storage copy is replaced (atomically) with the driver's own copy, named by driver.json's
    Ray session, when that one is whole; returns a note naming them, or None when all are whole.
    Without a whole copy, a DamagedFileError says what is intact and how to go on. Storage that is
    a URI is Ray's to check."""
    if plan.storage is None:
        return None
    folder = plan.storage / plan.experiment
    states = sorted(folder.glob("experiment_state-*.json"))
    if not states:
        return None
    stamp = states[-1].name[len("experiment_state-"):-len(".json")]  # Ray reads the newest set
    cut = [path for pattern in RAY_EXPERIMENT_FILES
           for path in folder.glob(pattern.replace("*", stamp)) if not _whole(path.read_bytes())]
    if not cut:
        return None
    record = read_driver_record(plan.state_dir) or {}
    session = Path(record.get("session_dir") or "/nonexistent")
    restored = []
    for path in cut:
        copies = [c for c in session.glob(f"artifacts/*/{plan.experiment}/driver_artifacts/{path.name}")
                  if _whole(c.read_bytes())]
        if not copies:
            raise DamagedFileError(
                path, f"Ray Tune's experiment file is cut short or damaged (a full disk or a kill stopped its last "
                      f"copy to the storage), and the driver's own copy is not in its Ray session folder "
                      f"({session}); Ray would start the search over from nothing. Intact: "
                      f"{_trial_folders(plan)}, the Optuna study and the MLflow runs",
                f"put back a copy of {path} from a backup and run the same command again, or start a new search "
                f"with --experiment NEW_NAME (the finished trials stay in MLflow: python tune/report.py "
                f"--experiment {plan.experiment} --trials lists them)")
        tmp = path.with_name(f".{path.name}.restoring")
        tmp.write_bytes(copies[0].read_bytes())
        os.replace(tmp, path)
        restored.append(f"{path.name} (from {copies[0]})")
    return (f"Ray Tune's experiment files in {folder} were cut short (a full disk or a kill stopped the driver's "
            f"last copy to the storage); put back whole from the driver's own copies: {', '.join(restored)}")
