"""The FINISHED flag of a run's last report (bilaw/metrics.py): `finished` on new and old results,
the trainer's reports, and the driver's MLflow run of a trial whose last result carries it."""
from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from bilaw import TrainConfig
from bilaw.metrics import FINISHED, TEST_CLEAN_ACC, TEST_PGD_ACC, VAL_PGD_ACC, final_report, finished
from bilaw.training.trainer import train

EPOCH = {"epoch": 3, "train_loss": 0.91, "val_clean_acc": 0.62, "val_pgd_acc": 0.31, "best_val_pgd_acc": 0.33,
         "lr": 0.1}
FINAL = {"test_clean_acc": 0.64, "test_pgd_acc": 0.29, "best_epoch": 2, "epochs_trained": 3,
         "test_per_class_pgd_acc": [0.3, 0.28]}


def test_finished_tells_a_finished_runs_metrics_from_an_epochs():
    new = {**EPOCH, **final_report(FINAL), "done": False, "training_iteration": 3}  # a Ray result
    assert new[FINISHED] == 1 and new[TEST_CLEAN_ACC] == 0.64 and "test_per_class_pgd_acc" not in new
    assert finished(new) is True
    assert finished({"test_clean_acc": 0.64, "test_pgd_acc": 0.29, "best_epoch": 2.0}) is True  # logged before the flag
    assert finished({FINISHED: 1, "epoch": 3}) is True  # the flag, whatever final metrics there are
    assert finished(EPOCH) is False and finished({**EPOCH, "done": True}) is False  # Ray's own "done" is no flag
    assert finished({}) is False


def test_the_flag_is_never_an_mlflow_metric():
    from tune.tracking.runs import numeric_metrics

    logged = numeric_metrics({**EPOCH, **final_report(FINAL)})
    assert FINISHED not in logged and logged[TEST_PGD_ACC] == 0.29 and logged["val_pgd_acc"] == 0.31


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """A 2-epoch run on digits trained in two slices (stop_after=1, then resumed): its reports and result."""
    cfg = TrainConfig.from_dict({"dataset": "digits", "model": "fc1", "method": "bilaw", "epochs": 2,
                                 "batch_size": 256, "pgd_steps": 2, "eval_pgd_steps": 2, "meta_val_size": 100,
                                 "holdout_val_size": 100, "aa_samples": 0, "analysis_samples": 0, "plots": False,
                                 "device": "cpu"})
    folder, seen = tmp_path_factory.mktemp("flag"), []
    train(cfg, lambda m, _: seen.append(dict(m)), checkpoint_dir=folder, stop_after=1, progress=False, log=None)
    result = train(cfg, lambda m, _: seen.append(dict(m)), checkpoint_dir=folder, progress=False, log=None)
    return seen, result, folder


def test_only_the_trainers_last_report_carries_the_flag(reports):
    seen, result, _ = reports
    assert [r["epoch"] for r in seen] == [1, 2]
    first, last = seen
    assert FINISHED not in first and TEST_CLEAN_ACC not in first and not finished(first)  # the slice's end is no finish
    assert last[FINISHED] == 1 and finished(last)
    assert last[TEST_CLEAN_ACC] == result.final[TEST_CLEAN_ACC] and last[VAL_PGD_ACC] == result.history[-1][VAL_PGD_ACC]
    # the flag marks the report only: the run's history and final metrics (its metrics.json) lack it
    assert FINISHED not in result.final and all(FINISHED not in h for h in result.history)


def test_the_driver_logs_a_flagged_last_report_as_its_epoch_without_the_flag(reports, tmp_path):
    """The trial's results as Ray brings them (the last one flagged, with a system metric only the
    report has): the run is completed, its last epoch logged at step 2 with that system metric,
    and no "finished" column."""
    from types import SimpleNamespace

    from ray import tune

    from bilaw.runs.saved import save_run
    from tune.tracking.runs import SearchTracking
    from tune.tracking.trial_callback import TrialTracking

    seen, result, _ = reports
    save_run(result, tmp_path / "checkpoint" / "run")
    ray_keys = {"trial_id": "trial-f", "done": False, "time_total_s": 1.0}
    results = [{**seen[0], **ray_keys, "training_iteration": 1},
               {**seen[1], **ray_keys, "training_iteration": 2, "system_cpu_percent": 55.0}]
    trial = SimpleNamespace(trial_id="trial-f", config=result.config.to_dict(), error_file=None,
                            checkpoint=tune.Checkpoint(str(tmp_path / "checkpoint")), last_result=results[-1])
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    tracking = SearchTracking(uri, "t")
    tracking.start_parent("search", {})
    callback = TrialTracking(tracking, "my_space")
    callback.on_trial_start(0, [], trial)
    for r in results:
        callback.on_trial_result(0, [], trial, r)
    callback.on_trial_complete(0, [], trial)
    client = MlflowClient(uri)
    (run,) = client.search_runs([tracking.experiment_id], filter_string="tags.ray_trial_id = 'trial-f'")
    assert run.info.status == "FINISHED" and run.data.tags["trial_status"] == "completed"
    assert FINISHED not in run.data.metrics and finished(run.data.metrics)  # by its final metrics
    assert run.data.metrics[TEST_CLEAN_ACC] == result.final[TEST_CLEAN_ACC]
    history = client.get_metric_history(run.info.run_id, VAL_PGD_ACC)
    assert sorted((m.step, m.value) for m in history) == [(1, seen[0][VAL_PGD_ACC]), (2, seen[1][VAL_PGD_ACC])]
    cpu = client.get_metric_history(run.info.run_id, "system_cpu_percent")
    assert [(m.step, m.value) for m in cpu] == [(2, 55.0)]
    assert {m.step for m in client.get_metric_history(run.info.run_id, TEST_PGD_ACC)} == {0}
