"""The step-cost benchmark runs in its tiny mode and writes every field its docs table shows."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_cost_tiny_mode_writes_its_table(tmp_path, capsys):
    bench = _load("step_cost")
    out = tmp_path / "step_cost.json"
    assert bench.main(["--tiny", "--device", "cpu", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["device_type"] == "cpu" and data["torch"] and data["threads"] >= 1
    rows = data["models"]["fc1"]
    assert set(rows) == set(bench.VARIANTS)
    for variant, row in rows.items():
        assert {"median_ms", "q1_ms", "q3_ms", "ratio_to_at", "gate", "peak_mem_mb", "reps"} <= set(row)
        assert row["q1_ms"] <= row["median_ms"] <= row["q3_ms"] and row["reps"] == 3
    assert rows["at"]["ratio_to_at"] == 1.0
    assert rows["plain"]["ratio_to_at"] < 1.0 < rows["bilaw"]["ratio_to_at"]  # BiLAW does strictly more work
    assert "bilaw_k5" in capsys.readouterr().out
