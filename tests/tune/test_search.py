"""The search system end to end: a real smoke search on real Ray with a SQLite MLflow store,
dry runs, bad input, ASHA pruning told to Optuna, and a search on a separately started cluster."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import numpy as np
import optuna
import pytest
import yaml
from helpers import (RAY, REPO, free_port, group_members, ray_env, run_search, search_runs, stop_group, tracebacks,
                     tracking_copy)
from mlflow.tracking import MlflowClient
from scipy import stats

from bilaw.config.train_config import TrainConfig
from tune.run_search import main


# smoke_search (tests/tune/conftest.py): one finished grid search (ablation_capacity on smoke, plots,
# --register) shared with the other files that read it; the tests here only read it (rerun_best
# adds its runs to a copy of its store)


@pytest.mark.slow
def test_smoke_search_tracks_parent_and_children(smoke_search):
    folder, uri = smoke_search.folder, smoke_search.uri
    client, _, parents, children = search_runs(uri, "ablation_capacity", skip_reruns=True)
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["space"] == "ablation_capacity" and parent.data.tags["workload"] == "smoke"
    assert parent.data.tags["sampler"] == "grid" and "--space ablation_capacity" in parent.data.tags["command"]
    assert parent.info.run_name.startswith("ablation_capacity on smoke ")
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED" and run.data.tags["trial_status"] == "completed"
        assert run.data.params["method"] == "bilaw" and run.data.params["dataset"] == "digits"
        assert run.data.params["epochs"] == "2"
        history = client.get_metric_history(run.info.run_id, "val_pgd_acc")
        assert sorted(m.step for m in history) == [1, 2]  # epochs count from 1
        best = client.get_metric_history(run.info.run_id, "best_val_pgd_acc")
        assert max(m.value for m in best) == max(m.value for m in history)
        for key in ("test_clean_acc", "test_pgd_acc", "test_aa_acc", "last_test_pgd_acc"):
            assert 0.0 <= run.data.metrics[key] <= 1.0
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "metrics.json", "plots"} <= names
        plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert {"plots/weights_per_class.png", "plots/adv_confusion.png", "plots/weight_extremes.png",
                "plots/weights_over_epochs.png"} <= plots
        assert 0.0 <= run.data.metrics["weight_pgd_auroc"] <= 1.0
        cpu = client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")  # machine-wide
        assert sorted(m.step for m in cpu) == [1, 2] and all(0.0 <= m.value <= 100.0 for m in cpu)
        assert not [k for k in run.data.metrics if k.startswith("test_pgd_acc_class_")]  # an artifact instead:
        per_class = json.loads((Path(client.download_artifacts(run.info.run_id, "per_class_pgd_acc.json"))).read_text())
        saved = json.loads(Path(client.download_artifacts(run.info.run_id, "metrics.json")).read_text())["final"]
        assert [per_class["test_pgd_acc"][str(k)] for k in range(10)] == saved["test_per_class_pgd_acc"]
        assert "plots/per_class_pgd_acc.png" in plots
        assert run.info.run_name == f"weight_net={run.data.params['weight_net']} seed=0"  # what was searched
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "search")}
    assert {"search/optimization_history.png", "search/val_pgd_acc_by_trial.png", "search/slice.png"} <= figures
    png = Path(client.download_artifacts(parent.info.run_id, "search/val_pgd_acc_by_trial.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    winner = next(r for r in children if r.info.run_id == parent.data.tags["winner_run_id"])  # ties: best_config's
    assert winner.data.metrics["best_val_pgd_acc"] == max(r.data.metrics["best_val_pgd_acc"] for r in children)
    best = yaml.safe_load((folder / "best_config.yaml").read_text())
    assert winner.data.params["weight_net"] == best["weight_net"] and parent.data.tags["winner_run_name"] == winner.info.run_name
    assert parent.data.metrics["winner_test_pgd_acc"] == winner.data.metrics["test_pgd_acc"]
    # the search's last word: the winner against each other config, point by point on the held-out set
    lines = Path(client.download_artifacts(parent.info.run_id, "paired_comparisons.txt")).read_text().splitlines()
    won = np.load(client.download_artifacts(winner.info.run_id, "per_point.npz"))["holdout_pgd"]
    assert won.mean() == pytest.approx(winner.data.metrics["best_val_pgd_acc"], abs=1e-12)
    apart = []
    for run in (r for r in children if r is not winner):
        other = np.load(client.download_artifacts(run.info.run_id, "per_point.npz"))["holdout_pgd"]
        only_won, only_other = int((won & ~other).sum()), int((~won & other).sum())
        p = 1.0 if only_won + only_other == 0 else stats.binomtest(only_won, only_won + only_other).pvalue
        line = next(x for x in lines if x.startswith(f"  weight_net={run.data.params['weight_net']} "))
        assert f"{100 * (won.mean() - other.mean()):+6.2f} points" in line and f"p = {p:.3g}, {len(won)} points" in line
        assert ("not distinguishable" in line) == (p >= 0.05)
        apart.append(p < 0.05)  # the winner leads on the held-out mean, so apart means better
    assert parent.data.tags["winner_distinguishable"] == ("runs only" if all(apart) else "false")  # one seed
    assert lines[-1].startswith(f"weight_net={winner.data.params['weight_net']} is ")
    # epochs far shorter than --checkpoint-every (30 s): only the last report carries a checkpoint
    for trial in folder.glob("trial_*"):
        reports = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
        assert [r["checkpoint_dir_name"] is not None for r in reports] == [False, True], trial
        assert len(list(trial.glob("checkpoint_*"))) == 1


@pytest.mark.slow
def test_the_winners_model_is_logged_registered_and_fetched(smoke_search, tmp_path):
    """The winner's model loads with mlflow.pytorch.load_model, takes eval mode and gradients,
    and gives its run's test clean accuracy on the same test images; the registered version
    comes from the winner's run; fetch_model rebuilds a run folder bilaw reads."""
    import mlflow
    import torch

    from bilaw.data.datasets import load_data
    from bilaw.runs.saved import load_run
    from tune.fetch_model import main as fetch_main

    uri = smoke_search.uri
    client, _, parents, children = search_runs(uri, "ablation_capacity", skip_reruns=True)
    winner_id = parents[0].data.tags["winner_run_id"]
    winner = next(r for r in children if r.info.run_id == winner_id)
    mlflow.set_tracking_uri(uri)
    model = mlflow.pytorch.load_model(f"runs:/{winner_id}/model")
    model.eval()
    cfg = TrainConfig.from_dict(yaml.safe_load(Path(client.download_artifacts(winner_id, "config.yaml")).read_text()))
    data = load_data(cfg.dataset, meta_val_size=cfg.meta_val_size, holdout_val_size=cfg.holdout_val_size,
                     seed=cfg.seed)
    with torch.no_grad():
        correct = int((model(data.x_test).argmax(1) == data.y_test).sum())
    assert correct / len(data.y_test) == pytest.approx(winner.data.metrics["test_clean_acc"], abs=1e-12)
    x = data.x_test[:4].clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(model(x), data.y_test[:4]).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # an attack can run on it
    (version,) = client.search_model_versions("name='ablation_capacity'")
    assert version.run_id == winner_id and version.tags["weight_net"] == winner.data.params["weight_net"]  # searched
    assert fetch_main([f"models:/ablation_capacity/{version.version}", "--out", str(tmp_path / "fetched"),
                       "--tracking-uri", uri]) == 0
    fetched, _ = load_run(tmp_path / "fetched")
    assert torch.equal(fetched(data.x_test[:8]), model(data.x_test[:8]))
    assert fetch_main(["models:/ablation_capacity/99", "--out", str(tmp_path / "x"), "--tracking-uri", uri]) == 2


@pytest.mark.slow
def test_grid_runs_each_value_exactly_once(smoke_search):
    folder, uri = smoke_search.folder, smoke_search.uri
    children = search_runs(uri, "ablation_capacity").children
    assert sorted(r.data.params["weight_net"] for r in children) == sorted(["128", "64", "64-64", "256"])
    study = optuna.load_study(study_name="ablation_capacity",
                              storage=f"sqlite:///{folder / 'optuna.db'}")
    assert sorted(t.params["weight_net"] for t in study.trials) == sorted(["128", "64", "64-64", "256"])
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    # the study a dashboard opens (optuna-dashboard sqlite:///.../optuna.db) holds each trial's value
    tracked = {r.data.params["weight_net"]: r.data.metrics["best_val_pgd_acc"] for r in children}
    assert {t.params["weight_net"]: t.value for t in study.trials} == tracked


@pytest.mark.slow
def test_best_config_is_the_best_trial_and_trains(smoke_search):
    children = search_runs(smoke_search.uri, "ablation_capacity").children
    path = smoke_search.folder / "best_config.yaml"
    cfg = TrainConfig.from_yaml(path)
    best = max(r.data.metrics["best_val_pgd_acc"] for r in children)
    winners = {r.data.params["weight_net"] for r in children if r.data.metrics["best_val_pgd_acc"] == best}
    assert cfg.weight_net in winners and cfg.method == "bilaw" and cfg.epochs == 2


@pytest.mark.slow
def test_existing_experiment_is_not_overwritten(smoke_search, capsys):
    root, uri = smoke_search.root, smoke_search.uri
    rc = main(["--space", "ablation_capacity", "--workload", "smoke", "--storage-path", str(root / "ray_results"),
               "--tracking-uri", uri])
    assert rc == 2
    assert "already has results" in capsys.readouterr().err


@pytest.mark.slow
def test_importing_the_search_leaves_the_environment_alone(monkeypatch):
    """Ray Tune's settings are set when a search runs, not when tune.search is imported, and a
    value the user set wins."""
    code = ("import os; before = dict(os.environ); import tune.search as s; "
            "changed = [k for k in s.TUNE_ENV if os.environ.get(k) != before.get(k)]; "
            "assert not changed, changed; print(sorted(s.TUNE_ENV))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO,
                         env={k: v for k, v in os.environ.items() if k not in ("RAY_AIR_NEW_OUTPUT",)})
    assert out.returncode == 0 and "RAY_AIR_NEW_OUTPUT" in out.stdout, out.stderr[-2000:]
    from tune.search import TUNE_ENV, use_tune_env

    for key in TUNE_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "30")
    use_tune_env()
    assert os.environ["TUNE_GLOBAL_CHECKPOINT_S"] == "30" and os.environ["RAY_AIR_NEW_OUTPUT"] == "0"


@pytest.mark.slow
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
    (["--space", "ablation_capacity", "--checkpoint-every", "-5"], "--checkpoint-every -5: must be >= 0"),
])
def test_bad_input_is_a_message_before_ray(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if "--gpus-per-trial" in argv and "1" in argv:
        pytest.importorskip("torch").cuda.is_available() and pytest.skip("this machine has a GPU")
    assert main(argv + ["--workload", "smoke"] if "--workload" not in argv else argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "mlruns.db").exists()


def test_the_driver_loads_a_dataset_from_disk_before_ray_but_not_digits(monkeypatch):
    """A missing or damaged file fails before Ray starts; digits ships inside scikit-learn, so
    loading it (and importing scikit-learn) in the driver would check nothing."""
    from bilaw.config.train_config import TrainConfig
    from bilaw.data.datasets import DATASETS
    from tune.plan import check_data

    loaded = []
    monkeypatch.setattr(DATASETS, "get", lambda name: lambda data_dir=None: loaded.append((name, data_dir)))
    check_data(TrainConfig(dataset="digits"))
    assert loaded == []
    check_data(TrainConfig(dataset="fashion_mnist", data_dir="/data"))
    assert loaded == [("fashion_mnist", "/data")]


def test_unreachable_tracking_server_fails_fast(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    port = free_port()
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
    client, _, _, children = search_runs(uri, "asha_lr")
    by_status = {r.data.tags["trial_status"] for r in children}
    assert by_status == {"completed", "pruned"}
    for r in children:  # pruned runs stopped before the last epoch and have no test metrics
        pruned = r.data.tags["trial_status"] == "pruned"
        assert ("test_clean_acc" in r.data.metrics) != pruned
        if not pruned:  # ASHA also stops a trial at max_t, inside its last report: its saved run came first
            assert {"config.yaml", "metrics.json"} <= {a.path for a in client.list_artifacts(r.info.run_id)}


def _reported_trial(trial_id: str, config: dict, value: float):
    """A finished trial as Ray's progress reporter reads it (its storage only names the folder)."""
    from ray.tune.experiment import Trial

    trial = Trial("train_trial", config=config, stub=True, trial_id=trial_id)
    trial.storage = SimpleNamespace(experiment_driver_staging_path="ray_results", trial_driver_staging_path=None)
    trial.update_last_result({"best_val_pgd_acc": value, "epoch": 1, "config": config})
    trial.set_status(Trial.TERMINATED)
    return trial


def test_progress_report_shows_a_conditional_parameter_a_trial_lacks(capsys):
    """bilaw_tpe searches trades_beta only for BiLAW-TRADES; a leading plain BiLAW trial shows "-" in
    the current-best line (Ray's own reporter raises KeyError there) and a blank table cell."""
    from tune.search import PROGRESS_COLUMNS, ConditionalParamsReporter

    trials = [_reported_trial("aaaa", {"method": "bilaw_trades", "trades_beta": 6.5, "meta_lr": 0.01}, 0.3),
              _reported_trial("bbbb", {"method": "bilaw", "meta_lr": 0.02}, 0.4)]
    reporter = ConditionalParamsReporter(parameter_columns=["method", "trades_beta", "meta_lr"],
                                         metric_columns=PROGRESS_COLUMNS,
                                         print_intermediate_tables=True)  # whatever Tune's global verbosity
    reporter.setup(start_time=time.time(), total_samples=2, metric="best_val_pgd_acc", mode="max")
    reporter.report(trials, True)
    out = capsys.readouterr().out
    assert ("Current best trial: bbbb with best_val_pgd_acc=0.4 and parameters="
            "{'method': 'bilaw', 'trades_beta': '-', 'meta_lr': 0.02}") in out
    header, *rows = [[c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines()
                     if line.startswith("| ")]
    cells = {row[0]: dict(zip(header, row)) for row in rows}
    assert cells["train_trial_aaaa"]["trades_beta"] == "6.5" and cells["train_trial_bbbb"]["trades_beta"] == ""


# ray_tmp (tests/tune/conftest.py): Ray's temp folder of one test


@contextmanager
def _separate_cluster(ray_tmp: Path) -> Iterator[tuple[str, Path, subprocess.Popen]]:
    """A Ray head node started apart from any search with `ray start --head --block`: yields its
    address, its session folder and the `ray start` process. The node's processes share that
    process's group; on exit it is stopped by its PID (SIGTERM: its node stops its processes),
    then any process left in its group, by PID. Never `ray stop`: that stops every Ray here."""
    port = free_port()
    log = open(ray_tmp / "ray_start.log", "w")
    proc = subprocess.Popen([str(RAY), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                             f"--port={port}", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false",
                             "--disable-usage-stats"], stdout=log, stderr=subprocess.STDOUT, env=ray_env(ray_tmp),
                            cwd=ray_tmp, start_new_session=True)
    try:
        address_file = ray_tmp / "ray" / "ray_current_cluster"
        deadline = time.monotonic() + 180
        while not address_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert address_file.exists(), (ray_tmp / "ray_start.log").read_text()[-2000:]
        yield f"127.0.0.1:{port}", (ray_tmp / "ray" / "session_latest").resolve(), proc
    finally:
        stop_group(proc)
        log.close()


def _search(tmp_path: Path, env: dict[str, str], *extra: str) -> tuple[subprocess.CompletedProcess, str]:
    """A one-trial search run as a user runs it; returns the finished process and its MLflow URI."""
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    out = run_search("--space", "mail", "--workload", "smoke", "--num-samples", "1", "--storage-path",
                     str(tmp_path / "rr"), "--tracking-uri", uri, *extra, cwd=tmp_path, env=env)
    return out, uri


def _driver_session(tmp_path: Path, experiment: str) -> Path:
    return Path(json.loads((tmp_path / "rr" / experiment / "driver.json").read_text())["session_dir"])


def _assert_finished(out: subprocess.CompletedProcess, uri: str, experiment: str, trials: int) -> None:
    log = out.stdout + out.stderr
    assert out.returncode == 0 and not tracebacks(log), log[-4000:]
    assert "best best_val_pgd_acc" in out.stdout
    assert re.search(r"95% interval \[0\.\d{4}, [01]\.\d{4}\] \(Wilson, \d+ points\)", out.stdout), out.stdout[-2000:]
    _, _, parents, children = search_runs(uri, experiment)
    assert len(parents) == 1 and len(children) == trials
    assert all(r.info.status == "FINISHED" for r in children)


@pytest.mark.slow
def test_search_on_a_separately_started_ray_cluster(tmp_path, ray_tmp):
    with _separate_cluster(ray_tmp) as (address, session, cluster):
        uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
        out = run_search("--space", "ablation_capacity", "--workload", "smoke", "--address", address,
                         "--storage-path", str(tmp_path / "rr"), "--tracking-uri", uri, cwd=tmp_path,
                         env=ray_env(ray_tmp))
        _assert_finished(out, uri, "ablation_capacity", 4)
        assert _driver_session(tmp_path, "ablation_capacity") == session  # joined, as --address asked
        assert cluster.poll() is None
    assert not group_members(cluster.pid)


@pytest.mark.slow
def test_search_without_address_ignores_a_stale_cluster_file(tmp_path, ray_tmp):
    """A head node killed without cleaning up leaves its address in Ray's cluster file (and maybe
    in RAY_ADDRESS); a search without --address starts its own Ray all the same."""
    dead = f"127.0.0.1:{free_port()}"
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text(dead)
    out, uri = _search(tmp_path, ray_env(ray_tmp, RAY_ADDRESS=dead))
    _assert_finished(out, uri, "mail", 1)
    session = _driver_session(tmp_path, "mail")
    assert session.parent == ray_tmp / "ray" and session.name.startswith("session_")
    assert (ray_tmp / "ray" / "ray_current_cluster").read_text() == dead


@pytest.mark.slow
def test_search_without_address_does_not_join_a_running_cluster(tmp_path, ray_tmp):
    with _separate_cluster(ray_tmp) as (_, cluster_session, cluster):
        cluster_file = (ray_tmp / "ray" / "ray_current_cluster").read_text()
        before = {p.name for p in (ray_tmp / "ray").glob("session_2*")}
        out, uri = _search(tmp_path, ray_env(ray_tmp))
        _assert_finished(out, uri, "mail", 1)
        session = _driver_session(tmp_path, "mail")
        assert session != cluster_session and session.parent == ray_tmp / "ray"
        assert session.name not in before  # a fresh session of its own
        assert cluster.poll() is None  # the other cluster is left running, still the one its file names
        assert (ray_tmp / "ray" / "ray_current_cluster").read_text() == cluster_file


@pytest.mark.slow
def test_report_numbers_equal_tracked_metrics(smoke_search, capsys):
    import csv
    import io

    from tune.report import main as report_main

    uri = smoke_search.uri
    assert report_main(["--experiment", "ablation_capacity", "--tracking-uri", uri, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out.strip())))
    children = search_runs(uri, "ablation_capacity").children
    by_value = {r.data.params["weight_net"]: r.data.metrics for r in children}
    assert sorted(row["weight_net"] for row in rows) == sorted(by_value)
    for row in rows:
        m = by_value[row["weight_net"]]
        assert float(row["clean_mean"]) == m["test_clean_acc"] and float(row["pgd_mean"]) == m["test_pgd_acc"]
        assert float(row["aa_mean"]) == m["test_aa_acc"] and row["n"] == "1"
        assert float(row["gap_mean"]) == pytest.approx(m["test_pgd_acc"] - m["test_clean_acc"], abs=1e-12)
    assert report_main(["--experiment", "ablation_capacity", "--tracking-uri", uri, "--importance"]) == 0
    out = capsys.readouterr().out
    assert "| weight_net | Clean | PGD-5 | AA (apgd-ce, 5 iterations) | PGD - Clean | n |" in out  # the smoke workload's
    assert "weight_net           1.000" in out


def test_report_errors(tmp_path, capsys):
    from tune.report import main as report_main

    assert report_main(["--experiment", "x", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert "no tracking database" in capsys.readouterr().err
    MlflowClient(f"sqlite:///{tmp_path / 'm.db'}").create_experiment("empty")
    assert report_main(["--experiment", "empty", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 2
    assert "has no finished search trial" in capsys.readouterr().err
    assert report_main(["--experiment", "emty", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 2
    assert "no experiment 'emty'" in capsys.readouterr().err


@pytest.mark.slow
def test_rerun_best_makes_one_tagged_run_per_seed(smoke_search, tmp_path, capsys):
    """On a copy of the shared search's store: the re-runs are runs of its experiment."""
    from tune.rerun_best import main as rerun_main

    uri = tracking_copy(smoke_search.uri, tmp_path)
    children = search_runs(uri, "ablation_capacity").children
    trials = [r for r in children if "rerun_of" not in r.data.tags]
    best = max(trials, key=lambda r: r.data.metrics["best_val_pgd_acc"])
    rc = rerun_main(["--experiment", "ablation_capacity", "--tracking-uri", uri, "--seeds", "2",
                     "--aa-samples", "16", "--set", "aa_attacks=[apgd-ce]", "--set", "aa_n_iter=5",
                     "--storage-path", str(tmp_path / "rerun")])
    assert rc == 0
    out = capsys.readouterr().out
    assert f"2 re-runs of {best.info.run_id}" in out and "AutoAttack" in out
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("ablation_capacity")
    reruns = client.search_runs([exp.experiment_id], filter_string=f"tags.rerun_of = '{best.info.run_id}'")
    assert sorted(r.data.params["seed"] for r in reruns) == ["0", "1"]
    skip = {"seed", "aa_samples", "aa_attacks", "aa_n_iter", "eval_pgd_steps", "device"}
    for r in reruns:
        assert r.info.status == "FINISHED" and "mlflow.parentRunId" not in r.data.tags
        assert {k: v for k, v in r.data.params.items() if k not in skip} == \
               {k: v for k, v in best.data.params.items() if k not in skip}
        assert r.data.params["aa_samples"] == "16" and r.data.params["eval_pgd_steps"] == "20"
        assert 0.0 <= r.data.metrics["test_aa_acc"] <= r.data.metrics["test_clean_acc"]
    from tune.report import main as report_main

    assert report_main(["--experiment", "ablation_capacity", "--tracking-uri", uri, "--reruns", "--by", "weight_net",
                        "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith(best.data.params["weight_net"] + ",") and lines[1].endswith(",2")


@pytest.mark.slow
def test_rerun_best_without_finished_runs(tmp_path, capsys):
    from tune.rerun_best import main as rerun_main

    MlflowClient(f"sqlite:///{tmp_path / 'm.db'}").create_experiment("empty")
    assert rerun_main(["--experiment", "empty", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 2
    assert "has no finished search trial" in capsys.readouterr().err


@pytest.mark.slow
def test_pareto_search_writes_exactly_the_non_dominated_trials(tmp_path):
    import csv

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    assert main(["--space", "pareto", "--workload", "smoke", "--num-samples", "4", "--storage-path",
                 str(tmp_path / "rr"), "--tracking-uri", uri]) == 0
    folder = tmp_path / "rr" / "pareto"
    rows = list(csv.DictReader(open(folder / "pareto_front.csv")))
    client, _, parents, children = search_runs(uri, "pareto")
    assert len(children) == 4
    points = {r.data.tags["ray_trial_id"]: (r.data.metrics["best_val_pgd_acc"], r.data.metrics["val_clean_acc"])
              for r in children}
    expected = {t for t, (a, b) in points.items()
                if not any(c >= a and d >= b and (c > a or d > b) for u, (c, d) in points.items() if u != t)}
    assert {row["trial_id"] for row in rows} == expected
    for row in rows:
        assert (float(row["best_val_pgd_acc"]), float(row["val_clean_acc"])) == points[row["trial_id"]]
    png = (folder / "pareto_front.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    names = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"pareto_front.csv", "pareto_front.png", "best_config.yaml"} <= names


def test_dominance():
    from tune.results.pareto import non_dominated

    pts = [(0.5, 0.9), (0.6, 0.8), (0.4, 0.85), (0.6, 0.8), (0.7, 0.1)]
    assert non_dominated(pts, ["max", "max"]) == [0, 1, 3, 4]
    assert non_dominated(pts, ["min", "min"]) == [1, 2, 3, 4]


def test_the_config_a_trial_reports_is_the_one_the_driver_reads():
    """The driver reads each finished trial's TrainConfig from its final report, not from Ray's
    config dict; a result without one (an unfinished trial, a search stored before) is rebuilt."""
    from tune.trainable import META_KEY, RAN_CONFIG_KEY, ran_config, trial_config

    config = {"weight_net": "64", "epochs": 2, META_KEY: {"seeds": [3], "threads": 2}}
    rebuilt = trial_config(config)
    assert (rebuilt.weight_net, rebuilt.seed, rebuilt.threads) == ("64", 3, 2)
    ran = rebuilt.replace(lr=0.05)  # what the trial says it ran wins over what its Ray config rebuilds to
    reported = SimpleNamespace(config=config, metrics={RAN_CONFIG_KEY: json.dumps(ran.to_dict())})
    assert ran_config(reported) == ran and ran_config(reported).lr == 0.05
    assert ran_config(SimpleNamespace(config=config, metrics={"epoch": 1})) == rebuilt
    assert ran_config(SimpleNamespace(config=config, metrics=None)) == rebuilt


@pytest.mark.slow
def test_each_trials_final_report_carries_the_config_its_saved_run_records(smoke_search):
    from bilaw.runs.saved import load_run
    from tune.trainable import RAN_CONFIG_KEY, SAVED_RUN, trial_config

    results = sorted(smoke_search.folder.glob("*/result.json"))
    assert len(results) == 4
    for path in results:
        last = json.loads(path.read_text().splitlines()[-1])
        ran = TrainConfig.from_dict(json.loads(last[RAN_CONFIG_KEY]))
        assert ran == trial_config(last["config"]) and ran.weight_net == last["config"]["weight_net"]
        saved = max(path.parent.glob(f"checkpoint_*/{SAVED_RUN}"))
        assert load_run(saved)[1] == ran


def test_the_grid_done_note_of_rays_optuna_search_is_dropped_and_other_warnings_kept():
    import logging

    from ray.tune.search.optuna import OptunaSearch

    from tune.search import _GRID_DONE

    class Keep(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.WARNING)
            self.messages: list[str] = []

        def emit(self, record) -> None:
            self.messages.append(record.getMessage())

    log, kept = logging.getLogger(OptunaSearch.__module__), Keep()  # Ray's loggers do not propagate
    log.addFilter(_GRID_DONE)
    log.addHandler(kept)
    try:
        log.warning("`Study.stop` is supposed to be invoked inside an objective function or a callback.")
        log.warning("The reported value is NaN.")
    finally:
        log.removeFilter(_GRID_DONE)
        log.removeHandler(kept)
    assert kept.messages == ["The reported value is NaN."]
