"""report.py's paired comparisons on synthetic per-point results stored in a real MLflow store:
a difference far below the noise is "not distinguishable", one far above names the winner."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import search_runs
from mlflow.tracking import MlflowClient
from scipy import stats

from bilaw.eval.per_point import save_per_point
from tune.report import main as report_main
from tune.tracking.runs import PARENT_TAG, STATUS_TAG

N = 1000


def _store(tmp_path, accuracies: dict[str, list[np.ndarray]]) -> str:
    """One search parent and a finished child run per config and seed, each with per_point.npz."""
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("synthetic", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(exp, run_name="search").info.run_id
    for value, seeds in accuracies.items():
        for seed, pgd in enumerate(seeds):
            run = client.create_run(exp, tags={PARENT_TAG: parent, STATUS_TAG: "completed"}).info.run_id
            client.log_param(run, "weight_net", value)
            client.log_param(run, "seed", str(seed))
            for key, v in {"test_clean_acc": 0.9, "test_pgd_acc": float(pgd.mean()), "test_points": N}.items():
                client.log_metric(run, key, v)
            folder = tmp_path / f"{value}-{seed}"
            folder.mkdir()
            save_per_point(folder / "per_point.npz", {"clean": np.ones(N, bool), "pgd": pgd}, None)
            client.log_artifact(run, str(folder / "per_point.npz"))
            client.set_terminated(run, "FINISHED")
    client.set_terminated(parent, "FINISHED")
    return uri


def _flip(base: np.ndarray, gained: int, lost: int = 0) -> np.ndarray:
    """`base` with `gained` of its wrong points made right and `lost` of its right points wrong."""
    out = base.copy()
    out[np.flatnonzero(~base)[:gained]] = True
    out[np.flatnonzero(base)[:lost]] = False
    return out


def _paired_lines(uri: str, capsys) -> list[str]:
    assert report_main(["--experiment", "synthetic", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    return out[out.index("paired:"):].strip().splitlines()


@pytest.mark.slow
def test_a_difference_far_below_the_noise_is_not_distinguishable(tmp_path, capsys):
    rng = np.random.default_rng(0)
    base = [rng.random(N) < 0.5, rng.random(N) < 0.5]
    # with either seed 64 gains 40 points and loses 37 of 32's: 0.3 points, far below the noise
    uri = _store(tmp_path, {"32": base, "64": [_flip(b, 40, 37) for b in base]})
    lines = _paired_lines(uri, capsys)
    assert lines[0].startswith("paired: weight_net=64 (best mean test_pgd_acc) against each other row")
    assert "weight_net=32" in lines[1] and "+0.30 points" in lines[1] and "not distinguishable" in lines[1]
    assert "t over seeds and bootstrap over points" in lines[1] and "1000 points, 2 seeds" in lines[1]
    assert lines[-1] == "weight_net=64 is not distinguishable from weight_net=32 at 95%"


def test_a_difference_far_above_the_noise_names_the_winner(tmp_path, capsys):
    rng = np.random.default_rng(1)
    base = [rng.random(N) < 0.5, rng.random(N) < 0.5]
    uri = _store(tmp_path, {"32": base, "64": [_flip(b, 40, 37) for b in base],
                            "128": [_flip(b, 150) for b in base]})  # 15 points better
    lines = _paired_lines(uri, capsys)
    assert lines[0].startswith("paired: weight_net=128 (best mean test_pgd_acc)")
    assert lines[-1] == "weight_net=128 is distinguishably better than every other config compared (2) at 95%"
    row = next(line for line in lines if "weight_net=32 " in line)
    assert "+15.00 points" in row and "distinguishable  (" in row and "not distinguishable" not in row


def test_one_seed_is_mcnemars_exact_test(tmp_path, capsys):
    rng = np.random.default_rng(2)
    base = rng.random(N) < 0.5
    better = _flip(base, 12)
    worse = _flip(base, 0, 4)
    uri = _store(tmp_path, {"a": [worse], "b": [better]})
    lines = _paired_lines(uri, capsys)
    p = stats.binomtest(16, 16, 0.5).pvalue  # b is right on all 16 points where they disagree
    assert f"p = {p:.3g}, 1000 points, seed 0" in lines[1] and "+1.60 points" in lines[1]
    assert lines[-1].startswith("weight_net=b is distinguishably better than every other config compared (1) at "
                                "95% (a difference on one seed tells those two runs apart, not the configs")


@pytest.mark.slow
def test_runs_without_per_point_results_are_left_out_and_said(tmp_path, capsys):
    rng = np.random.default_rng(3)
    uri = _store(tmp_path, {"a": [rng.random(N) < 0.5], "b": [rng.random(N) < 0.5]})
    client, exp, parents, _ = search_runs(uri, "synthetic")
    parent = parents[0].info.run_id
    old = client.create_run(exp, tags={PARENT_TAG: parent, STATUS_TAG: "completed"}).info.run_id
    client.log_param(old, "weight_net", "c")
    client.log_param(old, "seed", "0")
    client.log_metric(old, "test_clean_acc", 0.9)
    client.log_metric(old, "test_pgd_acc", 0.99)
    client.set_terminated(old, "FINISHED")
    lines = _paired_lines(uri, capsys)
    assert "  note: 1 run(s) without per-point results (per_point.npz) left out" in lines
    assert not any(line.lstrip().startswith("weight_net=c") for line in lines)


@pytest.mark.slow
def test_rows_that_pool_several_configs_are_not_paired(tmp_path, capsys):
    rng = np.random.default_rng(5)
    uri = _store(tmp_path, {"a": [rng.random(N) < 0.5], "b": [rng.random(N) < 0.5]})
    client, _, _, children = search_runs(uri, "synthetic")
    for i, run in enumerate(children):
        client.log_param(run.info.run_id, "lr", str(0.1 * (i + 1)))  # a second parameter varies within rows
    assert report_main(["--experiment", "synthetic", "--tracking-uri", uri, "--by", "weight_net"]) == 0
    out = capsys.readouterr().out
    assert "paired comparison on test_pgd_acc: not made, the rows pool several configs (lr vary within them)" in out


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["best_val_pgd_acc", "test_aa_acc"])
def test_a_metric_the_runs_have_no_points_for_is_said(tmp_path, capsys, metric):
    rng = np.random.default_rng(4)
    uri = _store(tmp_path, {"a": [rng.random(N) < 0.5], "b": [rng.random(N) < 0.5]})
    assert report_main(["--experiment", "synthetic", "--tracking-uri", uri, "--paired-metric", metric]) == 0
    out = capsys.readouterr().out
    assert f"paired comparison on {metric}: fewer than two rows have per-point results" in out
