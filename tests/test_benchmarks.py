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
def test_search_overhead_tiny_mode_writes_its_table(tmp_path, capsys):
    bench = _load("search_overhead")
    out = tmp_path / "search_overhead.json"
    assert bench.main(["--tiny", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data["versions"]) == {"ray", "optuna", "mlflow", "torch"} and data["cpus"] >= 1
    o = data["overhead"]
    assert {"workload", "epochs", "trials", "concurrency", "wall_s", "trainer_s_sum", "ideal_wall_s", "overhead",
            "gate", "trial_trainer_s"} <= set(o)
    assert o["trials"] == 2 and len(o["trial_trainer_s"]) == 2 and all(t > 0 for t in o["trial_trainer_s"])
    # the trainers' own clocks against the search's wall clock: no trial can train longer than the
    # search ran, nor all of them together longer than the search ran times its concurrency
    assert all(t < o["wall_s"] for t in o["trial_trainer_s"])
    assert o["trainer_s_sum"] < o["wall_s"] * o["concurrency"] and o["wall_s"] > o["ideal_wall_s"]
    parts = [o[f"trial_{k}"] for k in ("setup_s", "epoch_bookkeeping_s", "finish_s", "outside_s")]
    assert all(len(p) == 2 for p in parts) and all(t >= 0 for t in o["trial_outside_s"])
    assert o["per_trial_overhead"] == pytest.approx(sum(o["trial_outside_s"]) / o["trainer_s_sum"])
    for setup, book, finish in zip(*parts[:3]):
        assert min(setup, book, finish) > -0.01  # each is a stretch of time (MLflow stamps are in ms)
    assert 0 < o["search_fixed_s"] < o["wall_s"]
    printed = capsys.readouterr().out
    assert "overhead" in printed and "the search's own" in printed


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
