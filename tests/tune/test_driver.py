"""tune/driver.py: what `--resume` stops after a killed driver, read from its driver.json. A
process of the search's own Ray session is stopped; on a joined cluster the session is the
cluster's, so a process that merely carries it (the head, other drivers) is left alone."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest

from tune.driver import DRIVER_FILE, clean_up_killed_driver
from tune.plan import SearchError


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture
def session_process():
    """A process whose command line names a Ray session, in a process group of its own."""
    session = f"session_{uuid.uuid4().hex[:12]}"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", session], start_new_session=True)
    yield session, proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _record(folder, session: str, joined: bool, pid: int | None = None) -> None:
    pid = _dead_pid() if pid is None else pid
    (folder / DRIVER_FILE).write_text(json.dumps({"pid": pid, "pgid": pid, "session_dir": f"/tmp/ray/{session}",
                                                  "joined_cluster": joined}))


def _gone(proc, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return True
        time.sleep(0.05)
    return False


def test_processes_of_the_searchs_own_session_are_stopped(tmp_path, session_process, capsys):
    session, proc = session_process
    _record(tmp_path, session, joined=False)
    clean_up_killed_driver(tmp_path)
    assert _gone(proc)
    assert "stopped 1 processes left behind" in capsys.readouterr().out


def test_a_joined_clusters_session_is_not_a_reason_to_stop_a_process(tmp_path, session_process):
    session, proc = session_process
    _record(tmp_path, session, joined=True)
    clean_up_killed_driver(tmp_path)
    assert not _gone(proc, 0.5)


def test_resume_is_refused_while_the_driver_still_runs(tmp_path, session_process):
    session, proc = session_process
    _record(tmp_path, session, joined=False, pid=proc.pid)
    with pytest.raises(SearchError, match=rf"the search is still running \(driver pid {proc.pid}\)"):
        clean_up_killed_driver(tmp_path)
    assert proc.poll() is None
