"""MLflow tracking: one experiment per search space, a parent run per search, one child run per
Ray trial (found again by its Ray trial id, so a retried or resumed trial keeps one run).

Everything is written by the search's driver: the experiment and the parent run
(`SearchTracking`) and each trial's child run (`TrialRun`, driven by the Ray Tune callback in
`tune/tracking/trial_callback.py` from the results and checkpoints Ray brings back). Trials never reach
the store, so it needs no network path from other machines and its credentials stay on the
driver. `reproduce.py` uses `TrialRun` directly for the runs it trains in its own process.
"""
from __future__ import annotations

import math
import os
import re
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit, urlunsplit

from bilaw.metrics import FINISHED, TRAIN_LOSS, finished
from tune.sqlite_files import sqlite_path
from tune.tracking.queries import find_runs  # noqa: F401  (runs are found by value one way; callers import it here)

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
TRIAL_ID_TAG = "ray_trial_id"
PARENT_TAG = "mlflow.parentRunId"
STATUS_TAG = "trial_status"  # completed | pruned | error
# The MLflow status of a run whose trial ended so (tune/tracking/trial_callback.py writes the tag, then the status).
TRIAL_RUN_STATUS = {"completed": "FINISHED", "pruned": "KILLED", "error": "FAILED"}
# The searched params a trial was never given a value for (a `when` that did not hold), comma-
# separated: its logged value is the default, which report.py shows as "-", not as a choice.
NOT_SEARCHED_TAG = "not_searched"
# A run whose PGD-20 accuracy beats AutoAttack's on the same points by more than chance and
# `masking_gap` allow (bilaw/eval/per_point.py): its PGD number overstates its robustness.
MASKING_TAG = "suspect_gradient_masking"
# What AutoAttack's own sanity checks said of the run's model (randomised or dynamic defence,
# probabilities for logits, zero gradients, Square beating the gradient attacks), one per line.
AA_WARNINGS_TAG = "autoattack_warnings"
WEIGHTS_TAG = "weights"  # a weight net's status: collapsed, untrained, faded or learned (bilaw/methods/weight_health.py)
# "1" on a run whose epochs (steps, best_epoch) count from 1 (bilaw/epochs.py); a run logged before has none.
EPOCHS_FROM_TAG = "epochs_from"
# The searched parameters of a trial's run, comma-separated (a registered version's tags name their values).
SEARCHED_TAG = "searched"
# MLflow's own HTTP retries block for minutes on a dead server (measured: 247 s); keep them short.
FAST_FAIL_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
SECRET_PARAM = re.compile(r"(token|password|secret|credential|api[_-]?key)", re.I)


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message says why and what to do."""


def absolute_tracking_uri(uri: str | None, cwd: str | Path | None = None) -> str:
    """Make a relative SQLite URI absolute (trials run in other folders); plain paths to a
    `.db` file become SQLite URIs. Other URIs pass unchanged."""
    uri = uri or DEFAULT_TRACKING_URI
    cwd = Path(cwd or os.getcwd())
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        return uri if path.startswith("/") else "sqlite:///" + str((cwd / path).resolve())
    if "://" not in uri:
        if uri.endswith(".db"):
            return "sqlite:///" + str((cwd / uri).resolve())
        raise TrackingError(f"tracking URI {uri!r} is a folder: MLflow's file store is deprecated; "
                            f"use a SQLite file such as sqlite:///mlruns.db or a server URL http://HOST:PORT")
    return uri


def redact_uri(uri: str) -> str:
    """The URI without credentials (user:password@) or query tokens, safe to log."""
    parts = urlsplit(uri)
    if parts.scheme.startswith("sqlite"):
        return uri
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def check_store_exists(uri: str) -> None:
    """For the readers of a finished search: a SQLite store must already be there (MLflow would
    create an empty one and report no experiment), and be whole."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise TrackingError(f"no tracking database at {uri}; pass the --tracking-uri the search used")
    _refuse_damaged(uri)


def _refuse_damaged(uri: str) -> None:
    """A SQLite tracking database that exists must be whole and MLflow's: SQLite's own error would
    surface as a traceback from deep inside MLflow. (`storage.check_search_stores` says the same
    of a search's stores, with what of that search is intact.)"""
    db = sqlite_path(uri)
    if db is None or not db.is_file() or db.stat().st_size == 0:
        return
    from tune.sqlite_files import MLFLOW_TABLES, sqlite_problem

    problem = sqlite_problem(db, MLFLOW_TABLES)
    if problem:
        raise TrackingError(
            f"tracking database {db} cannot be used: {problem}. Only MLflow's records are in it: a search's trial "
            f"folders (--storage-path) and its Optuna study (optuna.db in its state folder) are other files and "
            f"intact; put back a copy of {db} from a backup and run the same command again, or pass another "
            f"--tracking-uri (sqlite:///NEW.db)")


def check_tracking_uri(uri: str, timeout_s: float = 3.0) -> None:
    """Fail within seconds, with a clear message, when the store cannot be reached or written, or
    (a SQLite file) is damaged."""
    if uri.startswith("sqlite:///"):
        _refuse_damaged(uri)
        folder = sqlite_path(uri).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingError(f"cannot create the folder of tracking database {uri}: {exc}") from None
        if not os.access(folder, os.W_OK):
            raise TrackingError(f"tracking database folder {folder} is not writable; pass --tracking-uri "
                                f"sqlite:///SOME/WRITABLE/PATH/mlruns.db")
        return
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as resp:
                resp.read(64)
        except urllib.error.HTTPError:
            return  # something answered: an auth proxy or an older server without /health
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(
                f"cannot reach the MLflow tracking server at {redact_uri(uri)} ({reason}) within {timeout_s:g} s; "
                f"start it (mlflow server --backend-store-uri sqlite:///mlruns.db --host 127.0.0.1 --port 5000) "
                f"or drop --tracking-uri to log to the local file sqlite:///mlruns.db") from None


def use_fast_fail_http() -> None:
    for k, v in FAST_FAIL_ENV.items():
        os.environ.setdefault(k, v)


class _RaisedStoreErrors:
    """Drops MLflow's log record of a database error it raises anyway: MLflow's SQL store logs
    every SQLAlchemy OperationalError (a full disk, a locked or damaged file) with its whole
    traceback and then raises it as an MlflowException, which the caller here handles (a
    warning while tracking trials, one `error:` line where the search stops); the traceback in
    the user's terminal would only repeat it."""

    def filter(self, record) -> bool:
        return not str(record.msg).startswith("SQLAlchemy database error")


_QUIET = _RaisedStoreErrors()


def client_for(uri: str) -> Any:
    """An mlflow.tracking.MlflowClient of `uri`: HTTP calls fail fast, a raised store error is not also logged."""
    import logging

    from mlflow.tracking import MlflowClient

    use_fast_fail_http()
    store_log = logging.getLogger("mlflow.store.db.utils")
    if _QUIET not in store_log.filters:
        store_log.addFilter(_QUIET)
    return MlflowClient(tracking_uri=uri)


def flatten_params(config: dict[str, Any]) -> dict[str, str]:
    """TrainConfig dict -> MLflow params (strings); private keys and secret-looking keys dropped."""
    out = {}
    for key, value in config.items():
        if key.startswith("_") or SECRET_PARAM.search(key):
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        out[key] = str(value)[:6000]
    return out


# One metric column per class (a hundred on CIFAR-100) would bury the runs table: the per-class
# robust accuracies go to MLflow as the JSON artifact the trial writes (bilaw/analysis/plots.py
# `write_per_class`) instead.
PER_CLASS_METRIC = re.compile(r"^test_pgd_acc_class_\d+$")


def numeric_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The metrics MLflow gets as columns: finite numbers, not the per-class accuracies nor FINISHED."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
            and not PER_CLASS_METRIC.match(k) and k != FINISHED}


def best_epoch(run) -> float | None:
    """An MLflow run's best epoch, counted from 1: a run logged before the EPOCHS_FROM_TAG counted from 0."""
    value = run.data.metrics.get("best_epoch")
    return None if value is None else value + (0 if run.data.tags.get(EPOCHS_FROM_TAG) == "1" else 1)


def run_name(values: dict[str, Any], fallback: str, limit: int = 80) -> str:
    """A run's name from what was searched, e.g. "weight_net=64-64 seed=0" (floats to 4
    significant digits); `fallback` when nothing was. Beyond `limit` characters the middle is cut
    with "...", keeping the last part (the seed, where the caller puts it last) whole."""
    parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()]
    name = " ".join(parts) or fallback
    if len(name) <= limit:
        return name
    last = " " + parts[-1] if len(parts) > 1 and len(parts[-1]) < limit // 2 else ""
    return name[:limit - 3 - len(last)] + "..." + last


def runs_table_url(experiment_id: str, ui: str = "http://127.0.0.1:5000", view: str | None = None) -> str:
    """The MLflow UI's runs table (MLflow 3's default landing page is the GenAI view), opened on
    the saved `view` (tune/tracking/runs_view.py) when one is given."""
    shared = f"&viewStateShareKey={view}" if view else ""
    return f"{ui}/#/experiments/{experiment_id}/runs?workflowType=machine_learning{shared}"


class SearchTracking:
    """Driver side: the experiment and the search's parent run."""

    def __init__(self, uri: str, experiment: str) -> None:
        self.uri, self.experiment = uri, experiment
        self.client = client_for(uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            location = None
            if uri.startswith("sqlite:///"):  # artifacts beside the database, not in the cwd
                location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        else:
            self.experiment_id = exp.experiment_id
        self.parent_run_id: str | None = None

    def start_parent(self, run_name: str, tags: dict[str, str], params: dict[str, str] | None = None) -> str:
        from mlflow.entities import Param

        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.parent_run_id = run.info.run_id
        if params:
            self.client.log_batch(self.parent_run_id, params=[Param(k, v) for k, v in flatten_params(params).items()])
        return self.parent_run_id

    def resume_parent(self, experiment_path: str) -> str | None:
        """Find the parent run of the search stored at `experiment_path` and mark it running again."""
        runs = find_runs(self.client, [self.experiment_id], {"tags.ray_experiment_path": experiment_path},
                         max_results=1, order_by=["attributes.start_time DESC"])
        self.parent_run_id = runs[0].info.run_id if runs else None
        if self.parent_run_id:
            self.client.update_run(self.parent_run_id, status="RUNNING")
            self.end_runs_whose_trial_ended()
        return self.parent_run_id

    def end_runs_whose_trial_ended(self) -> int:
        """End the child runs still RUNNING although their trial's end is recorded (STATUS_TAG),
        with the status that end means (TRIAL_RUN_STATUS); returns how many. The tag is written
        just before the run's status, and a full disk or a killed driver can come between the
        two: such a finished trial is not live at --resume and would otherwise be taken for an
        orphan and ended KILLED."""
        ended = 0
        for run in self.child_runs():
            status = TRIAL_RUN_STATUS.get(run.data.tags.get(STATUS_TAG, ""))
            if run.info.status == "RUNNING" and status:
                self.client.set_terminated(run.info.run_id, status)
                ended += 1
        return ended

    def child_runs(self) -> list:
        return find_runs(self.client, [self.experiment_id], {f"tags.{PARENT_TAG}": self.parent_run_id},
                         max_results=5000)

    def finish_parent(self, status: str = "FINISHED", metrics: dict[str, Any] | None = None,
                      artifacts: Iterable[Path] = ()) -> None:
        if self.parent_run_id is None:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        if metrics:
            self.client.log_batch(self.parent_run_id,
                                  metrics=[Metric(k, v, ts, 0) for k, v in numeric_metrics(metrics).items()])
        for path in artifacts:
            if Path(path).exists():
                self.client.log_artifact(self.parent_run_id, str(path))
        self.client.set_terminated(self.parent_run_id, status)


class TrialRun:
    """Trial side: the child run of one Ray trial, reused when the trial is retried or resumed.
    `key_tag` names the tag that identifies the run (the Ray trial id; reproduce.py's run key)."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str | None, trial_id: str, trial_name: str,
                 config: dict[str, Any], tags: dict[str, str] | None = None, key_tag: str = TRIAL_ID_TAG) -> None:
        from mlflow.entities import Param

        self.client = client_for(uri)
        found = find_runs(self.client, [experiment_id], {f"tags.{key_tag}": trial_id}, max_results=1)
        if found:
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            self.logged_steps = {m.step for m in self.client.get_metric_history(self.run_id, TRAIN_LOSS)}
        else:
            parent = {PARENT_TAG: parent_run_id} if parent_run_id else {}
            run = self.client.create_run(experiment_id, run_name=trial_name, tags={
                **parent, key_tag: trial_id, **(tags or {})})
            self.run_id = run.info.run_id
            params = flatten_params(config)
            items = [Param(k, v) for k, v in params.items()]
            for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(self.run_id, params=items[i:i + 100])
            self.logged_steps = set()
        self.unlogged: dict[int, str] = {}  # epoch -> why its write failed

    def log_epoch(self, metrics: dict[str, Any]) -> None:
        """Per-epoch metrics with step = epoch, written before this returns. An epoch already
        logged (retry) is skipped; one whose write fails stays unlogged, remembered with its error,
        so that `log_history` writes it again and `finish` names it if it never arrives. The trainer's
        last report, which also carries the final metrics (`finished`), is left to `log_history`
        and `log_final`.

        Synchronous on purpose: MLflow's asynchronous logging thread, once started, is shut down
        by every run's `set_terminated`, which waits out the thread's one-second queue timeout (a
        stall of about a second at each trial's end), where a synchronous write of one epoch's
        metrics costs milliseconds."""
        from mlflow.entities import Metric

        step = int(metrics["epoch"])
        if step in self.logged_steps or finished(metrics):
            return
        ts = int(time.time() * 1000)
        batch = [Metric(k, v, ts, step) for k, v in numeric_metrics(metrics).items() if k != "epoch"]
        try:
            self.client.log_batch(self.run_id, metrics=batch)
        except Exception as exc:  # noqa: BLE001 - any store error: the epoch stays unlogged
            self.unlogged[step] = str(exc)
            return
        self.logged_steps.add(step)
        self.unlogged.pop(step, None)

    def log_history(self, history: list[dict[str, Any]]) -> None:
        """Re-log epochs that a checkpoint holds but the run lacks (a kill between the two, or a
        write that failed)."""
        for metrics in history:
            self.log_epoch(metrics)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_final(self, final: dict[str, Any], run_dir: Path, history: Iterable[dict[str, Any]] = ()) -> None:
        """The final metrics at step 0 and a saved run's files: config.yaml, metrics.json and
        plots/*.png. Epochs are steps 1..E, so step 0 holds only final values: MLflow's UI draws a
        metric whose latest step is 0 as a value (a bar) and one with a later step as a curve. A
        final metric that is also a per-epoch series of `history` (the last map snapshot's AUROC)
        stays a curve, not logged again."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        series = {k for h in history for k in h}
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, ts, 0) for k, v in numeric_metrics(final).items()
                                                    if k not in series])
        self.client.set_tag(self.run_id, EPOCHS_FROM_TAG, "1")
        from bilaw.analysis.plots import PER_CLASS_JSON
        from bilaw.eval.per_point import PER_POINT_NAME
        from bilaw.runs.saved import CONFIG_NAME, METRICS_NAME

        for name in (CONFIG_NAME, METRICS_NAME, PER_POINT_NAME, PER_CLASS_JSON):
            if (run_dir / name).is_file():
                self.log_artifact(run_dir / name)
        for png in sorted((run_dir / "plots").glob("*.png")):
            self.log_artifact(png, "plots")

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, v)

    def finish(self, status: str = "FINISHED") -> None:
        """End the run with `status`; an epoch that never arrived is named in a warning (it must not
        also cost the run's status)."""
        if self.unlogged:
            lost = ", ".join(f"epoch {step} ({error})" for step, error in sorted(self.unlogged.items()))
            warnings.warn(f"MLflow run {self.run_id}: could not log {lost}")
        self.client.set_terminated(self.run_id, status)