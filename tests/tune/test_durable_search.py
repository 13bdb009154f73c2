"""A search is a durable job (issue 24): a scheduler's SIGTERM or a closed terminal's SIGHUP stops
it as Ctrl-C does and --resume finishes it; --time-budget stops it the same way; one driver per
search; --resume refuses changed settings and leaves a finished search as it is; a SIGKILLed
driver's runs are closed at --resume. Each test checks the stores (MLflow runs, the Optuna study,
logged models), the printed message and the exit code; each touches only the processes it
started (its own process group) and files under its own tmp_path."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from helpers import REPO, completed_trials, group_members, run_search, search_runs, start_search, stop_group
from tune.finished_search import NOTE_LIMIT, NOTE_TAG, SUMMARY_FILE, describe_parent
from tune.orphans import INTERRUPTED_ATTR, KILLED_TAG
from tune.run_search import main
from tune.search_lock import LOCK_FILE, LockError, SearchLock
from tune.stopping import DurationError, parse_duration

PLANNED = ["128", "256", "64", "64-64"]  # ablation_capacity's grid, one seed


def _uri(tmp_path: Path) -> str:
    """The tracking store of a test's search: tmp_path/mlruns.db."""
    return f"sqlite:///{tmp_path / 'mlruns.db'}"


def _argv(tmp_path: Path, *extra: str, space: str = "ablation_capacity") -> list[str]:
    return ["--space", space, "--workload", "smoke", "--storage-path", str(tmp_path / "rr"),
            "--tracking-uri", _uri(tmp_path), *extra]


def _start(tmp_path: Path, argv: list[str], log_name: str = "driver.log") -> subprocess.Popen:
    """The driver in its own session and process group (so the test can stop exactly what it started)."""
    return start_search(*argv, cwd=tmp_path, log=tmp_path / log_name)


def _epochs_of_running_trials(db: Path) -> int:
    """Epochs logged by runs still RUNNING whose trial has not ended (no trial_status tag yet)."""
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return con.execute("select count(*) from metrics m join runs r on m.run_uuid = r.run_uuid "
                               "where m.key = 'val_pgd_acc' and r.status = 'RUNNING' and not exists "
                               "(select 1 from tags t where t.run_uuid = r.run_uuid and t.key = 'trial_status')"
                               ).fetchone()[0]
    except sqlite3.Error:
        return 0


def _wait_mid_search(tmp_path: Path, driver: subprocess.Popen, finished: int = 1, timeout: float = 400) -> None:
    """Until `finished` trials completed and a running one has logged an epoch."""
    db = tmp_path / "mlruns.db"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and driver.poll() is None:
        if completed_trials(db) >= finished and _epochs_of_running_trials(db) >= 1:
            return
        time.sleep(0.3)
    raise AssertionError(f"the search never got mid-way (exit {driver.poll()}): "
                         + (tmp_path / "driver.log").read_text()[-3000:])


def _study(tmp_path: Path, experiment: str = "ablation_capacity"):
    import optuna

    return optuna.load_study(study_name=experiment,
                             storage=f"sqlite:///{tmp_path / 'rr' / experiment / 'optuna.db'}").trials


def _assert_finished_exactly_planned(tmp_path: Path, experiment: str = "ablation_capacity") -> None:
    import optuna

    _, _, parents, children = search_runs(_uri(tmp_path), experiment)
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert sorted(r.data.params["weight_net"] for r in children) == PLANNED
    assert {r.info.status for r in children} == {"FINISHED"}
    assert not [r for r in children if KILLED_TAG in r.data.tags]  # closed, then resumed: the tag is gone
    trials = _study(tmp_path, experiment)
    assert sorted(t.params["weight_net"] for t in trials) == PLANNED
    assert {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}


def _resume_command(log: str) -> list[str]:
    """The command the stopped driver printed, run with this interpreter."""
    line = next(ln for ln in log.splitlines() if ln.startswith("stopped"))
    command = shlex.split(line.split("resume with: ", 1)[1])
    assert command[0] == "python" and command[1].endswith("run_search.py") and command[-1] == "--resume"
    return [sys.executable, *command[1:]]


# -- signals -------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name, code, to", [("SIGTERM", 143, "driver"), ("SIGHUP", 129, "driver"),
                                           ("SIGINT", 130, "driver"), ("SIGTERM", 143, "group")])
def test_a_signal_stops_the_search_as_ctrl_c_does(tmp_path, name, code, to):
    """SIGTERM (a batch scheduler), SIGHUP (a closed terminal) and SIGINT (Ctrl-C) to the driver alone,
    and SIGTERM to every process of the search at once (SLURM signals every process of a job; the
    driver's process group here holds Ray's processes and the trials' workers): trials stop,
    every running run ends KILLED, the study keeps no RUNNING trial, one line names the signal and
    the resume command; after SIGTERM to the driver, that command finishes exactly the planned trials."""
    import optuna

    driver = _start(tmp_path, _argv(tmp_path, "--set", "epochs=6", "--max-concurrent", "1"))
    try:
        _wait_mid_search(tmp_path, driver)
        members = group_members(driver.pid)
        assert len(members) > 3  # Ray's head processes and the trial's worker share the driver's group
        sent = time.monotonic()
        if to == "group":
            os.killpg(driver.pid, getattr(signal, name))
        else:
            driver.send_signal(getattr(signal, name))  # the driver only, as Kubernetes does
        assert driver.wait(timeout=120) == code
        took = time.monotonic() - sent
        deadline = time.monotonic() + 20
        while group_members(driver.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert group_members(driver.pid) == []  # nothing of the search is left running
    finally:
        stop_group(driver)
    log = (tmp_path / "driver.log").read_text()
    assert "Traceback" not in log and "SIGTERM received" not in log and "Tuner.restore" not in log
    stopped = [ln for ln in log.splitlines() if ln.startswith("stopped")]
    assert len(stopped) == 1 and f"by {name}" in stopped[0] and "resume with: " in stopped[0], log[-3000:]
    assert took < 60, took

    _, _, parents, children = search_runs(_uri(tmp_path), "ablation_capacity")
    assert [p.info.status for p in parents] == ["KILLED"]
    assert parents[0].data.tags[KILLED_TAG] == f"stopped by {name}"
    killed = [r for r in children if r.info.status == "KILLED"]
    assert len(killed) == 1 and killed[0].data.tags[KILLED_TAG] == f"stopped by {name}"
    assert not [r for r in children if r.info.status == "RUNNING"]
    assert 1 <= len([r for r in children if r.info.status == "FINISHED"]) <= 3
    trials = _study(tmp_path)
    assert optuna.trial.TrialState.RUNNING not in {t.state for t in trials}
    waiting = [t for t in trials if t.state == optuna.trial.TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].user_attrs[INTERRUPTED_ATTR] == f"stopped by {name}"
    assert (tmp_path / "rr" / "ablation_capacity" / LOCK_FILE).read_text() == ""  # the lock is let go
    if (name, to) != ("SIGTERM", "driver"):
        return

    # the printed command, twice within a second (the two --resume): one resumes, one refuses
    command = _resume_command(log)
    drivers = []
    for name in ("resume1.log", "resume2.log"):
        with open(tmp_path / name, "w") as out:
            drivers.append(subprocess.Popen(command, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True))
        time.sleep(0.5)
    try:
        codes = [d.wait(timeout=600) for d in drivers]
    finally:
        for d in drivers:
            stop_group(d)
    logs = [(tmp_path / name).read_text() for name in ("resume1.log", "resume2.log")]
    assert sorted(codes) == [0, 2], logs
    refused = logs[codes.index(2)]
    assert f"error: this search is already running: driver pid {drivers[codes.index(0)].pid}" in refused
    assert "Traceback" not in logs[0] + logs[1]
    _assert_finished_exactly_planned(tmp_path)


@pytest.mark.slow
def test_a_race_stops_on_sigterm_and_its_runs_are_closed(tmp_path):
    """SIGTERM during --race: the race's running runs and the parent end KILLED, exit 143."""
    argv = _argv(tmp_path, "--race", "2", "--race-seeds", "3", "--max-concurrent", "1")
    driver = _start(tmp_path, argv)
    try:
        db = tmp_path / "mlruns.db"
        deadline = time.monotonic() + 500
        while time.monotonic() < deadline and driver.poll() is None:
            if "race round 0" in (tmp_path / "driver.log").read_text() and _epochs_of_running_trials(db) >= 1:
                break
            time.sleep(0.3)
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        driver.send_signal(signal.SIGTERM)
        assert driver.wait(timeout=120) == 143
    finally:
        stop_group(driver)
    log = (tmp_path / "driver.log").read_text()
    assert "Traceback" not in log and re.search(r"race after \d round\(s\): stopped: interrupted", log), log[-3000:]
    assert [ln for ln in log.splitlines() if ln.startswith("stopped")][0].count("--race 2") == 1
    _, _, parents, children = search_runs(_uri(tmp_path), "ablation_capacity")
    assert [p.info.status for p in parents] == ["KILLED"]
    assert not [r for r in children if r.info.status == "RUNNING"]
    race = [r for r in children if r.data.tags.get("race") == "true"]
    assert race and all(r.info.status in ("KILLED", "FINISHED") for r in race)
    assert any(r.info.status == "KILLED" and r.data.tags[KILLED_TAG] == "stopped by SIGTERM" for r in race)


def test_only_a_snapshot_copy_that_met_a_vanished_temp_file_is_kept_quiet():
    """Ray Tune logs an error with a traceback when a snapshot's copy meets a temporary state file
    it renamed meanwhile (seen in CI during a race); that one is dropped, every other failure shown."""
    import logging

    from tune.stopping import quiet_ray_stop_notes

    quiet_ray_stop_notes()
    log, shown = logging.getLogger("ray.tune.execution.experiment_state"), []
    handler = logging.Handler()
    handler.emit = shown.append
    log.addHandler(handler)
    try:
        for exc in (FileNotFoundError("[Errno 2] Failed to open local file '/s/driver_artifacts/.88-tmp-basic-variant'"),
                    FileNotFoundError("[Errno 2] Failed to open local file '/s/driver_artifacts/searcher-state.pkl'"),
                    PermissionError("[Errno 13] Permission denied: '/s/driver_artifacts'")):
            try:
                raise exc
            except OSError:
                log.error("Saving experiment state to storage at '/s' failed with exception: ", exc_info=True)
    finally:
        log.removeHandler(handler)
    assert [str(r.exc_info[1]) for r in shown] == ["[Errno 2] Failed to open local file '/s/driver_artifacts/"
                                                   "searcher-state.pkl'", "[Errno 13] Permission denied: '/s/driver_artifacts'"]


# -- the time budget -----------------------------------------------------------------------------
@pytest.mark.parametrize("text, seconds", [("3h30m", 12600), ("90s", 90), ("45m", 2700), ("1h0m30s", 3630),
                                           ("2H", 7200)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["90", "1.5h", "3h-30m", "30m3h", "0s", "", "soon"])
def test_bad_time_budget_is_one_error_before_ray(text, tmp_path, capsys, monkeypatch):
    with pytest.raises(DurationError):
        parse_duration(text)
    monkeypatch.chdir(tmp_path)
    assert main(["--space", "ablation_capacity", "--workload", "smoke", "--time-budget", text]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --time-budget {text!r}") and "3h30m" in err and "Traceback" not in err
    assert not (tmp_path / "ray_results").exists()


@pytest.mark.slow
def test_time_budget_stops_the_search_resumably(tmp_path):
    import optuna

    # 120 epochs: even on an idle machine a trial outlasts the 30 s budget (10 epochs once finished
    # all four trials within it)
    argv = _argv(tmp_path, "--set", "epochs=120", "--max-concurrent", "1")
    budget = run_search(*argv, "--time-budget", "30s", cwd=tmp_path, timeout=300)
    log = budget.stdout + budget.stderr
    assert budget.returncode == 75, log[-3000:]
    assert "Traceback" not in log
    line = [ln for ln in log.splitlines() if ln.startswith("stopped")]
    assert len(line) == 1 and "--time-budget was spent" in line[0] and "--time-budget 30s --resume" in line[0]
    _, _, parents, children = search_runs(_uri(tmp_path), "ablation_capacity")
    assert [p.info.status for p in parents] == ["KILLED"]
    assert len([r for r in children if r.info.status == "FINISHED"]) < 4  # stopped before the end
    assert not [r for r in children if r.info.status == "RUNNING"]
    assert optuna.trial.TrialState.RUNNING not in {t.state for t in _study(tmp_path)}

    # resumed two at a time and without system metrics (both may change on resume): the runs it
    # starts overlap one that runs, and no epoch trained after the resume samples the machine
    more = [a if a != "1" or argv[i - 1] != "--max-concurrent" else "2" for i, a in enumerate(argv)]
    more.append("--no-system-metrics")
    resumed_at = time.time()
    resumed = run_search(*more, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    _assert_finished_exactly_planned(tmp_path)
    spans = []  # each trial's epochs reported after the resume: (first, last) time
    for results in (tmp_path / "rr" / "ablation_capacity").glob("trial_*/result.json"):
        times = [json.loads(line)["timestamp"] for line in results.read_text().splitlines() if line.strip()]
        times = [t for t in times if t >= resumed_at]
        if times:
            spans.append((min(times), max(times)))
    assert any(min(a[1], b[1]) - max(a[0], b[0]) >= 2 for i, a in enumerate(spans) for b in spans[i + 1:]), spans
    # MLflow's epochs: system metrics before the resume only
    client, _, _, children = search_runs(_uri(tmp_path), "ablation_capacity")
    cpu = [m.timestamp / 1000 for r in children
           for m in client.get_metric_history(r.info.run_id, "system/cpu_utilization_percentage")]
    epochs = [m.timestamp / 1000 for r in children for m in client.get_metric_history(r.info.run_id, "val_pgd_acc")]
    assert cpu and max(cpu) < resumed_at and max(epochs) > resumed_at + 1, (len(cpu), resumed_at, max(epochs))
    stored = json.loads((tmp_path / "rr" / "ablation_capacity" / "search.json").read_text())
    assert stored["args"]["no_system_metrics"] is True  # a later resume that leaves it out keeps it


# -- one driver per search -----------------------------------------------------------------------
def _holder(folder: Path) -> subprocess.Popen:
    """A process of this test holding the search lock of `folder` until it is stopped."""
    code = (f"import sys, time; sys.path.insert(0, {str(REPO)!r}); from tune.search_lock import SearchLock; "
            f"lock = SearchLock({str(folder)!r}); lock.acquire('python tune/run_search.py --space x'); "
            f"print('locked', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_refuses_a_live_driver_and_takes_over_a_dead_one(tmp_path):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(LockError) as refused:
            SearchLock(tmp_path).acquire("second")
        message = str(refused.value)
        assert f"driver pid {holder.pid} on host {socket.gethostname()}" in message
        assert f"kill {holder.pid}" in message and "--resume" in message
        with pytest.raises(LockError):  # --break-lock never overrides a live driver here
            SearchLock(tmp_path).acquire("second", break_lock=True)
    finally:
        stop_group(holder)
    record = json.loads((tmp_path / LOCK_FILE).read_text())
    assert record["pid"] == holder.pid  # its record outlives it: killed, it could not clear it
    lock = SearchLock(tmp_path)
    lock.acquire("third")
    assert f"driver pid {holder.pid}" in lock.note and "no longer running" in lock.note
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert (tmp_path / LOCK_FILE).read_text() == ""


def test_lock_of_another_host_is_honoured_unless_broken(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"host": "gpu-node-7", "pid": 4242, "started": "yesterday",
                                                  "command": "python tune/run_search.py --space x"}))
    with pytest.raises(LockError) as refused:
        SearchLock(tmp_path).acquire("mine")
    assert "driver pid 4242 on host gpu-node-7" in str(refused.value) and "--break-lock" in str(refused.value)
    lock = SearchLock(tmp_path)
    lock.acquire("mine", break_lock=True)
    assert "gpu-node-7" in lock.note and "dead" in lock.note
    lock.release()


@pytest.mark.slow
def test_two_drivers_started_together_one_runs(tmp_path):
    argv = _argv(tmp_path)
    first = _start(tmp_path, argv, "first.log")
    time.sleep(0.5)
    second = _start(tmp_path, argv, "second.log")
    try:
        codes = sorted([first.wait(timeout=600), second.wait(timeout=600)])
    finally:
        stop_group(first)
        stop_group(second)
    logs = {name: (tmp_path / name).read_text() for name in ("first.log", "second.log")}
    assert codes == [0, 2], logs
    refused = next(log for log in logs.values() if "error:" in log)
    winner = first.pid if refused is logs["second.log"] else second.pid
    assert f"error: this search is already running: driver pid {winner} on host {socket.gethostname()}" in refused
    assert "Traceback" not in refused and "resuming" not in refused and "search ablation_capacity:" not in refused
    _assert_finished_exactly_planned(tmp_path)


# -- a stored search: resume checks, a finished search resumed --------------------------------------
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished search of a space file of its own (edited by a test, then put back)."""
    root = tmp_path_factory.mktemp("finished")
    shutil.copy(REPO / "search_spaces" / "ablation_capacity.yaml", root / "cap.yaml")
    argv = _argv(root, space=str(root / "cap.yaml"))
    assert main(argv) == 0
    return root, argv


def test_resume_refuses_changed_settings(finished, capsys):
    root, argv = finished
    _, _, parents, children = search_runs(_uri(root), "cap")
    before = [(r.info.run_id, r.info.status, r.info.end_time) for r in [*parents, *children]]
    assert main([*argv, "--resume", "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume: this search started with other settings")
    assert "  --epochs: 2 -> 3" in err and "--experiment NEW_NAME" in err and "undo the change" in err
    assert "Traceback" not in err and "base config" not in err
    assert main([*argv, "--resume", "--checkpoint-every", "5"]) == 2
    assert "  --checkpoint-every: 30.0 -> 5.0" in capsys.readouterr().err

    space = root / "cap.yaml"
    original = space.read_text()
    space.write_text(original.replace('["128", "64", "64-64", "256"]', '["128", "32"]'))
    try:
        assert main([*argv, "--resume"]) == 2
    finally:
        space.write_text(original)
    err = capsys.readouterr().err
    assert f"  space file {space}: content changed" in err and '"32"' in err and "--experiment NEW_NAME" in err
    _, _, parents, children = search_runs(_uri(root), "cap")
    assert [(r.info.run_id, r.info.status, r.info.end_time) for r in [*parents, *children]] == before


def test_help_lists_what_a_resume_may_change(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines, also at hyphens
    assert ("optionsaresumemaychange:--max-concurrent,--race,--race-seeds,--register,--log-models,--time-budget,"
            "--address,--break-lock,--system-metrics-interval,--no-system-metrics;") in text


def test_the_parent_run_tells_the_search_story(finished):
    """The parent's description (MLflow's note, on its page) links the winner's run and model and
    holds the summary the search printed, as Markdown."""
    root, _ = finished
    client, exp, parents, children = search_runs(_uri(root), "cap")
    note = parents[0].data.tags[NOTE_TAG]
    winner = parents[0].data.tags["winner_run_id"]
    model = client.get_run(winner).outputs.model_outputs[0].model_id
    assert note.startswith(f"## {parents[0].info.run_name}\n")
    assert f"- winner: [{parents[0].data.tags['winner_run_name']}](#/experiments/{exp}/runs/{winner})" in note
    assert f"[{model}](#/experiments/{exp}/models/{model}) (`models:/{model}`)" in note
    summary = (root / "rr" / "cap" / SUMMARY_FILE).read_text().rstrip("\n")
    assert f"### Summary\n\n```\n{summary}\n```" in note
    assert "best best_val_pgd_acc:" in summary and "paired:" in summary
    key = parents[0].info.run_id
    assert f"[runs table](#/experiments/{exp}/runs?viewStateShareKey={key})" in note


def test_the_printed_runs_table_link_names_a_saved_view_of_the_trials(finished, capsys):
    """The view MLflow's UI restores from the printed link (tests/tune/tracking/test_browser.py loads it)."""
    root, argv = finished
    client, exp, parents, children = search_runs(_uri(root), "cap")
    key = parents[0].info.run_id
    summary = (root / "rr" / "cap" / SUMMARY_FILE).read_text()
    assert f"/#/experiments/{exp}/runs?workflowType=machine_learning&viewStateShareKey={key}" in summary
    view = json.loads(client.get_experiment(exp).tags["mlflow.sharedViewState." + key])
    assert view["searchFilter"] == f"tags.mlflow.parentRunId = '{key}'"
    assert len(client.search_runs([exp], view["searchFilter"])) == len(children)
    assert view["orderByKey"] == "metrics.`best_val_pgd_acc`" and view["orderByAsc"] is False
    assert view["selectedColumns"][:2] == ["params.`weight_net`", "params.`seed`"]
    logged = set(children[0].data.metrics)
    shown = [c[len("metrics.`"):-1] for c in view["selectedColumns"][2:]]
    assert shown[0] == "best_val_pgd_acc" and {"test_clean_acc", "test_pgd_acc", "best_epoch"} <= set(shown) <= logged
    assert view["runsHiddenMode"] == "SHOW_ALL"


def test_each_final_metric_is_logged_once_per_run(finished):
    """A finished trial's final metrics (those of its saved metrics.json) are one record each, at
    step 0; its per-epoch metrics one record per epoch."""
    from bilaw.metrics import METRICS, scalar_final

    root, _ = finished
    client, _, _, children = search_runs(_uri(root), "cap")
    finals = {n for n in METRICS.names() if METRICS.facts(n)["when"] == "final"}
    for run in children:
        saved = json.loads(Path(client.download_artifacts(run.info.run_id, "metrics.json", str(root / run.info.run_id)))
                           .read_text())
        final, epochs = scalar_final(saved["final"]), len(saved["history"])
        assert finals & set(run.data.metrics) <= set(final) and "test_clean_acc" in final
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            if key in final and not any(key in h for h in saved["history"]):
                assert steps == [0], (key, steps)
            else:
                assert sorted(steps) == list(range(1, epochs + 1)), (key, steps)


def test_each_study_trial_names_its_mlflow_run(finished):
    from test_study_records import check_study_names_its_runs

    root, _ = finished
    check_study_names_its_runs(root / "rr" / "cap", _uri(root), "cap", [0])


def test_a_long_story_is_cut_to_what_mlflow_stores(tmp_path):
    from types import SimpleNamespace

    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    exp = client.create_experiment("long")
    parent = client.create_run(exp, tags={"space": "s", "workload": "w", "seeds": "0", "command": "c"}).info.run_id
    (tmp_path / SUMMARY_FILE).write_text("".join(f"config {i}: +1.00 points [-2.00, +3.00]\n" for i in range(400)))
    describe_parent(SimpleNamespace(client=client, parent_run_id=parent), tmp_path)
    note = client.get_run(parent).data.tags[NOTE_TAG]
    assert len(note) <= NOTE_LIMIT and note.count("```") == 2 and note.endswith("```")
    assert "config 0: +1.00" in note and "config 399" not in note and f"cut here: the whole text is the run's artifacts {SUMMARY_FILE}" in note


def _logged_models(client, experiment_id: str) -> int:
    return len(client.search_logged_models(experiment_ids=[experiment_id]))


def test_resuming_a_finished_search_changes_nothing(finished, capsys):
    root, argv = finished
    client, exp, parents, children = search_runs(_uri(root), "cap")
    before = sorted((r.info.run_id, r.info.status, r.info.end_time) for r in [*parents, *children])
    models = _logged_models(client, exp)
    assert models == 1  # the winner's (--log-models winner)
    i = argv.index("--workload")
    assert main([*argv[:i], *argv[i + 2:], "--resume"]) == 0  # a left-out option keeps its stored value
    out = capsys.readouterr().out
    assert "this search finished on" in out and "best best_val_pgd_acc:" in out and "paired:" in out
    assert "resuming" not in out
    client, exp, parents, children = search_runs(_uri(root), "cap")
    assert sorted((r.info.run_id, r.info.status, r.info.end_time) for r in [*parents, *children]) == before
    assert _logged_models(client, exp) == models

    assert main([*argv, "--resume", "--register"]) == 0  # registers the model already logged
    out = capsys.readouterr().out
    versions = client.search_model_versions("name = 'cap'")
    assert len(versions) == 1 and versions[0].run_id == parents[0].data.tags["winner_run_id"]
    assert re.search(r"registered: models:/cap/1 \(the model logged with run \w+\)", out)
    assert main([*argv, "--resume", "--register"]) == 0
    assert "already registered: models:/cap/1" in capsys.readouterr().out
    assert len(client.search_model_versions("name = 'cap'")) == 1 and _logged_models(client, exp) == models
    client, exp, parents, children = search_runs(_uri(root), "cap")
    assert sorted((r.info.run_id, r.info.status, r.info.end_time) for r in [*parents, *children]) == before


# -- no orphans ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_sigkilled_drivers_runs_are_closed_at_resume(tmp_path):
    argv = _argv(tmp_path, "--set", "epochs=6", "--max-concurrent", "1")
    driver = _start(tmp_path, argv)
    try:
        _wait_mid_search(tmp_path, driver)
        os.killpg(driver.pid, signal.SIGKILL)  # the driver's own process group: it and its Ray
        driver.wait(timeout=30)
    finally:
        stop_group(driver)
    _, _, parents, children = search_runs(_uri(tmp_path), "ablation_capacity")
    assert len([r for r in children if r.info.status == "RUNNING"]) == 1  # what the kill left open

    resumed = run_search(*argv, "--resume", cwd=tmp_path)
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-3000:]
    assert "closed 1 run(s) left RUNNING by a driver that is gone" in out and "Traceback" not in out
    assert "took over the lock of driver pid" in out and "no longer running" in out
    _assert_finished_exactly_planned(tmp_path)


@pytest.mark.slow
def test_a_sigkilled_race_run_is_closed_and_run_again(tmp_path):
    argv = _argv(tmp_path, "--max-concurrent", "1")
    assert run_search(*argv, cwd=tmp_path).returncode == 0
    race = [*argv, "--resume", "--race", "2", "--race-seeds", "3"]
    driver = _start(tmp_path, race)
    try:
        db = tmp_path / "mlruns.db"
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and driver.poll() is None and _epochs_of_running_trials(db) < 1:
            time.sleep(0.3)
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        stop_group(driver)
    resumed = run_search(*race, cwd=tmp_path, timeout=900)
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-3000:]
    assert "closed 1 run(s) left RUNNING" in out and "Traceback" not in out
    client, exp, parents, children = search_runs(_uri(tmp_path), "ablation_capacity")
    assert not [r for r in [*parents, *children] if r.info.status == "RUNNING"]
    assert _logged_models(client, exp) == 1  # the search's report ran again; the winner's model was not logged again
    search = [r for r in children if r.data.tags.get("race") != "true"]
    assert sorted(r.data.params["weight_net"] for r in search) == PLANNED
    assert {r.info.status for r in search} == {"FINISHED"}
    race_runs = [r for r in children if r.data.tags.get("race") == "true"]
    killed = [r for r in race_runs if r.info.status == "KILLED"]
    assert len(killed) == 1 and "driver was gone" in killed[0].data.tags[KILLED_TAG]
    done = [(r.data.tags["race_config"], r.data.params["seed"]) for r in race_runs if r.info.status == "FINISHED"]
    assert len(done) == len(set(done)) and (killed[0].data.tags["race_config"], killed[0].data.params["seed"]) in done


def _store_with_an_open_search(tmp_path: Path):
    """An MLflow store as a SIGKILLed driver leaves it: the parent and one child RUNNING, one child
    FINISHED with its test metrics; the search's state folder here."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = client.create_experiment("cap")
    (tmp_path / "state").mkdir()
    parent = client.create_run(exp, run_name="cap on smoke", tags={"state_dir": str(tmp_path / "state")})
    done = client.create_run(exp, run_name="weight_net=64 seed=0",
                             tags={"mlflow.parentRunId": parent.info.run_id, "trial_status": "completed"})
    for key, value in (("test_clean_acc", 0.9), ("test_pgd_acc", 0.5), ("best_val_pgd_acc", 0.5)):
        client.log_metric(done.info.run_id, key, value)
    client.log_param(done.info.run_id, "weight_net", "64")
    client.set_terminated(done.info.run_id, "FINISHED")
    open_run = client.create_run(exp, run_name="weight_net=128 seed=0", tags={"mlflow.parentRunId": parent.info.run_id})
    client.log_param(open_run.info.run_id, "weight_net", "128")
    client.log_metric(open_run.info.run_id, "test_clean_acc", 0.1)
    return client, parent.info.run_id, open_run.info.run_id


def test_report_closes_the_runs_of_a_gone_driver_and_leaves_a_live_ones(tmp_path, capsys):
    from tune.report import main as report_main

    client, parent, open_run = _store_with_an_open_search(tmp_path)
    argv = ["--experiment", "cap", "--tracking-uri", f"sqlite:///{tmp_path / 'mlruns.db'}", "--by", "weight_net"]
    holder = _holder(tmp_path / "state")  # a live driver of that search: nothing is closed
    try:
        assert report_main(argv) == 0
        captured = capsys.readouterr()
        assert "closed" not in captured.err
        assert client.get_run(open_run).info.status == "RUNNING" and client.get_run(parent).info.status == "RUNNING"
    finally:
        stop_group(holder)
    assert report_main(argv) == 0  # its driver is gone now
    captured = capsys.readouterr()
    assert "closed 1 run(s) left RUNNING by a search whose driver is gone" in captured.err
    assert "Traceback" not in captured.err
    for run_id in (open_run, parent):
        run = client.get_run(run_id)
        assert run.info.status == "KILLED" and "driver was gone" in run.data.tags[KILLED_TAG]
    rows = [ln for ln in captured.out.splitlines() if ln.startswith("| ") and ln.split("|")[1].strip() in ("64", "128")]
    assert [ln.split("|")[1].strip() for ln in rows] == ["64"]  # the closed run is no result


def test_a_stop_during_the_report_waits_for_its_end_and_a_second_cuts_it_short():
    """In-process: SIGTERM while a search's report is written is taken at its end (KeyboardInterrupt
    then, reason SIGTERM); a second one during the report interrupts at once."""
    from tune.stopping import StopRequest

    stop = StopRequest()
    stop.install()
    try:
        written = []
        with pytest.raises(KeyboardInterrupt):
            with stop.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.1)  # the handler runs here, in the main thread
                written.append("the whole report")
        assert written == ["the whole report"] and stop.reason == "SIGTERM"
        stop.uninstall()
        stop.install()
        with pytest.raises(KeyboardInterrupt):
            with stop.deferred():
                os.kill(os.getpid(), signal.SIGHUP)
                time.sleep(0.1)
                os.kill(os.getpid(), signal.SIGHUP)
                time.sleep(0.1)
                written.append("never")
        assert written == ["the whole report"] and stop.reason == "SIGHUP"
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
