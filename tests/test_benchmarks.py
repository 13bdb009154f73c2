"""Both benchmarks run in their tiny modes and write every field their docs tables show."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_step_cost_tiny_mode_writes_its_table(tmp_path, capsys):
    bench = _load("step_cost")
    out = tmp_path / "step_cost.json"
    assert bench.main(["--tiny", "--device", "cpu", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["device_type"] == "cpu" and data["torch"] and data["threads"] >= 1
    assert data["models"]["fc1"]["batch"] == 32 and data["models"]["fc1"]["reps"] == 3 and data["total_s"] > 0
    rows = data["models"]["fc1"]["variants"]
    assert set(rows) == set(bench.VARIANTS)  # every variant, the JVP and fast ones included
    for variant, row in rows.items():
        assert {"median_ms", "q1_ms", "q3_ms", "ratio_to_at", "gate", "peak_mem_mb", "reps"} <= set(row)
        assert row["q1_ms"] <= row["median_ms"] <= row["q3_ms"] and row["reps"] == 3
    assert rows["at"]["ratio_to_at"] == 1.0
    assert rows["plain"]["ratio_to_at"] < 1.0 < rows["bilaw"]["ratio_to_at"]  # BiLAW does strictly more work
    assert "bilaw_k5" in capsys.readouterr().out


@pytest.mark.slow
def test_search_overhead_tiny_mode_compares_the_search_with_a_script_and_a_loop(tmp_path, capsys):
    bench = _load("search_overhead")
    out = tmp_path / "search_overhead.json"
    assert bench.main(["--tiny", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data["versions"]) == {"ray", "optuna", "mlflow", "torch"} and data["cpus"] >= 1
    s = data["workloads"]["tiny"]
    assert s["trials"] == 2 and s["rounds"] == 1 and s["fewer_trials"] == 1
    walls = s["wall_s"]
    assert s["search_vs_script"] == pytest.approx(walls["search"] / walls["script"])
    assert s["search_vs_plain"] == pytest.approx(walls["search"] / walls["plain"])
    # each arm's process ran its trainings: the loop's time inside `train` is part of its wall
    assert 0 < s["plain_training_s"] < walls["plain"]
    # the trial phase (from the MLflow runs' clocks) lies inside the search's life (the benchmark's clock)
    assert s["before_trials_s"] > 0 and s["after_trials_s"] > 0 and s["trial_phase_s"] > 0
    assert 0 < s["busy_share"] <= 1.05  # sampled CPU time may run a sample ahead of the clock
    assert s["overhead_per_extra_trial_s"] == pytest.approx(
        s["wall_per_extra_trial_s"] - s["training_per_extra_trial_s"] / s["concurrency"])
    printed = capsys.readouterr().out
    assert "search/script" in printed and "per extra trial (1 -> 2 trials)" in printed


def test_search_overhead_cpu_between_interpolates_the_samples():
    bench = _load("search_overhead")
    samples = [(0.0, 0.0), (1.0, 2.0), (2.0, 2.0), (3.0, 5.0)]
    assert bench.cpu_between(samples, 0.5, 2.5) == pytest.approx(3.5 - 1.0)
    assert bench.cpu_between(samples, 0.0, 10.0) == pytest.approx(5.0)  # past the last sample: its value


def test_search_overhead_refuses_an_unknown_workload(tmp_path, capsys):
    bench = _load("search_overhead")
    with pytest.raises(SystemExit):
        bench.main(["--workloads", "main,smoke61", "--out", str(tmp_path / "x.json")])
    assert "--workloads main,smoke61: unknown smoke61 (known: main, smoke16, tiny)" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_search_overhead_refuses_gpu_packing_without_cuda(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    bench = _load("search_overhead")
    with pytest.raises(SystemExit):
        bench.main(["--gpu-packing", "1,2,4", "--out", str(tmp_path / "x.json")])
    assert "--gpu-packing 1,2,4: no CUDA device here" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_weight_learning_writes_each_runs_statistics(tmp_path, capsys):
    """The measurement behind the untrained thresholds: the frozen control is exactly 0 / 1 / 1
    and untrained, the default's rows carry the same fields."""
    bench = _load("weight_learning")
    out = tmp_path / "weight_learning.json"
    assert bench.main(["--variants", "frozen,default", "--seeds", "1", "--threads", "1", "--epochs", "2",
                       "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["variant"], r["threads"], r["seed"]) for r in rows] == [("frozen", 1, 0), ("default", 1, 0)]
    frozen, default = rows
    assert (frozen["drift"], frozen["rank_corr"], frozen["status"]) == (0.0, 1.0, "untrained")
    assert frozen["std_ratio"] == pytest.approx(1.0, rel=1e-5) and frozen["auroc"] == frozen["auroc_init"]
    assert default["drift"] > 0 and {"rank_corr", "std_ratio", "auroc", "auroc_init", "status"} <= set(default)
    assert "untrained" in capsys.readouterr().out


def test_weight_fading_writes_each_runs_ratio_and_status(tmp_path):
    bench = _load("weight_fading")
    out = tmp_path / "weight_fading.json"
    assert bench.main(["--variants", "frozen", "--seeds", "1", "--threads", "1", "--epochs", "2",
                       "--out", str(out)]) == 0
    (run,) = json.loads(out.read_text())["runs"]
    assert run["status"] == "untrained" and run["threads"] == 1 and len(run["weight_std"]) == 2
    assert run["ratio"] == pytest.approx(run["weight_std"][-1] / max(run["weight_std"]))
