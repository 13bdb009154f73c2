"""benchmarks/gpu_check.py: its CPU dry run writes every file and every field its summary prints
(run in CI), and on a GPU machine its checks pass (`gpu`-marked)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check  # noqa: E402
import gpu_checks  # noqa: E402

FILES = {"environment.json", "checks.json", "step_cost.json", "packing.json", "gpu_check.log", "summary.md",
         "summary.json"}


@pytest.mark.slow
def test_the_dry_run_writes_every_file_and_every_summary_field(tmp_path):
    out = tmp_path / "gpu"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), str(out), "--dry-run"],
                          capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == FILES  # at most 8 files, directly in OUT_DIR
    steps = {s: json.loads((out / f"{s}.json").read_text()) for s in gpu_check.STEPS}
    assert all(steps[s]["status"] == "ok" for s in steps), {s: steps[s]["status"] for s in steps}
    for label, step, path in gpu_check.SUMMARY:
        data = steps[step]
        for key in path:
            assert key in data, (label, step, path)
            data = data[key]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {label for label, _, _ in gpu_check.SUMMARY} | {f"step {s} status" for s in steps}
    assert all(summary[f"check {c}"] is True for c in gpu_checks.CHECKS)
    packing = steps["packing"]["runs"]
    assert [len(packing[str(n)]["exit_codes"]) for n in gpu_check.PACK_N] == list(gpu_check.PACK_N)
    assert packing["1"]["finished"] == 1 and packing["2"]["finished"] == 2  # (8 CPU processes may hit the box)
    assert packing["2"]["speedup"] == round(packing["2"]["trials_per_hour"] / packing["1"]["trials_per_hour"], 2)
    md = (out / "summary.md").read_text()
    assert "| check bilaw_run | True |" in md and "| step packing status | ok |" in md
    log = (out / "gpu_check.log").read_text()
    assert all(f"===== {s}: ok in" in log for s in steps)


def test_a_missing_or_stopped_step_shows_in_the_summary(tmp_path):
    (tmp_path / "environment.json").write_text(json.dumps({"torch": "2.11", "status": "timed out after 20 s"}))
    rows = gpu_check.summarise(tmp_path)
    assert rows["torch"] == "2.11" and rows["CUDA"] == "(missing)"
    assert rows["step environment status"] == "timed out after 20 s" and rows["step packing status"] == "missing"
    assert "| step checks status | missing |" in (tmp_path / "summary.md").read_text()


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(gpu_checks.CHECKS))
def test_gpu_paths_agree_with_the_cpu(name):
    result = gpu_checks.CHECKS[name]("cuda")
    assert result["ok"], result
