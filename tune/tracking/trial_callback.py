"""Driver-side MLflow tracking of every trial: a Ray Tune callback that writes each trial's
child run from what Ray brings back to the driver, so no trial process ever talks to the
tracking store (a trial on another machine cannot reach the driver's SQLite file, and store
credentials never leave the driver).

- start: the child run (found again by the Ray trial id, so a retried, restored or resumed
  trial keeps one run), with the trial's full config as params and its tags (`searched`: the
  space's parameters);
- each result: the per-epoch metrics, step = epoch, counted from 1 (an epoch already logged is
  skipped). The last epoch's report, `finished` (bilaw/metrics.py), also carries the test
  metrics: it waits for the trial's end;
- the end: the saved run the trial's last checkpoint carries (`run/`: config.yaml,
  metrics.json, the per-class JSON, plots, all written by the trial: the driver draws nothing),
  the last epoch's report less its final metrics and flag, every epoch of its history the run
  still lacks, the final metrics at step 0 (values, not curves, in MLflow's UI), the data the
  trial recorded (an MLflow dataset input: the driver never loads a dataset), the weight-health
  tag, and the run's status (completed, pruned by the scheduler, or error).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.result import AUTO_RESULT_KEYS

from bilaw.methods.weight_health import health_label
from bilaw.metrics import FINISHED, finished, scalar_final
from bilaw.runs.saved import DATA_RECORD_NAME, read_metrics
from tune.tracking.runs import (AA_WARNINGS_TAG, MASKING_TAG, NOT_SEARCHED_TAG, SEARCHED_TAG, STATUS_TAG, WEIGHTS_TAG,
                                SearchTracking, TrialRun, run_name)
from tune.trainable import CHECKPOINT_NAME, SAVED_RUN, not_searched, trial_config, trial_values, variant_tags

# What Ray adds to every result besides the trial's own metrics.
RAY_RESULT_KEYS = frozenset(AUTO_RESULT_KEYS) | {"done", "trial_id", "experiment_tag", "should_checkpoint"}


def _warn(what: str, exc: Exception) -> None:
    """One line: a full disk as its cause, anything else without MLflow's multi-line SQL text."""
    from bilaw.file_errors import one_line
    from tune.disk_full import disk_full_cause

    print(f"warning: MLflow: {what}: {disk_full_cause(exc) or one_line(exc)}", file=sys.stderr)


class TrialTracking(tune.Callback):
    """Writes every trial's MLflow child run from the driver (see the module docstring).
    `tags` go on every child run (e.g. the re-runs' `rerun_of`); a store error is a warning,
    never the end of the search."""

    def __init__(self, tracking: SearchTracking, space: str = "", tags: dict[str, str] | None = None,
                 searched: list[str] | tuple[str, ...] = (), log_models: bool = False) -> None:
        self.tracking, self.space, self.tags, self.searched = tracking, space, dict(tags or {}), list(searched)
        self.log_models = log_models  # each finished trial's best and last model (--log-models finished)
        self.runs: dict[str, TrialRun] = {}
        self.last_reports: dict[str, dict[str, Any]] = {}  # trial id -> its last epoch's report, with test metrics

    def _run(self, trial) -> TrialRun | None:
        if trial.trial_id in self.runs:
            return self.runs[trial.trial_id]
        tags = {"space": self.space, **self.tags, **variant_tags(trial.config)}
        if self.searched:
            tags[SEARCHED_TAG] = ",".join(self.searched)
        if not_searched(trial.config):
            tags[NOT_SEARCHED_TAG] = ",".join(not_searched(trial.config))
        try:
            cfg = trial_config(trial.config)
            given = trial_values(trial.config)
            values = {k: given[k] for k in self.searched if k in given}
            name = run_name({**values, "seed": cfg.seed}, str(trial)) if values else f"{trial} seed={cfg.seed}"
            run = TrialRun(self.tracking.uri, self.tracking.experiment_id, self.tracking.parent_run_id,
                           trial.trial_id, name, cfg.to_dict(), tags=tags)
        except Exception as exc:  # tracking never stops the search; Ray's results still hold everything
            _warn(f"no run for trial {trial.trial_id}", exc)
            return None
        self.runs[trial.trial_id] = run
        return run

    def _log_dataset(self, run: TrialRun, saved: Path) -> None:
        """The trial's data as an MLflow dataset input (name, source, split sizes, a digest of the
        split), as the trial recorded it in its saved run (DATA_RECORD_NAME): the driver never
        loads a dataset. A run that already has one is left alone."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        try:
            if not (saved / DATA_RECORD_NAME).is_file() or run.client.get_run(run.run_id).inputs.dataset_inputs:
                return
            rec = json.loads((saved / DATA_RECORD_NAME).read_text())
            profile = {k: rec[k] for k in ("train", "meta_val", "holdout", "test", "noisy", "train_includes_val")}
            dataset = Dataset(rec["name"], rec["digest"], "local", json.dumps({"uri": rec["source"]}),
                              profile=json.dumps(profile))
            run.client.log_inputs(run.run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", "train")])])
        except Exception as exc:  # the dataset record is a label, never a reason to stop
            _warn(f"dataset of run {run.run_id}", exc)

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self._run(trial)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict[str, Any], **info) -> None:
        run = self._run(trial)
        metrics = {k: v for k, v in result.items() if k not in RAY_RESULT_KEYS}
        if finished(metrics):  # the last epoch's, with the final metrics: logged at the trial's end
            self.last_reports[trial.trial_id] = metrics
        elif run is not None and "epoch" in metrics:
            try:
                run.log_epoch(metrics)
            except Exception as exc:
                _warn(f"epoch {metrics['epoch']} of trial {trial.trial_id}", exc)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        run = self._run(trial)
        if run is None:
            return
        done = finished(trial.last_result or {})
        if done:
            self._log_saved_run(run, trial)
        self._finish(run, "completed" if done else "pruned", "FINISHED" if done else "KILLED")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        run = self._run(trial)
        if run is None:
            return
        message = None
        if getattr(trial, "error_file", None) and Path(trial.error_file).exists():
            lines = [ln for ln in Path(trial.error_file).read_text().splitlines() if ln.strip()]
            message = lines[-1] if lines else None
        self._finish(run, "error", "FAILED", message)

    def _log_saved_run(self, run: TrialRun, trial) -> None:
        """The files of the trial's saved run, from its last checkpoint (which Ray stores where the
        driver can read it), and whatever of its history and final metrics the run lacks."""
        checkpoint, last = trial.checkpoint, self.last_reports.pop(trial.trial_id, None)
        if checkpoint is None:
            return
        try:
            with checkpoint.as_directory() as folder:
                saved = Path(folder) / SAVED_RUN
                metrics = read_metrics(saved)
                final, history = scalar_final(metrics["final"]), metrics["history"]
                if last is not None and history:  # its system metrics are in the report only
                    added = {*final, FINISHED} - set(history[-1])  # what the last report adds to its epoch's
                    run.log_epoch({k: v for k, v in last.items() if k not in added})
                run.log_history(history)
                run.log_final(final, saved, history)
                self._log_dataset(run, saved)
                label = health_label(metrics["final"])
                if label is not None:
                    run.set_tags({WEIGHTS_TAG: label})
                if metrics["final"].get("suspect_gradient_masking"):
                    run.set_tags({MASKING_TAG: "true"})
                if metrics["final"].get("autoattack_warnings"):
                    run.set_tags({AA_WARNINGS_TAG: "\n".join(metrics["final"]["autoattack_warnings"])[:4000]})
                if self.log_models:
                    from tune.tracking.model_store import log_model

                    log_model(self.tracking.uri, run.run_id, saved, last_checkpoint=Path(folder) / CHECKPOINT_NAME)
        except Exception as exc:
            _warn(f"the saved run of trial {trial.trial_id}", exc)

    def _finish(self, run: TrialRun, status: str, mlflow_status: str, message: str | None = None) -> None:
        try:
            tags = {STATUS_TAG: status, **({"error": message[:4000]} if message else {})}
            run.set_tags(tags)
            run.finish(mlflow_status)
        except Exception as exc:
            _warn(f"status of run {run.run_id}", exc)

