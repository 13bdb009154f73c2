"""tune/reproduce.py: the paper's tables at fixed hyperparameters, read back from MLflow."""
from __future__ import annotations

import statistics

import pytest
from helpers import REPO
import yaml

from bilaw.config.train_config import TrainConfig
from tune.reproduce import main as reproduce_main


ARGS = ["--table", "1", "--dataset", "digits", "--model", "fc1", "--norm", "linf", "--methods", "at,bilaw",
        "--seeds", "2", "--epochs", "2", "--set", "aa_samples=16", "--set", "aa_attacks=[apgd-ce]",
        "--set", "aa_n_iter=5", "--set", "pgd_steps=5", "--set", "eval_pgd_steps=5", "--set", "analysis_samples=0"]


def _rows(text: str, title: str) -> dict[str, list[str]]:
    block = text.split(f"## {title}")[1].split("## ")[0]
    lines = [line for line in block.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[1:])} | {
        "__header__": header}


@pytest.mark.slow
def test_table_cells_equal_the_tracked_runs_mean_and_std(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    out = tmp_path / "results"
    assert reproduce_main(ARGS + ["--out", str(out), "--tracking-uri", uri]) == 0
    text = (out / "table1_digits.md").read_text()
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("reproduce_table1")
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'")
    assert sorted(r.data.tags["reproduce_key"] for r in runs) == [
        f"table1/digits/{m}/seed{s}" for m in ("at", "bilaw") for s in (0, 1)]
    best, last = _rows(text, "Best state"), _rows(text, "Last epoch")
    assert best["__header__"][1:4] == ["fc1, linf (digits): Clean", "fc1, linf (digits): PGD",
                                       "fc1, linf (digits): AA"]
    for label, method in (("AT", "at"), ("BiLAW", "bilaw")):
        mine = [r for r in runs if r.data.tags["method"] == method]
        assert len(mine) == 2
        for table, metrics in ((best, ["test_clean_acc", "test_pgd_acc", "test_aa_acc"]),
                               (last, ["last_test_clean_acc", "last_test_pgd_acc"])):
            for col, metric in enumerate(metrics, start=1):
                values = [100 * r.data.metrics[metric] for r in mine]
                expected = f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"
                assert table[label][col] == expected, (label, metric)
        assert best[label][-1] == "2 × 2"
    # every run's folder holds the run, with the paper's protocol for the baselines
    cfg = yaml.safe_load((out / "table1/digits/at/seed1/config.yaml").read_text())
    assert cfg["baselines_full_train"] is True and cfg["seed"] == 1 and cfg["epochs"] == 2
    import torch  # and the thread count it trained with, so that its config.yaml re-runs it exactly

    assert cfg["threads"] == torch.get_num_threads() and runs[0].data.params["threads"] == str(cfg["threads"])

    # a second call reuses the finished runs (no training) and writes the same table
    capsys.readouterr()
    assert reproduce_main(ARGS + ["--out", str(out), "--tracking-uri", uri]) == 0
    printed = capsys.readouterr().out
    assert "training" not in printed and printed.count("reusing") == 4
    assert (out / "table1_digits.md").read_text() == text


@pytest.mark.slow
def test_a_finished_run_of_another_config_is_refused_before_training(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    out = tmp_path / "results"
    one = ["--table", "1", "--dataset", "digits", "--model", "fc1", "--norm", "linf", "--methods", "at",
           "--seeds", "1", "--epochs", "1", "--set", "aa_samples=0", "--set", "analysis_samples=0",
           "--out", str(out), "--tracking-uri", uri]
    assert reproduce_main(one) == 0
    capsys.readouterr()
    assert reproduce_main(one[:-4] + ["--set", "lr=0.05", "--out", str(out), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "holds a finished run of another config (lr: run 0.1 vs now 0.05)" in err


@pytest.mark.parametrize("argv, message", [
    (["--table", "4", "--dataset", "mnist"], "--table 4: allowed: 1, 2, 3"),
    (["--table", "1", "--dataset", "fmnist"], "unknown dataset 'fmnist'"),
    (["--table", "1", "--dataset", "mnist", "--model", "fc2"], "--model 'fc2': table 1 has fc1, tiny_cnn"),
    (["--table", "1", "--dataset", "mnist", "--methods", "bilaw,trades"], "--methods: ['trades'] not in table 1"),
    (["--table", "1", "--dataset", "mnist", "--seeds", "two"], "--seeds 'two': expected a count"),
    (["--table", "1", "--dataset", "mnist", "--set", "lr=-1"], "invalid config:\n  - lr: -1.0 is out of range"),
])
def test_bad_arguments_are_named_errors(argv, message, tmp_path, capsys):
    assert reproduce_main(argv + ["--out", str(tmp_path), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


def test_dry_run_lists_the_paper_runs(capsys):
    assert reproduce_main(["--table", "2", "--dataset", "cifar10", "--model", "small_cnn", "--seeds", "1",
                           "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 * 8
    assert lines[0].split()[0] == "table2/cifar10_small_cnn_linf2/gairat/seed0" and "100 epochs" in lines[0]


def test_a_stored_config_without_meta_grad_scale_matches_raw_only():
    """The legacy-setting BiLAW runs predate meta_grad_scale: they are reused for raw, never for per_lr."""
    from bilaw.config.train_config import yaml_load
    from tune.reproduce import config_difference

    stored = REPO / "docs/results/runs/meta_rerun/legacy_adam_1e-3/seed0/config.yaml"
    saved = yaml_load(stored.read_text())
    assert "meta_grad_scale" not in saved
    cfg = TrainConfig.from_dict(saved)
    assert config_difference(saved, cfg.replace(meta_grad_scale="raw")) == []
    assert config_difference(saved, cfg.replace(meta_grad_scale="per_lr")) == [
        "meta_grad_scale: run 'raw' vs now 'per_lr'"]
