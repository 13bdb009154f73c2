"""Reliability: bad input stops before Ray with a clear message; real faults (a trial worker
killed mid-epoch, a diverging trial) leave the search and its records whole; writes are atomic;
nothing secret is logged."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import time

import pytest
import torch
from helpers import REPO, command_line, running_epochs, search_runs, session_members, start_search

from bilaw.training.checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from tune.run_search import main
from tune.search import _redacted_command
from tune.tracking.runs import flatten_params, redact_uri

SMOKE = ["--space", "ablation_capacity", "--workload", "smoke"]


@pytest.mark.parametrize("extra, message", [
    (["--set", "method=bilaww"], "unknown method 'bilaww'"),
    (["--set", "model=tinycnn"], "did you mean 'tiny_cnn'"),
    (["--set", "dataset=cifar-10"], "did you mean 'cifar10'"),
    (["--set", "norm=l_inf"], "unknown norm 'l_inf'"),
    (["--set", "margin_input=multi_class"], "did you mean 'multiclass'"),
    (["--set", "eps=1.5"], "eps: 1.5 is out of range"),
    (["--set", "eps=0"], "eps: 0.0 is out of range"),
    (["--set", "lr=0"], "lr: 0.0 is out of range"),
    (["--epochs", "0"], "epochs: 0 is out of range"),
    (["--set", "weight_net=abc"], "weight_net: 'abc' is not a capacity string"),
    (["--set", "weight_net=0-64"], "weight_net: '0-64' is not a capacity string"),
    (["--set", "lr_milestones=[0.3, 0.6"], "lr_milestones"),
    (["--gpus-per-trial", "-0.5"], "--gpus-per-trial -0.5"),
    (["--gpus-per-trial", "2.5"], "--gpus-per-trial 2.5"),
    (["--max-concurrent", "0"], "--max-concurrent 0"),
])
def test_bad_values_stop_before_ray(extra, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(SMOKE + extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written: no Ray results, no tracking database


@pytest.mark.parametrize("body, message", [
    ("description: x\nsearch:\n  wieght_net: {choice: ['64']}\nsampler: grid\n", "did you mean 'weight_net'"),
    ("description: x\nsearch:\n  lr: {loguniform: [0.1, 0.001]}\nsampler: tpe\nnum_samples: 2\n", "lr"),
    ("description: x\nsearch:\n  lr: {uniform: [0.1, 0.2]\nsampler: tpe\n", "line"),
    ("description: x\nworkload: digitz\nsearch:\n  lr: {uniform: [0.1, 0.2]}\nnum_samples: 2\n", "did you mean 'digits'"),
])
def test_broken_space_files(body, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = tmp_path / "mine.yaml"
    space.write_text(body)
    assert main(["--space", str(space)]) == 2
    err = capsys.readouterr().err
    assert "mine.yaml" in err and message in err and "Traceback" not in err


def test_missing_dataset_offline(tmp_path, capsys, monkeypatch):
    import bilaw.data.datasets as data

    def offline(dataset, root):
        raise OSError("network unreachable")

    monkeypatch.setattr(data, "download_with_torchvision", offline)
    monkeypatch.chdir(tmp_path)
    assert main(SMOKE + ["--set", "dataset=mnist", "--set", f"data_dir={tmp_path / 'data'}"]) == 2
    err = capsys.readouterr().err
    assert "mnist" in err and str(tmp_path / "data") in err and "digits" in err and "Traceback" not in err
    assert not (tmp_path / "ray_results").exists()


def test_unwritable_storage_path(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("x")
    assert main(SMOKE + ["--storage-path", str(tmp_path / "a_file" / "results")]) == 2
    assert f"--storage-path '{tmp_path / 'a_file' / 'results'}' cannot be written" in capsys.readouterr().err


NAN_SPACE = """
description: one diverging trial among healthy ones (test)
workload: smoke
base: {method: at, momentum: 0.0}
search:
  lr: {choice: [0.05, 1.0e+30]}
sampler: grid
"""


@pytest.mark.slow
def test_diverging_trial_fails_clearly_while_others_finish(tmp_path):
    space = tmp_path / "nan_lr.yaml"
    space.write_text(NAN_SPACE)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    assert main(["--space", str(space), "--storage-path", str(tmp_path / "rr"), "--tracking-uri", uri]) == 0
    runs = {r.data.params["lr"]: r for r in search_runs(uri, "nan_lr").children if "lr" in r.data.params}
    bad, good = runs["1e+30"], runs["0.05"]
    assert bad.info.status == "FAILED" and bad.data.tags["trial_status"] == "error"
    assert "training loss became" in bad.data.tags["error"]
    assert good.info.status == "FINISHED" and "test_clean_acc" in good.data.metrics


def _trial_workers(driver: subprocess.Popen) -> list[int]:
    """The trial workers of this test's own search: Ray's `ray::ImplicitFunc` processes in the
    session of the driver it started (never another search's trials on the same machine)."""
    return [pid for pid in session_members(driver.pid) if command_line(pid).startswith(b"ray::ImplicitFunc")]


@pytest.mark.slow
def test_killed_trial_worker_resumes_from_its_checkpoint(tmp_path):
    db = tmp_path / "mlruns.db"
    argv = ["--space", "ablation_capacity", "--workload", "smoke", "--set", "epochs=5", "--max-concurrent", "1",
            "--checkpoint-every", "0", "--storage-path", str(tmp_path / "rr"), "--tracking-uri", f"sqlite:///{db}"]
    driver = start_search(*argv, cwd=tmp_path, log=tmp_path / "driver.log")
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and running_epochs(db) < 2:
            time.sleep(0.2)
        workers = _trial_workers(driver)
        assert len(workers) == 1, (tmp_path / "driver.log").read_text()[-3000:]
        os.kill(workers[0], signal.SIGKILL)  # mid-epoch: the third epoch is training now
        assert driver.wait(timeout=600) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        if driver.poll() is None:  # stop what this test started: its driver's session, workers included
            for pid in session_members(driver.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    client, _, _, children = search_runs(f"sqlite:///{db}", "ablation_capacity")
    assert len(children) == 4
    for r in children:
        assert r.info.status == "FINISHED"
        steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, "val_pgd_acc"))
        assert steps == [1, 2, 3, 4, 5]  # one continuous history (epochs count from 1)
    folder = tmp_path / "rr" / "ablation_capacity"
    failed = [p.parent for p in folder.glob("trial_*/error.txt")]
    assert len(failed) == 1  # the killed worker's trial failed once and was retried
    # it continued from its checkpoint (a restart would repeat 1 and 2): with a checkpoint every epoch,
    # at most the epoch it was killed in is done again (a kill between the epoch's report reaching the
    # driver and Ray recording its checkpoint was seen once in many runs: then epoch 3 is reported twice)
    for progress in folder.glob("trial_*/progress.csv"):
        epochs = [int(float(row["epoch"])) for row in csv.DictReader(open(progress))]
        assert sorted(set(epochs)) == [1, 2, 3, 4, 5] and epochs[:2] == [1, 2], (progress, epochs)
        assert epochs == sorted(epochs) and len(epochs) - len(set(epochs)) <= 1, (progress, epochs)
        assert epochs.count(1) == epochs.count(2) == 1, (progress, epochs)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_result_file_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    atomic_write_text(path, '{"old": 1}')

    def dying_replace(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, '{"new": 2}')
    assert path.read_text() == '{"old": 1}' and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_checkpoints_load_with_weights_only(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Payload()}, path)
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        load_checkpoint(path)


def test_no_secret_is_logged():
    uri = "https://alice:s3cret@mlflow.example.org:5000/?token=abc"
    assert redact_uri(uri) == "https://mlflow.example.org:5000/"
    command = _redacted_command(["--space", "x", "--tracking-uri", uri])
    assert "s3cret" not in command and "abc" not in command and "mlflow.example.org" in command
    command = _redacted_command(["--tracking-uri=" + uri])
    assert "s3cret" not in command
    params = flatten_params({"lr": 0.1, "api_key": "k", "db_password": "p", "_bilaw": {"x": 1}})
    assert params == {"lr": "0.1"}


def test_documented_servers_bind_to_localhost():
    readme = (REPO / "README.md").read_text()
    commands = [line for line in readme.splitlines() if "mlflow ui" in line or "mlflow server" in line]
    assert len(commands) >= 2
    for line in commands:
        assert "--host 127.0.0.1" in line, line
