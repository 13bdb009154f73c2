"""A trial's MLflow run without Ray: per-epoch metrics written on MLflow's logging thread arrive
whole, a retried trial reopens its run and skips the epochs it already logged."""
from __future__ import annotations

from mlflow.tracking import MlflowClient

from tune.tracking import TrialRun


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
