"""A trial's MLflow run without Ray: per-epoch metrics arrive whole, a failed write is retried or
reported (never silently lost), ending a run starts and stops no logging thread, and a retried
trial reopens its run and skips the epochs it already logged."""
from __future__ import annotations


import pytest
from helpers import REPO
import torch
from mlflow.tracking import MlflowClient

from tune.tracking.runs import TrialRun


def _epoch(e: int) -> dict:
    return {"epoch": e, "train_loss": 1.0 / (e + 1), "val_pgd_acc": 0.1 * e, "lr": 0.1, "note": "not a number"}


@pytest.mark.slow
def test_logged_epochs_arrive_and_a_retry_skips_them(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("t")
    run = TrialRun(uri, exp, None, "trial-a", "trial-a", {"method": "bilaw", "lr": 0.1})
    for e in range(1, 6):  # epochs count from 1
        run.log_epoch(_epoch(e))
    assert run.unlogged == {}
    history = client.get_metric_history(run.run_id, "val_pgd_acc")
    assert sorted((m.step, m.value) for m in history) == [(e, 0.1 * e) for e in range(1, 6)]
    assert "note" not in client.get_run(run.run_id).data.metrics and "epoch" not in client.get_run(run.run_id).data.metrics

    again = TrialRun(uri, exp, None, "trial-a", "trial-a", {"method": "bilaw", "lr": 0.1})  # the retried trial
    assert again.run_id == run.run_id and again.logged_steps == set(range(1, 6))
    for e in range(4, 8):  # it redoes epochs 4 and 5 from an older checkpoint, then goes on
        again.log_epoch({**_epoch(e), "val_pgd_acc": 9.0 if e < 6 else 0.1 * e})
    again.log_final({"test_clean_acc": 0.9}, tmp_path)
    steps = sorted((m.step, m.value) for m in client.get_metric_history(run.run_id, "val_pgd_acc"))
    assert steps == [(e, 0.1 * e) for e in range(1, 8)]  # one value per epoch: the first attempt's
    final = client.get_metric_history(run.run_id, "test_clean_acc")
    assert [(m.step, m.value) for m in final] == [(0, 0.9)]  # step 0: no epoch's, a value in MLflow's UI
    again.finish()
    assert client.get_run(run.run_id).info.status == "FINISHED"


def test_a_failed_write_is_retried_and_never_silently_lost(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(uri)
    run = TrialRun(uri, client.create_experiment("t"), None, "trial-b", "trial-b", {"method": "at"})
    real = run.client.log_batch
    broken = {1, 2}  # the store refuses epochs 1 and 2; epoch 2 for good

    def log_batch(run_id, metrics=(), **kw):
        if metrics and metrics[0].step in broken:
            raise RuntimeError("disk full")
        return real(run_id, metrics=metrics, **kw)

    run.client.log_batch = log_batch
    history = [_epoch(e) for e in range(4)]
    for metrics in history:
        run.log_epoch(metrics)  # a failed epoch does not stop the trial's reports
    assert sorted(m.step for m in client.get_metric_history(run.run_id, "val_pgd_acc")) == [0, 3]
    assert run.logged_steps == {0, 3} and run.unlogged == {1: "disk full", 2: "disk full"}
    broken.discard(1)
    run.log_history(history)  # what the driver does with the saved run: re-log what the run lacks
    assert run.logged_steps == {0, 1, 3} and run.unlogged == {2: "disk full"}
    with pytest.warns(UserWarning, match=r"could not log epoch 2 \(disk full\)"):
        run.finish()
    assert client.get_run(run.run_id).info.status == "FINISHED"
    values = sorted((m.step, m.value) for m in client.get_metric_history(run.run_id, "val_pgd_acc"))
    assert values == [(e, 0.1 * e) for e in (0, 1, 3)]


def test_ending_a_run_starts_no_logging_thread_and_waits_on_no_queue(tmp_path, monkeypatch):
    """MLflow's asynchronous logging thread, once started, is shut down by every run's end, which
    waits out its queue's one-second timeout; a trial's run never starts it."""
    import threading

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(uri)
    started, real_start = [], threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda self: (started.append(self.name), real_start(self))[1])
    run = TrialRun(uri, client.create_experiment("t"), None, "trial-c", "trial-c", {"method": "at"})
    for e in range(1, 4):
        run.log_epoch(_epoch(e))
    run.log_final({"test_clean_acc": 0.9}, tmp_path, [_epoch(e) for e in range(1, 4)])
    run.finish()
    assert started == []  # no MLflowAsyncLoggingLoop, no logging worker pool: nothing to shut down
    assert [m.step for m in client.get_metric_history(run.run_id, "train_loss")] == [1, 2, 3]
    assert client.get_run(run.run_id).info.status == "FINISHED"


def _finished_trial(tmp_path, final_extra=None, checkpoint_dir=None):
    """A real short BiLAW run saved as a trial's last checkpoint holds it (`run/` in the trial
    folder), and a stand-in for Ray's Trial object pointing at that checkpoint."""
    from types import SimpleNamespace

    from ray import tune

    from bilaw import TrainConfig
    from bilaw.runs.saved import save_run
    from bilaw.training.trainer import train

    result = train(TrainConfig.from_dict({"method": "bilaw", "epochs": 2, "batch_size": 256, "pgd_steps": 2,
                                          "eval_pgd_steps": 2, "aa_samples": 0, "analysis_samples": 0,
                                          "plots": False, "device": "cpu"}), progress=False, log=lambda _: None,
                   checkpoint_dir=checkpoint_dir)
    if final_extra is not None:  # the health keys replaced; None values drop a key
        kept = {k: v for k, v in result.final.items() if not k.startswith("weights_") and k != "weight_status"}
        result.final = {k: v for k, v in (kept | final_extra).items() if v is not None}
    folder = tmp_path / "checkpoint"
    save_run(result, folder / "run")
    class Trial(SimpleNamespace):
        def __str__(self) -> str:
            return "trial_w"

    trial = Trial(trial_id="trial-w", config=result.config.to_dict(), checkpoint=tune.Checkpoint(str(folder)),
                  last_result={"test_clean_acc": result.final["test_clean_acc"]}, error_file=None)
    return result, trial


@pytest.mark.parametrize("final, tag", [
    pytest.param({"weights_collapsed_epoch": 3, "weights_faded": True}, "collapsed", marks=pytest.mark.slow),
    pytest.param({"weights_faded": True, "weights_untrained": True}, "untrained", marks=pytest.mark.slow),
    pytest.param({"weights_faded": True}, "faded", marks=pytest.mark.slow),
    ({"weights_faded": False}, "learned"),
    # a run from before the statistics:
    pytest.param({"weights_faded": False, "weight_rank_corr_init_last": None}, None, marks=pytest.mark.slow),
])
def test_a_trial_whose_weights_died_is_tagged(tmp_path, final, tag):
    """The driver tags the trial's run `weights: collapsed | untrained | faded | learned` from its
    saved final metrics."""
    from tune.tracking.runs import SearchTracking
    from tune.tracking.trial_callback import TrialTracking

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    tracking = SearchTracking(uri, "t")
    _, trial = _finished_trial(tmp_path, final)
    TrialTracking(tracking).on_trial_complete(0, [], trial)
    run = MlflowClient(uri).search_runs([tracking.experiment_id])[0]
    assert run.data.tags.get("weights") == tag and run.data.tags["trial_status"] == "completed"


def test_the_driver_writes_a_trial_run_from_results_and_the_saved_run(tmp_path):
    """Per-epoch results arrive at the driver; an epoch the driver never saw (lost with a killed
    driver) comes from the saved run's history at the end; config params, final metrics and the
    saved run's files land on one child run under the parent, and the run finishes."""
    from tune.tracking.runs import SearchTracking
    from tune.tracking.trial_callback import TrialTracking

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    tracking = SearchTracking(uri, "t")
    tracking.start_parent("search", {})
    result, trial = _finished_trial(tmp_path)
    callback = TrialTracking(tracking, "my_space")
    callback.on_trial_start(0, [], trial)
    first = {**result.history[0], "training_iteration": 1, "time_total_s": 3.0, "done": False, "trial_id": "x"}
    callback.on_trial_result(0, [], trial, first)
    callback.on_trial_result(0, [], trial, first)  # a retried trial reports epoch 0 again
    callback.on_trial_complete(0, [], trial)
    client = MlflowClient(uri)
    (run,) = client.search_runs([tracking.experiment_id], filter_string="tags.ray_trial_id = 'trial-w'")
    assert run.data.tags["mlflow.parentRunId"] == tracking.parent_run_id and run.data.tags["space"] == "my_space"
    assert run.info.status == "FINISHED" and run.data.params["method"] == "bilaw" and run.info.run_name == "trial_w seed=0"
    history = client.get_metric_history(run.info.run_id, "val_pgd_acc")
    assert sorted((m.step, m.value) for m in history) == [(h["epoch"], h["val_pgd_acc"]) for h in result.history]
    assert "training_iteration" not in run.data.metrics and "time_total_s" not in run.data.metrics
    assert run.data.metrics["test_clean_acc"] == result.final["test_clean_acc"]
    assert {"config.yaml", "metrics.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    # the data, as MLflow's Dataset column shows it: name, split sizes (those the run trained on), digest
    import json as _json

    from bilaw.data.datasets import load_data

    cfg = result.config
    (given,) = run.inputs.dataset_inputs
    data = load_data(cfg.dataset, meta_val_size=cfg.meta_val_size, holdout_val_size=cfg.holdout_val_size, seed=cfg.seed)
    profile = _json.loads(given.dataset.profile)
    assert given.dataset.name == "digits" and (profile["train"], profile["meta_val"], profile["holdout"],
                                                profile["test"]) == (len(data.y_train), len(data.y_meta),
                                                                     len(data.y_holdout), len(data.y_test))
    other = load_data(cfg.dataset, meta_val_size=cfg.meta_val_size, holdout_val_size=cfg.holdout_val_size,
                      seed=cfg.seed + 1)
    assert given.dataset.digest != other.record["digest"]  # another seed: another split
    assert given.dataset.digest == data.record["digest"] == _split_digest(data, cfg)


def _split_digest(data, cfg) -> str:
    """The split's digest computed independently: the same split indices, hashed here."""
    import hashlib

    from bilaw.data.datasets import DATASETS
    from bilaw.data.splits import split_and_corrupt

    raw = DATASETS.get(cfg.dataset)(data_dir=None)
    split, _, noisy = split_and_corrupt(raw, meta_val_size=cfg.meta_val_size, holdout_val_size=cfg.holdout_val_size,
                                        seed=cfg.seed, label_noise=0.0)
    assert len(split.train) == len(data.y_train) and torch.equal(raw.x_train[split.holdout], data.x_holdout)
    h = hashlib.sha256()
    for name, idx in (("train", split.train.tolist()), ("meta_val", split.meta_val.tolist()),
                      ("holdout", split.holdout.tolist()), ("noisy", []), ("test", range(len(raw.y_test)))):
        h.update(name.encode() + b"".join(int(i).to_bytes(8, "little") for i in idx))
    return h.hexdigest()[:32]


def test_the_drivers_tracking_of_a_trial_never_loads_a_dataset(tmp_path, monkeypatch):
    """Start, results and end of a finished trial, with every dataset loader refusing: the run still
    gets its dataset input (the trial's own record, from its saved run)."""
    from bilaw.data import datasets
    from tune.tracking.runs import SearchTracking
    from tune.tracking.trial_callback import TrialTracking

    result, trial = _finished_trial(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("the driver loaded a dataset")

    monkeypatch.setattr(datasets, "load_data", refuse)
    for name in datasets.DATASETS.names():
        monkeypatch.setitem(datasets.DATASETS._entries, name, refuse)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    tracking = SearchTracking(uri, "t")
    callback = TrialTracking(tracking, "my_space")
    callback.on_trial_start(0, [], trial)
    callback.on_trial_result(0, [], trial, {**result.history[0], "trial_id": "x"})
    callback.on_trial_complete(0, [], trial)
    (run,) = MlflowClient(uri).search_runs([tracking.experiment_id])
    (given,) = run.inputs.dataset_inputs
    assert given.dataset.digest == result.data_record["digest"] and run.data.tags["trial_status"] == "completed"


@pytest.mark.slow
def test_a_trial_process_never_imports_mlflow():
    """Trials may run on machines that cannot reach the store: the trainable (and what it
    imports) has no MLflow in it; the driver writes every run."""
    import subprocess
    import sys

    code = "import sys, tune.trainable; print(sorted(m for m in sys.modules if m.startswith(('mlflow', 'tune.track'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=str(REPO))
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr[-2000:]


@pytest.mark.slow
def test_finished_mode_logs_each_trials_best_and_last_model(tmp_path):
    """--log-models finished: the best state as `model` and the last epoch's as `last_model`,
    both loadable modules; the last one equals the trainer's checkpoint.pt."""
    import mlflow
    import torch

    from bilaw.training.checkpoint import load_checkpoint
    from tune.tracking.runs import SearchTracking
    from tune.tracking.trial_callback import TrialTracking

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    tracking = SearchTracking(uri, "t")
    result, trial = _finished_trial(tmp_path, checkpoint_dir=tmp_path / "checkpoint")
    TrialTracking(tracking, log_models=True).on_trial_complete(0, [], trial)
    (run,) = MlflowClient(uri).search_runs([tracking.experiment_id])
    mlflow.set_tracking_uri(uri)
    best = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model").eval()
    last = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/last_model").eval()
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(best(x), result.model.eval()(x))
    saved = load_checkpoint(tmp_path / "checkpoint" / "checkpoint.pt")["model"]
    assert all(torch.equal(v, saved[k]) for k, v in last.state_dict().items())
    # each model carries its own state's metrics: the best its best epoch's and the final ones but the
    # last state's, the last model the last epoch's and the last state's test metrics (last_*)
    client = MlflowClient(uri)
    models = {m.name: m for m in client.search_logged_models([tracking.experiment_id])}
    best_epoch, last_epoch = result.final["best_epoch"], result.history[-1]["epoch"]
    for name, epoch in (("model", best_epoch), ("last_model", last_epoch)):
        linked = {(m.key, m.step): m.value for m in models[name].metrics}
        finals = {k for k, s in linked if s == 0}
        series = {k for h in result.history for k in h}  # per-epoch (the map's AUROCs too): not final values
        assert finals == ({"last_test_clean_acc", "last_test_pgd_acc"} if name == "last_model" else
                          {k for k in client.get_run(run.info.run_id).data.metrics if k in result.final}
                          - series - {"last_test_clean_acc", "last_test_pgd_acc"}), name
        assert linked[("val_pgd_acc", epoch)] == result.history[epoch - 1]["val_pgd_acc"], name
        assert {s for _, s in linked} == {0, epoch}, name
    assert linked[("last_test_pgd_acc", 0)] == result.final["last_test_pgd_acc"]
    # fetch_model writes a run folder with the best model: the last model's URI is refused
    from tune.fetch_model import main as fetch_main

    for uri_of_last in (f"runs:/{run.info.run_id}/last_model", models["last_model"].model_uri):
        assert fetch_main([uri_of_last, "--out", str(tmp_path / "last"), "--tracking-uri", uri]) == 2
    assert fetch_main([models["model"].model_uri, "--out", str(tmp_path / "best"), "--tracking-uri", uri]) == 0
    assert not (tmp_path / "last").exists() and (tmp_path / "best" / "best.pt").is_file()


@pytest.mark.slow
def test_a_model_logged_to_a_run_from_before_goes_to_its_epochs_0_based_step(tmp_path):
    """A run logged before epochs counted from 1 (no epochs_from tag: epochs at steps 0..E-1):
    its best model is recorded at its best epoch's old step and linked to that epoch's metrics."""
    from mlflow.entities import Metric

    from tune.tracking.model_store import log_model

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(uri)
    result, _ = _finished_trial(tmp_path)
    run_id = client.create_run(client.create_experiment("old")).info.run_id
    client.log_batch(run_id, metrics=[Metric(k, v, 1, h["epoch"] - 1) for h in result.history
                                      for k, v in h.items() if k in ("val_pgd_acc", "train_loss")])
    log_model(uri, run_id, tmp_path / "checkpoint" / "run")
    best = result.final["best_epoch"]
    (output,) = client.get_run(run_id).outputs.model_outputs
    model = client.get_logged_model(output.model_id)
    assert output.step == best - 1
    assert {(m.key, m.step): m.value for m in model.metrics} == {
        (k, best - 1): result.history[best - 1][k] for k in ("val_pgd_acc", "train_loss")}


def test_a_long_run_name_is_cut_in_the_middle_keeping_the_seed():
    from tune.tracking.runs import run_name

    values = {"weight_net": "64-64", "meta_lr": 0.000123456, "seed": 2}
    assert run_name(values, "t") == "weight_net=64-64 meta_lr=0.0001235 seed=2"
    long = {f"param_{i}": "x" * 10 for i in range(8)} | {"seed": 11}
    name = run_name(long, "t", limit=60)
    assert len(name) == 60 and name.endswith("... seed=11") and name.startswith("param_0=xxxxxxxxxx param_1=")
    assert run_name({}, "trial_3") == "trial_3"
