"""The search system end to end: a real smoke search on real Ray with a SQLite MLflow store,
dry runs, bad input, ASHA pruning told to Optuna, and a search on a separately started cluster."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from bilaw.config import TrainConfig
from tune.run_search import main

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")


def _children(uri: str, experiment: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


@pytest.fixture(scope="module")
def smoke_search(tmp_path_factory):
    """One finished grid search (ablation_capacity on smoke), shared by the tests that read it."""
    root = tmp_path_factory.mktemp("search")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    argv = ["--space", "ablation_capacity", "--workload", "smoke", "--storage-path", str(root / "ray_results"),
            "--tracking-uri", uri]
    assert main(argv) == 0
    return root, uri


@pytest.mark.slow
def test_smoke_search_tracks_parent_and_children(smoke_search):
    root, uri = smoke_search
    client, parents, children = _children(uri, "ablation_capacity")
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["space"] == "ablation_capacity" and parent.data.tags["workload"] == "smoke"
    assert parent.data.tags["sampler"] == "grid" and "--space ablation_capacity" in parent.data.tags["command"]
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED" and run.data.tags["trial_status"] == "completed"
        assert run.data.params["method"] == "bilaw" and run.data.params["dataset"] == "digits"
        assert run.data.params["epochs"] == "2"
        history = client.get_metric_history(run.info.run_id, "val_pgd_acc")
        assert sorted(m.step for m in history) == [0, 1]
        best = client.get_metric_history(run.info.run_id, "best_val_pgd_acc")
        assert max(m.value for m in best) == max(m.value for m in history)
        for key in ("test_clean_acc", "test_pgd_acc", "test_aa_acc", "last_test_pgd_acc"):
            assert 0.0 <= run.data.metrics[key] <= 1.0
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "metrics.json"} <= names


@pytest.mark.slow
def test_grid_runs_each_value_exactly_once(smoke_search):
    root, uri = smoke_search
    _, _, children = _children(uri, "ablation_capacity")
    assert sorted(r.data.params["weight_net"] for r in children) == sorted(["128", "64", "64-64", "256"])
    study = optuna.load_study(study_name="ablation_capacity",
                              storage=f"sqlite:///{root / 'ray_results' / 'ablation_capacity' / 'optuna.db'}")
    assert sorted(t.params["weight_net"] for t in study.trials) == sorted(["128", "64", "64-64", "256"])
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


@pytest.mark.slow
def test_best_config_is_the_best_trial_and_trains(smoke_search):
    root, uri = smoke_search
    _, _, children = _children(uri, "ablation_capacity")
    path = root / "ray_results" / "ablation_capacity" / "best_config.yaml"
    cfg = TrainConfig.from_yaml(path)
    best = max(r.data.metrics["best_val_pgd_acc"] for r in children)
    winners = {r.data.params["weight_net"] for r in children if r.data.metrics["best_val_pgd_acc"] == best}
    assert cfg.weight_net in winners and cfg.method == "bilaw" and cfg.epochs == 2


@pytest.mark.slow
def test_existing_experiment_is_not_overwritten(smoke_search, capsys):
    root, uri = smoke_search
    rc = main(["--space", "ablation_capacity", "--workload", "smoke", "--storage-path", str(root / "ray_results"),
               "--tracking-uri", uri])
    assert rc == 2
    assert "already has results" in capsys.readouterr().err


def test_dry_run_starts_no_ray(tmp_path):
    code = ("import sys; from tune.run_search import main; "
            "rc = main(['--space', 'bilaw_tpe', '--dry-run', '--set', 'epochs=3']); "
            "print('RAY_IMPORTED', 'ray' in sys.modules, rc)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "RAY_IMPORTED False 0" in out.stdout, out.stderr
    assert "meta_lr" in out.stdout and "loguniform" in out.stdout and "epochs                 3" in out.stdout
    assert "0 GPU per trial" in out.stdout
    assert not (tmp_path / "mlruns.db").exists() and not (tmp_path / "ray_results").exists()


def test_list_spaces(capsys):
    assert main(["--list-spaces"]) == 0
    out = capsys.readouterr().out
    for name in ("ablation_capacity", "ablation_trades", "ablation_margin_input", "gairat", "wmmr", "mail",
                 "compare_methods", "bilaw_tpe", "pareto"):
        assert name in out


@pytest.mark.parametrize("argv, message", [
    (["--space", "ablation_capacty"], "did you mean 'ablation_capacity'"),
    (["--space", "ablation_capacity", "--workload", "smok"], "did you mean 'smoke'"),
    (["--space", "ablation_capacity", "--set", "eps=0"], "eps: 0"),
    (["--space", "ablation_capacity", "--set", "wieght_net=64"], "did you mean 'weight_net'"),
    (["--space", "ablation_capacity", "--gpus-per-trial", "1.5"], "--gpus-per-trial 1.5"),
    (["--space", "ablation_capacity", "--gpus-per-trial", "1"], "the cluster has 0 GPUs"),
    (["--space", "bilaw_tpe", "--num-samples", "0"], "--num-samples 0"),
    (["--space", "ablation_capacity", "--seeds", "0"], "--seeds '0'"),
    (["--space", "ablation_capacity", "--num-samples", "3"], "runs each of its 4 values once per seed"),
])
def test_bad_input_is_a_message_before_ray(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if "--gpus-per-trial" in argv and "1" in argv:
        pytest.importorskip("torch").cuda.is_available() and pytest.skip("this machine has a GPU")
    assert main(argv + ["--workload", "smoke"] if "--workload" not in argv else argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "mlruns.db").exists()


def test_unreachable_tracking_server_fails_fast(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    rc = main(["--space", "ablation_capacity", "--workload", "smoke", "--tracking-uri", f"http://127.0.0.1:{port}"])
    assert rc == 2 and time.monotonic() - start < 20
    assert f"cannot reach the MLflow tracking server at http://127.0.0.1:{port}" in capsys.readouterr().err


def test_broken_space_file_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "broken.yaml"
    bad.write_text("description: x\nsearch:\n  lr: {uniform: [0.1, 0.01]}\nsampler: tpe\nnum_samples: 2\n")
    assert main(["--space", str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "broken.yaml" in err and "lr" in err


ASHA_SPACE = """
description: AT learning rate under ASHA (test)
workload: smoke
base: {method: at, epochs: 4}
search:
  lr: {loguniform: [0.001, 0.5]}
sampler: tpe
num_samples: 4
scheduler: {asha: {grace_period: 1, reduction_factor: 2}}
"""


@pytest.mark.slow
def test_asha_stopped_trials_are_pruned_in_optuna_and_mlflow(tmp_path):
    space = tmp_path / "asha_lr.yaml"
    space.write_text(ASHA_SPACE)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    assert main(["--space", str(space), "--storage-path", str(tmp_path / "rr"), "--tracking-uri", uri,
                 "--max-concurrent", "1"]) == 0
    study = optuna.load_study(study_name="asha_lr", storage=f"sqlite:///{tmp_path / 'rr' / 'asha_lr' / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert len(states) == 4 and optuna.trial.TrialState.PRUNED in states
    assert optuna.trial.TrialState.COMPLETE in states
    _, _, children = _children(uri, "asha_lr")
    by_status = {r.data.tags["trial_status"] for r in children}
    assert by_status == {"completed", "pruned"}
    for r in children:  # pruned runs stopped before the last epoch and have no test metrics
        pruned = r.data.tags["trial_status"] == "pruned"
        assert ("test_clean_acc" in r.data.metrics) != pruned


@pytest.mark.slow
def test_search_on_a_separately_started_ray_cluster(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    start = subprocess.run([str(RAY), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                            "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats"],
                           capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert start.returncode == 0, start.stderr[-2000:]
    try:
        uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
        out = subprocess.run([sys.executable, str(REPO / "tune" / "run_search.py"), "--space", "ablation_capacity",
                              "--workload", "smoke", "--address", f"127.0.0.1:{port}", "--storage-path",
                              str(tmp_path / "rr"), "--tracking-uri", uri],
                             capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "best best_val_pgd_acc" in out.stdout
        _, parents, children = _children(uri, "ablation_capacity")
        assert len(parents) == 1 and len(children) == 4
        assert all(r.info.status == "FINISHED" for r in children)
    finally:
        subprocess.run([str(RAY), "stop", "--force"], capture_output=True, timeout=120, env=env)
