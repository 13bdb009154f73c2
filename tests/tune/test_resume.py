"""Resume after a search whose driver was really killed (SIGKILL between epochs)."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tune.run_search import main

from helpers import REPO, running_epochs, session_members



def _finished(db: Path) -> int:
    """Child runs whose trial completed, read straight from SQLite."""
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return con.execute("select count(*) from tags where key='trial_status' and value='completed'").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_resume_after_the_driver_is_killed(tmp_path):
    db = tmp_path / "mlruns.db"
    argv = ["--space", "ablation_capacity", "--workload", "smoke", "--set", "epochs=4", "--max-concurrent", "1",
            "--storage-path", str(tmp_path / "rr"), "--tracking-uri", f"sqlite:///{db}"]
    env = dict(os.environ)
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen([sys.executable, str(REPO / "tune" / "run_search.py"), *argv], cwd=tmp_path,
                                  stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and driver.poll() is None:
        if db.exists() and _finished(db) >= 1 and running_epochs(db) >= 1:
            break
        time.sleep(0.5)
    assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
    time.sleep(2)  # between epochs of the running trial, after a snapshot
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)

    assert main([*argv, "--resume"]) == 0

    time.sleep(1)
    assert session_members(driver.pid) == []  # nothing of the killed search is left running, workers included
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("ablation_capacity")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.params["weight_net"] for r in children) == sorted(["128", "64", "64-64", "256"])
    for r in children:
        assert r.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_pgd_acc")]
        assert sorted(steps) == [1, 2, 3, 4], (r.data.params["weight_net"], steps)  # one continuous history, from 1
    study = optuna.load_study(study_name="ablation_capacity",
                              storage=f"sqlite:///{tmp_path / 'rr' / 'ablation_capacity' / 'optuna.db'}")
    assert sorted(t.params["weight_net"] for t in study.trials) == sorted(["128", "64", "64-64", "256"])
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def test_resume_with_nothing_to_resume(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--space", "ablation_capacity", "--workload", "smoke", "--resume"]) == 2
    assert "nothing to resume for experiment 'ablation_capacity'" in capsys.readouterr().err
