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
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags and "rerun_of" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


@pytest.fixture(scope="module")
def smoke_search(tmp_path_factory):
    """One finished grid search (ablation_capacity on smoke), shared by the tests that read it."""
    root = tmp_path_factory.mktemp("search")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    argv = ["--space", "ablation_capacity", "--workload", "smoke", "--storage-path", str(root / "ray_results"),
            "--tracking-uri", uri, "--set", "plots=true"]
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
        assert {"config.yaml", "metrics.json", "plots"} <= names
        plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert {"plots/weights_per_class.png", "plots/adv_confusion.png", "plots/weight_extremes.png",
                "plots/weights_over_epochs.png"} <= plots
        assert 0.0 <= run.data.metrics["weight_pgd_auroc"] <= 1.0
        assert {f"test_pgd_acc_class_{k}" for k in range(10)} <= set(run.data.metrics)
    # epochs far shorter than --checkpoint-every (30 s): only the last report carries a checkpoint
    for trial in (root / "ray_results" / "ablation_capacity").glob("trial_*"):
        reports = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
        assert [r["checkpoint_dir_name"] is not None for r in reports] == [False, True], trial
        assert len(list(trial.glob("checkpoint_*"))) == 1


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
    (["--space", "ablation_capacity", "--checkpoint-every", "-5"], "--checkpoint-every -5: must be >= 0"),
    (["--space", "ablation_capacity", "--resume", "--checkpoint-every", "5"], "keeps the value it started with"),
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
    client = MlflowClient(uri)
    for r in children:  # pruned runs stopped before the last epoch and have no test metrics
        pruned = r.data.tags["trial_status"] == "pruned"
        assert ("test_clean_acc" in r.data.metrics) != pruned
        if not pruned:  # ASHA also stops a trial at max_t, inside its last report: its saved run came first
            assert {"config.yaml", "metrics.json"} <= {a.path for a in client.list_artifacts(r.info.run_id)}


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


@pytest.mark.slow
def test_report_numbers_equal_tracked_metrics(smoke_search, capsys):
    import csv
    import io

    from tune.report import main as report_main

    root, uri = smoke_search
    assert report_main(["--experiment", "ablation_capacity", "--tracking-uri", uri, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out.strip())))
    _, _, children = _children(uri, "ablation_capacity")
    by_value = {r.data.params["weight_net"]: r.data.metrics for r in children}
    assert sorted(row["weight_net"] for row in rows) == sorted(by_value)
    for row in rows:
        m = by_value[row["weight_net"]]
        assert float(row["clean_mean"]) == m["test_clean_acc"] and float(row["pgd_mean"]) == m["test_pgd_acc"]
        assert float(row["aa_mean"]) == m["test_aa_acc"] and row["n"] == "1"
        assert float(row["gap_mean"]) == pytest.approx(m["test_pgd_acc"] - m["test_clean_acc"], abs=1e-12)
    assert report_main(["--experiment", "ablation_capacity", "--tracking-uri", uri, "--importance"]) == 0
    out = capsys.readouterr().out
    assert "| weight_net | Clean | PGD | AA | PGD - Clean | n |" in out and "weight_net           1.000" in out


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
def test_rerun_best_makes_one_tagged_run_per_seed(smoke_search, capsys):
    from tune.rerun_best import main as rerun_main

    root, uri = smoke_search
    _, _, children = _children(uri, "ablation_capacity")
    trials = [r for r in children if "rerun_of" not in r.data.tags]
    best = max(trials, key=lambda r: r.data.metrics["best_val_pgd_acc"])
    rc = rerun_main(["--experiment", "ablation_capacity", "--tracking-uri", uri, "--seeds", "2",
                     "--aa-samples", "16", "--set", "aa_attacks=[apgd-ce]", "--set", "aa_n_iter=5",
                     "--storage-path", str(root / "rerun")])
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
    client, parents, children = _children(uri, "pareto")
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
    from tune.pareto import non_dominated

    pts = [(0.5, 0.9), (0.6, 0.8), (0.4, 0.85), (0.6, 0.8), (0.7, 0.1)]
    assert non_dominated(pts, ["max", "max"]) == [0, 1, 3, 4]
    assert non_dominated(pts, ["min", "min"]) == [1, 2, 3, 4]
