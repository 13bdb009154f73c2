"""Resume after a search whose driver was really killed (SIGKILL between epochs)."""
from __future__ import annotations

import os
import signal
import time

import optuna
import pytest
from helpers import completed_trials, running_epochs, search_runs, session_members, start_search

from tune.run_search import main


@pytest.mark.slow
def test_resume_after_the_driver_is_killed(tmp_path):
    db = tmp_path / "mlruns.db"
    argv = ["--space", "ablation_capacity", "--workload", "smoke", "--set", "epochs=4", "--max-concurrent", "1",
            "--storage-path", str(tmp_path / "rr"), "--tracking-uri", f"sqlite:///{db}"]
    driver = start_search(*argv, cwd=tmp_path, log=tmp_path / "driver.log")
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and driver.poll() is None:
        if db.exists() and completed_trials(db) >= 1 and running_epochs(db) >= 1:
            break
        time.sleep(0.5)
    assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
    time.sleep(2)  # between epochs of the running trial, after a snapshot
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)

    assert main([*argv, "--resume"]) == 0

    time.sleep(1)
    assert session_members(driver.pid) == []  # nothing of the killed search is left running, workers included
    client, _, parents, children = search_runs(f"sqlite:///{db}", "ablation_capacity")
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
