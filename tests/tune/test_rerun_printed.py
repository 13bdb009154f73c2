"""The commands a search prints work as printed: after a smoke search run as a user runs it (a
subprocess, its own working folder: the finished search of tests/tune/conftest.py, shared and read
only), the printed re-run line reproduces the winner's held-out and test metrics exactly (and its
training loss, epoch by epoch), another thread count is noted, best_config.yaml keeps `device: auto`,
and the printed `mlflow ui` command's program exists. The printed commands run in a folder of each
test's own, so that the shared search's folder stays as it was."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import REPO, search_runs

QUIET = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}  # a 2-thread run on a busy machine stalls otherwise


@pytest.fixture
def searched(smoke_search):
    """The finished smoke search (tests/tune/conftest.py: `run_search.py --space ablation_capacity
    --workload smoke` in a folder of its own, as the README starts one) and what it printed."""
    return smoke_search, smoke_search.stdout


def _printed(stdout: str, label: str) -> str:
    (line,) = [line for line in stdout.splitlines() if line.strip().startswith(label)]
    return line.strip()[len(label):].strip()


def _winner(search):
    found = search_runs(search.uri, search.experiment)
    (parent,) = found.parents
    (winner,) = [r for r in found.runs if r.info.run_id == parent.data.tags["winner_run_id"]]
    return found.client, parent, winner


def _trial_run(search, weight_net: str) -> dict:
    """The metrics.json the search's trial of `weight_net` saved (its last checkpoint's run)."""
    for folder in sorted(search.folder.glob("trial_*")):
        if json.loads((folder / "params.json").read_text())["weight_net"] == weight_net:
            (saved,) = sorted(folder.glob("checkpoint_*/run/metrics.json"))[-1:]
            return json.loads(saved.read_text())
    raise AssertionError(f"no trial of weight_net {weight_net}")


@pytest.mark.slow
def test_the_printed_rerun_line_reproduces_the_winner_exactly(searched, tmp_path):
    search, stdout = searched
    command = _printed(stdout, "re-run it:")
    assert command.endswith("--out runs/best") and " -m bilaw.train --config " in command
    out = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "note:" not in out.stdout and "1 torch thread ->" in out.stdout
    _, parent, _ = _winner(search)
    best = yaml.safe_load(Path(_printed(stdout, "best config:")).read_text())
    trial = _trial_run(search, best["weight_net"])
    rerun = json.loads((tmp_path / "runs" / "best" / "metrics.json").read_text())
    for key in ("test_clean_acc", "test_pgd_acc", "test_aa_acc", "test_pgd_acc_aa_subset"):
        assert rerun["final"][key] == trial["final"][key] == parent.data.metrics[f"winner_{key}"], key
    assert rerun["history"][-1]["best_val_pgd_acc"] == parent.data.metrics["winner_best_val_pgd_acc"]
    assert [e["val_pgd_acc"] for e in rerun["history"]] == [e["val_pgd_acc"] for e in trial["history"]]
    # every epoch's training loss to the last bit: another thread count already differs in the first
    assert [e["train_loss"] for e in rerun["history"]] == [e["train_loss"] for e in trial["history"]]
    assert yaml.safe_load((tmp_path / "runs" / "best" / "config.yaml").read_text())["threads"] == 1


@pytest.mark.slow
def test_another_thread_count_is_printed(searched, tmp_path):
    _, stdout = searched
    command = _printed(stdout, "re-run it:").replace("--out runs/best", "--out runs/two_threads")
    out = subprocess.run(f"{command} --threads 2 --set epochs=1", shell=True, cwd=tmp_path, env=QUIET,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (note,) = [line for line in out.stdout.splitlines() if line.startswith("note:")]
    assert note.startswith("note: running with 2 torch threads, not the 1 ") and "best_config.yaml records" in note
    assert yaml.safe_load((tmp_path / "runs" / "two_threads" / "config.yaml").read_text())["threads"] == 2


@pytest.mark.slow
def test_best_config_keeps_device_auto_while_the_trial_ran_on_cpu(searched):
    search, stdout = searched
    path = Path(_printed(stdout, "best config:"))
    saved = yaml.safe_load(path.read_text())
    assert saved["device"] == "auto" and saved["threads"] == 1
    _, _, winner = _winner(search)
    assert winner.data.params["device"] == "cpu" and winner.data.params["threads"] == "1"
    skip = {"device", "seed"}
    assert {k: str(v) if not isinstance(v, list) else ",".join(map(str, v)) for k, v in saved.items()
            if k not in skip} == {k: v for k, v in winner.data.params.items() if k not in skip}


@pytest.mark.slow
def test_the_printed_mlflow_ui_command_runs_as_printed(searched):
    search, stdout = searched
    root = search.root
    argv = shlex.split(_printed(stdout, "MLflow:"))
    assert argv[1:4] == ["-m", "mlflow", "ui"] and "--backend-store-uri" in argv
    exe = argv[0] if os.path.isabs(argv[0]) else str(root / argv[0])
    assert os.path.isfile(exe) and os.access(exe, os.X_OK), argv[0]
    out = subprocess.run([*argv[:4], "--help"], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "--backend-store-uri" in out.stdout, out.stderr[-2000:]


def test_the_readme_starts_mlflow_the_way_the_search_prints_it():
    """README's `mlflow ui` / `mlflow server` commands go through the venv's interpreter, which
    scripts/setup.sh makes (a bare `mlflow` is on PATH only in an activated venv)."""
    readme = (REPO / "README.md").read_text()
    commands = [line.strip() for line in readme.splitlines()
                if re.search(r"mlflow (ui|server) ", line) and not line.lstrip().startswith("#")]
    assert len(commands) >= 2
    for line in commands:
        assert line.startswith(".venv/bin/python -m mlflow "), line
    assert "VENV=${VENV:-.venv}" in (REPO / "scripts" / "setup.sh").read_text()
