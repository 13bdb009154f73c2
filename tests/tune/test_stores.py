"""The search's stores under hostile names and real faults (issue 24): every value that goes into
an MLflow search filter is quoted so that MLflow's own parser finds exactly it; a storage path
with an apostrophe runs and resumes; a damaged MLflow or Optuna store, a full disk and a wrong
--state-dir each stop with one `error:` line that says what is intact and how to go on."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers import REPO, search_runs
from mlflow.tracking import MlflowClient

from tune.run_search import main
from tune.tracking.queries import UnquotableFilterValue, find_runs, quote_filter_value

# Each is a value a user's path, experiment name or run key may hold.
HOSTILE = ["d'été runs", 'a"b', "back\\slash", "ends in a backslash\\", "ünïcødé ✓ 実験", "a'b\"c",
           "x\\'y", "it''s", "100% _sure_", "/tmp/d'été runs/ablation_capacity", "both'\"\\"]


@pytest.mark.parametrize("value", HOSTILE)
def test_quoted_values_read_back_exactly_by_mlflows_parser(value):
    from mlflow.utils.search_utils import SearchUtils

    try:
        literal = quote_filter_value(value)
    except UnquotableFilterValue as exc:
        # only these may be refused (find_runs looks for them another way, tested below)
        assert ("'" in value and '"' in value) or value.endswith("\\"), value
        assert repr(value) in str(exc)
        return
    parsed = SearchUtils.parse_search_filter(f"tags.`k` = {literal} and attributes.status = 'RUNNING'")
    assert [c["value"] for c in parsed] == [value, "RUNNING"]


def test_find_runs_finds_each_hostile_value_exactly_in_a_real_store(tmp_path):
    """One run per hostile value (and decoys that differ by case or by a wildcard's character), in
    a real SQLite store: searching for a value finds its own run and no other."""
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("d'été \"runs\"")
    decoys = ["D'ÉTÉ RUNS", "d_été runs", 'a_b', "both_\"\\", "both'_\\", "x\\_y"]
    ids = {v: client.create_run(exp, tags={"ray_experiment_path": v}).info.run_id for v in HOSTILE + decoys}
    client.set_terminated(ids["d'été runs"], "FINISHED")
    for value in HOSTILE:
        found = find_runs(client, [exp], {"tags.ray_experiment_path": value})
        assert [r.info.run_id for r in found] == [ids[value]], value
    assert find_runs(client, [exp], {"tags.ray_experiment_path": "d'été runs", "attributes.status": "RUNNING"}) == []
    finished = find_runs(client, [exp], {"tags.ray_experiment_path": "d'été runs", "attributes.status": "FINISHED"})
    assert [r.info.run_id for r in finished] == [ids["d'été runs"]]
    # a value that needs the LIKE search: the decoys LIKE also matches are dropped, max_results counts matches
    assert [r.info.run_id for r in find_runs(client, [exp], {"tags.ray_experiment_path": "a'b\"c"}, max_results=1)] \
        == [ids["a'b\"c"]]
    assert find_runs(client, [exp], {"tags.ray_experiment_path": "not there"}) == []


def test_filter_keys_are_checked():
    with pytest.raises(ValueError, match="tags.KEY, params.KEY or attributes.KEY"):
        find_runs(None, ["0"], {"ray_experiment_path": "x"})


@pytest.mark.slow
def test_a_search_under_a_path_with_an_apostrophe_runs_and_resumes(tmp_path, capfd):
    """The storage path and the tracking database under `d'été runs`: the search runs, and its
    --resume finds the parent run by that path (it died with "Invalid clause(s) in filter
    string" when the path went into the filter unquoted)."""
    root = tmp_path / "d'été runs"
    uri = f"sqlite:///{root / 'mlruns.db'}"
    argv = ["--space", "ablation_capacity", "--workload", "smoke", "--storage-path", str(root / "rr"),
            "--tracking-uri", uri]
    assert main(argv) == 0
    capfd.readouterr()
    assert main([*argv, "--resume"]) == 0
    out = capfd.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text and "Invalid clause" not in text
    assert "error:" not in text
    _, _, parents, children = search_runs(uri, "ablation_capacity")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["ray_experiment_path"] == str(root / "rr" / "ablation_capacity")
    assert sorted(r.data.params["weight_net"] for r in children) == ["128", "256", "64", "64-64"]
    assert all(r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
               for r in children)


SMOKE = ["--space", "ablation_capacity", "--workload", "smoke"]
GARBAGE = b"not a database! " * 256  # 4 KiB over the start of a file: SQLite's header and first page


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory):
    """A finished smoke search with its state in a folder of its own (--state-dir), so that the
    default state folder (the experiment's folder among the trial folders) is a wrong one."""
    root = tmp_path_factory.mktemp("stores")
    argv = [*SMOKE, "--storage-path", str(root / "rr"), "--state-dir", str(root / "state"),
            "--tracking-uri", f"sqlite:///{root / 'mlruns.db'}"]
    assert main(argv) == 0
    return root, argv


def _one_error(capfd) -> tuple[str, str]:
    """(the one `error:` line, all output) of the command just run; no traceback in it."""
    out = capfd.readouterr()
    text = out.out + out.err
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    return errors[0], text


def _with(argv: list[str], flag: str, value: str | None) -> list[str]:
    """argv with `flag`'s value replaced (None: the flag left out)."""
    i = argv.index(flag)
    return argv[:i] + ([flag, value] if value is not None else []) + argv[i + 2:]


@pytest.mark.slow
@pytest.mark.parametrize("store", ["mlruns.db", "optuna.db"])
def test_a_damaged_store_stops_the_resume_with_one_error_saying_what_is_intact(finished_search, store, capfd):
    """The first 4 KiB of one store overwritten: --resume stops before Ray with one error line
    naming that file, the trial folders and the other store as intact, and how to go on; nothing
    is written; with the file put back (the advice), the same command goes on."""
    root, argv = finished_search
    stores = {"mlruns.db": root / "mlruns.db", "optuna.db": root / "state" / "optuna.db"}
    damaged, other = stores[store], stores["optuna.db" if store == "mlruns.db" else "mlruns.db"]
    trials = root / "rr" / "ablation_capacity"
    before = {p: p.read_bytes() for p in (damaged, other)}
    folders = sorted(p.name for p in trials.glob("trial_*"))
    assert len(folders) == 4
    with open(damaged, "r+b") as f:
        f.write(GARBAGE)
    capfd.readouterr()
    try:
        assert main([*argv, "--resume"]) == 2
        line, _ = _one_error(capfd)
        assert line.startswith(f"error: {damaged}: ") and "file is not a database" in line
        assert f"the 4 trial folders in {trials}" in line and str(other) in line and "Intact" in line
        assert "(4 trials)" in line if store == "mlruns.db" else "(5 runs of experiment 'ablation_capacity')" in line
        assert f"put back a copy of {damaged} from a backup" in line and "--experiment NEW_NAME" in line
        assert other.read_bytes() == before[other] and sorted(p.name for p in trials.glob("trial_*")) == folders
    finally:
        damaged.write_bytes(before[damaged])
    assert main([*argv, "--resume"]) == 0
    children = search_runs(f"sqlite:///{root / 'mlruns.db'}", "ablation_capacity").children
    assert len(children) == 4 and all(r.info.status == "FINISHED" for r in children)


@pytest.mark.slow
def test_resume_with_the_wrong_state_dir_names_the_one_the_search_used(finished_search, capfd):
    """--resume with another --state-dir, or none (the default folder), finds no study there: the
    error names --state-dir, the folder given and the one MLflow recorded for the search, never
    the advice to start a new search; the wrong folder is not created."""
    root, argv = finished_search
    capfd.readouterr()
    wrong = root / "elsewhere"
    assert main([*_with(argv, "--state-dir", str(wrong)), "--resume"]) == 2
    line, _ = _one_error(capfd)
    assert line.startswith(f"error: {wrong / 'optuna.db'}: the file does not exist: --resume finds no Optuna study "
                           f"in --state-dir {wrong}")
    assert f"kept its state in {root / 'state'}" in line and f"run the same command with --state-dir {root / 'state'}" \
        in line
    assert "--experiment NEW_NAME" not in line and not wrong.exists()
    assert main([*_with(argv, "--state-dir", None), "--resume"]) == 2
    line, _ = _one_error(capfd)
    assert "no --state-dir given" in line and f"--state-dir {root / 'state'}" in line
    assert str(root / "rr" / "ablation_capacity" / "optuna.db") in line


@pytest.mark.slow
def test_a_damaged_or_foreign_tracking_database_is_refused_by_every_reader(tmp_path):
    """check_tracking_uri (every command that logs) and check_store_exists (report.py,
    rerun_best.py, fetch_model.py) refuse a damaged SQLite file and a database that is not
    MLflow's, naming the file and what is intact, and pass a whole one."""
    import sqlite3

    from tune.tracking.runs import TrackingError, check_store_exists, check_tracking_uri

    db = tmp_path / "mlruns.db"
    MlflowClient(f"sqlite:///{db}").create_experiment("x")
    check_tracking_uri(f"sqlite:///{db}")
    check_store_exists(f"sqlite:///{db}")
    with open(db, "r+b") as f:
        f.write(GARBAGE)
    foreign = tmp_path / "other.db"
    with sqlite3.connect(foreign) as con:
        con.execute("create table notes (x)")
    for path, problem in ((db, "file is not a database"), (foreign, "without the tables experiments, runs")):
        for check in (check_tracking_uri, check_store_exists):
            with pytest.raises(TrackingError) as err:
                check(f"sqlite:///{path}")
            assert f"tracking database {path} cannot be used" in str(err.value) and problem in str(err.value)
            assert "trial folders" in str(err.value) and "from a backup" in str(err.value)


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs mounted for this test alone (unmounted at its end), or a skip where this
    process may not mount one (the test needs root or CAP_SYS_ADMIN)."""
    import subprocess

    folder = tmp_path / "disk"
    folder.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)], capture_output=True,
                          text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (mount exit {made.returncode}: {made.stderr.strip()}); the "
                    f"full-disk test needs root or CAP_SYS_ADMIN")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=True)  # busy: detach it now, freed when let go


def _reached(db, moment: str) -> bool:
    """Whether the search logging to `db` has reached `moment`: "after_a_trial", a child run ended
    FINISHED; "during_a_trial", that and an epoch of the next trial logged (so the next write may
    be its worker's checkpoint). Read from the MLflow database read-only (False before it exists)."""
    import sqlite3

    if not db.exists():
        return False
    try:
        with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=5) as con:
            finished = con.execute("select count(*) from runs r join tags t on r.run_uuid = t.run_uuid "
                                   "where t.key = 'mlflow.parentRunId' and r.status = 'FINISHED'").fetchone()[0]
            running = con.execute("select count(*) from metrics m join runs r on m.run_uuid = r.run_uuid "
                                  "where m.key = 'val_pgd_acc' and r.status = 'RUNNING'").fetchone()[0]
    except sqlite3.Error:
        return False
    return finished >= 1 and (moment == "after_a_trial" or running >= 1)


def _fill(folder) -> None:
    """Write a filler file until the file system holding `folder` has no space left."""
    with open(folder / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError as exc:
            assert exc.errno == 28, exc  # ENOSPC


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["after_a_trial", "during_a_trial"])
def test_a_full_disk_stops_the_search_with_one_error_and_resume_finishes_it(small_disk, tmp_path, moment):
    """Every file of the search (trials, Optuna study, MLflow database) on a small file system
    that fills up once the first trial has finished (and, `during_a_trial`, while the next one
    trains: its worker's checkpoint copy, Ray's experiment files or the driver's stores may be
    the write that fails): the driver stops with one error naming the file system, what was kept
    and the command that resumes, exit 74, no traceback; with the space freed, that command
    finishes the search with exactly the planned trials, in MLflow and in the study."""
    import os
    import signal
    import subprocess
    import sys

    import optuna
    from helpers import session_members

    db = small_disk / "mlruns.db"
    argv = [*SMOKE, "--max-concurrent", "1", "--storage-path", str(small_disk / "rr"),
            "--tracking-uri", f"sqlite:///{db}"]
    script = str(REPO / "tune" / "run_search.py")
    log = tmp_path / "driver.log"
    with open(log, "w") as out:
        driver = subprocess.Popen([sys.executable, script, *argv], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while driver.poll() is None and not _reached(db, moment) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert driver.poll() is None, log.read_text()[-3000:]
        _fill(small_disk)
        code = driver.wait(timeout=300)
    finally:
        if driver.poll() is None:  # stop what this test started: its driver's session, workers included
            for pid in session_members(driver.pid):
                os.kill(pid, signal.SIGKILL)
    text = log.read_text()
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert code == 74 and len(errors) == 1 and "Traceback" not in text, text[-4000:]
    line = errors[0]
    assert line.startswith("error: the disk is full (") and f"{small_disk} (tmpfs, " in line, line
    assert "trials finished" in line and "last checkpoint" in line and "nothing that finished is lost" in line
    assert f"Free space on {small_disk}, then run: python " in line and line.count("--resume") == 1
    study_db = small_disk / "rr" / "ablation_capacity" / "optuna.db"
    done = sum(t.state == optuna.trial.TrialState.COMPLETE
               for t in optuna.load_study(study_name="ablation_capacity", storage=f"sqlite:///{study_db}").trials)
    assert 1 <= done < 4 and f"kept: {done} of the 4 trials finished" in line

    (small_disk / "filler").unlink()
    resume = subprocess.run([sys.executable, script, *argv, "--resume"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, start_new_session=True)
    assert resume.returncode == 0 and "Traceback" not in resume.stdout + resume.stderr, resume.stderr[-4000:]
    _, _, parents, children = search_runs(f"sqlite:///{db}", "ablation_capacity")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.params["weight_net"] for r in children) == ["128", "256", "64", "64-64"]
    assert all(r.info.status == "FINISHED" and r.data.tags["trial_status"] == "completed" for r in children)
    trials = optuna.load_study(study_name="ablation_capacity", storage=f"sqlite:///{study_db}").trials
    assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


def test_a_full_disk_is_found_behind_every_wrapper():
    """disk_full_cause finds the full disk behind what Optuna, MLflow, Ray Tune and a trial's
    worker raise (by errno, or by SQLite's and the C library's words in a wrapper's text), and
    nothing in an unrelated error."""
    import errno
    import sqlite3

    import optuna
    from ray.tune.error import TuneError

    from tune.disk_full import disk_full_cause

    def raised(outer, inner):
        try:
            try:
                raise inner
            except BaseException as exc:
                raise outer from exc
        except BaseException as exc:
            return exc

    optuna_error = raised(optuna.exceptions.StorageInternalError("An exception is raised during the commit."),
                          sqlite3.OperationalError("database or disk is full"))
    assert disk_full_cause(optuna_error) == "database or disk is full (SQLite)"
    assert disk_full_cause(RuntimeError("while handling")) is None
    worker = OSError(errno.ENOSPC, "No space left on device", "/data/rr/trial_1/checkpoint_000001/x.pt")
    assert disk_full_cause(raised(RuntimeError("trial failed"), worker)) == \
        "No space left on device: /data/rr/trial_1/checkpoint_000001/x.pt"
    tune_error = TuneError("Traceback (most recent call last):\n  ...\nOSError: [Errno 28] Error writing bytes to file. "
                           "Detail: [errno 28] No space left on device\n")
    assert disk_full_cause(tune_error) == "No space left on device"
    assert disk_full_cause(raised(ValueError("bad value"), OSError(errno.EACCES, "Permission denied"))) is None


@pytest.mark.slow
def test_resume_ends_a_run_whose_trial_ended_but_whose_status_write_was_lost(tmp_path):
    """A child run still RUNNING with its trial's end recorded (trial_status written, the status
    write lost to a full disk) is ended as that end says when the search resumes; a run whose
    trial has not ended is left RUNNING (a resumed trial continues it)."""
    from tune.tracking.runs import PARENT_TAG, STATUS_TAG, SearchTracking

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    tracking = SearchTracking(uri, "s")
    parent = tracking.start_parent("s", {"ray_experiment_path": "/x/d'été/s"})
    runs = {}
    for name, status in (("done", "completed"), ("pruned", "pruned"), ("failed", "error"), ("live", None)):
        tags = {PARENT_TAG: parent, **({STATUS_TAG: status} if status else {})}
        runs[name] = tracking.client.create_run(tracking.experiment_id, run_name=name, tags=tags).info.run_id
    tracking.finish_parent("FAILED")
    again = SearchTracking(uri, "s")
    assert again.resume_parent("/x/d'été/s") == parent
    status = {name: again.client.get_run(run_id).info.status for name, run_id in runs.items()}
    assert status == {"done": "FINISHED", "pruned": "KILLED", "failed": "FAILED", "live": "RUNNING"}
    assert again.client.get_run(parent).info.status == "RUNNING"


@pytest.mark.slow
def test_ray_files_cut_short_are_put_back_from_the_drivers_copy(finished_search, capfd):
    """Ray Tune's newest experiment state and searcher state in the storage cut short (as a full
    disk leaves them; Ray would start the search over from nothing): --resume puts them back from
    the driver's own copies in its Ray session folder and says so; without those copies it stops
    with one error naming the file and what is intact."""
    from tune.state_files import read_driver_record

    root, argv = finished_search
    folder = root / "rr" / "ablation_capacity"
    state = sorted(folder.glob("experiment_state-*.json"))[-1]
    stamp = state.name[len("experiment_state-"):-len(".json")]
    searcher = folder / f"searcher-state-{stamp}.pkl"
    whole = {path: path.read_bytes() for path in (state, searcher)}
    for path, data in whole.items():
        path.write_bytes(data[: len(data) // 2])
    capfd.readouterr()
    assert main([*argv, "--resume"]) == 0
    out = capfd.readouterr()
    assert "Traceback" not in out.out + out.err
    note = next(line for line in out.out.splitlines() if line.startswith("note: Ray Tune's experiment files"))
    assert state.name in note and searcher.name in note and "cut short" in note
    assert {path: path.read_bytes() for path in whole} == whole

    session = Path(read_driver_record(root / "state")["session_dir"])
    copies = list(session.glob(f"artifacts/*/ablation_capacity/driver_artifacts/{state.name}"))
    assert copies
    state.write_bytes(whole[state][:100])
    for copy in copies:
        copy.unlink()  # this test's own search's session folder
    try:
        assert main([*argv, "--resume"]) == 2
        line, _ = _one_error(capfd)
        assert line.startswith(f"error: {state}: Ray Tune's experiment file is cut short") and str(session) in line
        assert "the 4 trial folders" in line and "--experiment NEW_NAME" in line
    finally:
        state.write_bytes(whole[state])
