"""A trial's MLflow run without Ray: per-epoch metrics written on MLflow's logging thread arrive
whole, a failed background write is retried or reported (never silently lost), and a retried
trial reopens its run and skips the epochs it already logged."""
from __future__ import annotations

import warnings

import pytest
from mlflow.tracking import MlflowClient

from tune.tracking import TrackingError, TrialRun


def _epoch(e: int) -> dict:
    return {"epoch": e, "train_loss": 1.0 / (e + 1), "val_pgd_acc": 0.1 * e, "lr": 0.1, "note": "not a number"}


def test_epochs_logged_in_the_background_arrive_and_a_retry_skips_them(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("t")
    run = TrialRun(uri, exp, None, "trial-a", "trial-a", {"method": "bilaw", "lr": 0.1})
    for e in range(5):
        run.log_epoch(_epoch(e))
    run.flush()
    assert run.pending == []
    history = client.get_metric_history(run.run_id, "val_pgd_acc")
    assert sorted((m.step, m.value) for m in history) == [(e, 0.1 * e) for e in range(5)]
    assert "note" not in client.get_run(run.run_id).data.metrics and "epoch" not in client.get_run(run.run_id).data.metrics

    again = TrialRun(uri, exp, None, "trial-a", "trial-a", {"method": "bilaw", "lr": 0.1})  # the retried trial
    assert again.run_id == run.run_id and again.logged_steps == set(range(5))
    for e in range(3, 7):  # it redoes epochs 3 and 4 from an older checkpoint, then goes on
        again.log_epoch({**_epoch(e), "val_pgd_acc": 9.0 if e < 5 else 0.1 * e})
    again.log_final({"test_clean_acc": 0.9}, 6, tmp_path)  # waits for the epochs before writing
    steps = sorted((m.step, m.value) for m in client.get_metric_history(run.run_id, "val_pgd_acc"))
    assert steps == [(e, 0.1 * e) for e in range(7)]  # one value per epoch: the first attempt's
    assert client.get_run(run.run_id).data.metrics["test_clean_acc"] == 0.9
    again.finish()
    assert client.get_run(run.run_id).info.status == "FINISHED"


class _FailedWrite:
    def wait(self):
        raise RuntimeError("database is locked")


def test_a_failed_background_write_is_retried_and_never_silently_lost(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(uri)
    run = TrialRun(uri, client.create_experiment("t"), None, "trial-b", "trial-b", {"method": "at"})
    real = run.client.log_batch
    broken = {"async": {1, 2}, "sync": {2}}  # epoch 1's background write fails; epoch 2 fails both ways

    def log_batch(run_id, metrics=(), synchronous=None, **kw):
        step = metrics[0].step if metrics else None
        if synchronous is False and step in broken["async"]:
            return _FailedWrite()
        if synchronous is not False and step in broken["sync"]:
            raise RuntimeError("disk full")
        return real(run_id, metrics=metrics, synchronous=synchronous, **kw)

    run.client.log_batch = log_batch
    history = [_epoch(e) for e in range(4)]
    for metrics in history:
        run.log_epoch(metrics)
    with pytest.raises(TrackingError, match=r"could not log epoch 2 \(disk full\)"):
        run.flush()
    steps = sorted(m.step for m in client.get_metric_history(run.run_id, "val_pgd_acc"))
    assert steps == [0, 1, 3]  # epoch 1 written again synchronously; epoch 2 is missing and known to be
    assert run.logged_steps == {0, 1, 3}
    broken["async"].clear()
    broken["sync"].clear()
    run.log_history(history)  # what the trainable does after training: re-log what the run lacks
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the final flush has nothing left to complain about
        run.finish()
    values = sorted((m.step, m.value) for m in client.get_metric_history(run.run_id, "val_pgd_acc"))
    assert values == [(e, 0.1 * e) for e in range(4)]


@pytest.mark.parametrize("final, tag", [({"weights_collapsed_epoch": 3, "weights_faded": True}, "collapsed"),
                                        ({"weights_faded": True}, "faded"), ({"weights_faded": False}, None)])
def test_a_trial_whose_weights_died_is_tagged(tmp_path, final, tag):
    """The trainable tags the trial's run `weights: collapsed | faded` from its final metrics."""
    from bilaw import TrainConfig
    from bilaw.trainer import train
    from tune.trainable import _log_final

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("t")
    result = train(TrainConfig.from_dict({"method": "bilaw", "epochs": 1, "batch_size": 256, "pgd_steps": 2,
                                          "eval_pgd_steps": 2, "aa_samples": 0, "analysis_samples": 0,
                                          "plots": False, "device": "cpu"}), progress=False, log=lambda _: None)
    result.final = {k: v for k, v in result.final.items() if not k.startswith("weights_")} | final
    run = TrialRun(uri, exp, None, "trial-w", "trial-w", result.config.to_dict())
    _log_final(run, result, tmp_path)
    assert client.get_run(run.run_id).data.tags.get("weights") == tag
