"""Small helpers shared by the test modules (not a test file)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    import numpy as np
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]  # the repository root, wherever a test file sits under tests/
SEARCH_SCRIPT = REPO / "tune" / "run_search.py"  # the search command as a user runs it
RAY = Path(sys.executable).with_name("ray")  # the `ray` command of this environment


def digits_mlp(steps: int = 150) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A 64-64-10 MLP trained full-batch on sklearn's digits (inputs scaled to [0, 1])."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(data.target, dtype=torch.int64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: 2 threads only add OpenMP waits on a busy host
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    torch.set_num_threads(threads)
    opt.zero_grad(set_to_none=True)
    return model, x, y


def running_epochs(db: Path) -> int:
    """Per-epoch val_pgd_acc rows logged by MLflow runs still RUNNING, read straight from SQLite
    (0 while the database does not exist yet or is locked)."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return con.execute("select count(*) from metrics m join runs r on m.run_uuid = r.run_uuid "
                               "where m.key='val_pgd_acc' and r.status='RUNNING'").fetchone()[0]
    except sqlite3.Error:
        return 0


def completed_trials(db: Path) -> int:
    """Child runs whose trial completed (tagged trial_status=completed), read straight from SQLite
    (0 while the database does not exist yet or is locked)."""
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return con.execute("select count(*) from tags where key='trial_status' and value='completed'").fetchone()[0]
    except sqlite3.Error:
        return 0


class SearchRuns(NamedTuple):
    """An experiment's MLflow runs split by the parent tag (tune.tracking.runs.PARENT_TAG)."""
    client: "MlflowClient"
    experiment_id: str
    parents: list["Run"]  # runs without the tag: the search's parent run(s) (and rerun_best's re-runs)
    children: list["Run"]  # runs with it: the trials (and a race's runs)

    @property
    def runs(self) -> list["Run"]:
        """Every run of the split, parents first."""
        return [*self.parents, *self.children]


def search_runs(uri: str, experiment: str, *, skip_reruns: bool = False) -> SearchRuns:
    """The runs of `experiment` in the tracking store `uri`, split into parents and children, in
    MLflow's order (newest first); with `skip_reruns`, runs tagged rerun_of (tune/rerun_best.py's
    re-runs, which have no parent) are left out."""
    from mlflow.tracking import MlflowClient

    from tune.tracking.runs import PARENT_TAG

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} in {uri}"
    runs = [r for r in client.search_runs([exp.experiment_id], max_results=50_000)  # MLflow's largest page
            if not (skip_reruns and "rerun_of" in r.data.tags)]
    return SearchRuns(client, exp.experiment_id, [r for r in runs if PARENT_TAG not in r.data.tags],
                      [r for r in runs if PARENT_TAG in r.data.tags])


def tracking_copy(uri: str, dest: Path) -> str:
    """A copy in `dest` of the SQLite tracking store `uri` (a finished search others read), for a test
    that adds runs: the copy's experiments put new runs' artifacts under dest/mlartifacts, so the
    original store and its artifact folder stay as they were (the copied runs still read theirs there)."""
    dest.mkdir(parents=True, exist_ok=True)
    db = dest / "mlruns.db"
    shutil.copy(uri[len("sqlite:///"):], db)
    with sqlite3.connect(db) as con:
        con.execute("update experiments set artifact_location = ?", ((dest / "mlartifacts").as_uri(),))
    return f"sqlite:///{db}"


def search_command(*argv: str) -> list[str]:
    """`python tune/run_search.py ARGV` with this interpreter."""
    return [sys.executable, str(SEARCH_SCRIPT), *argv]


def _own_tmp(cwd: Path, env: dict[str, str] | None) -> dict[str, str]:
    """`env` (else this process's environment) with TMPDIR in the test's folder `cwd`: the
    temporary folders of the trials a test kills stay there, not in the machine's /tmp. Ray,
    which would follow TMPDIR too, keeps its own folder (its socket paths must stay short)."""
    tmp = Path(cwd) / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ if env is None else env)
    env.setdefault("RAY_TMPDIR", tempfile.gettempdir())
    return {**env, "TMPDIR": str(tmp)}


def run_search(*argv: str, cwd: Path, env: dict[str, str] | None = None,
               timeout: float = 600) -> subprocess.CompletedProcess:
    """A search run as a user runs it, in the working folder `cwd`; its output captured as text."""
    return subprocess.run(search_command(*argv), capture_output=True, text=True, timeout=timeout,
                          env=_own_tmp(cwd, env), cwd=cwd)


def start_search(*argv: str, cwd: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A search's driver started in a session (and process group) of its own, its output to `log`,
    so that a test stops exactly what it started (stop_group, session_members)."""
    with open(log, "w") as out:
        return subprocess.Popen(search_command(*argv), cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                env=_own_tmp(cwd, env), start_new_session=True)


def free_port() -> int:
    """A loopback port nobody listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env(ray_tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of a Ray process a test starts: Ray's files under `ray_tmp` (RAY_TMPDIR),
    never the machine's /tmp/ray; no token authentication unless the caller's environment sets it."""
    return {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"), "RAY_TMPDIR": str(ray_tmp),
            **extra}


def tracebacks(log: str) -> list[str]:
    """The lines of `log` that start a Python traceback (a worker stopped by Ray prints none:
    tune/worker_exit.py)."""
    return [line for line in log.splitlines() if "Traceback" in line or "Exception ignored" in line]


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a process this test started, then whatever is left of its process group, each by PID."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    for pid in group_members(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 15
    while group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of the process group `pgid`."""
    return _live_processes(pgid, field=2)


def session_members(sid: int) -> list[int]:
    """Live (not zombie) processes of the session `sid`: for a process a test started with
    `start_new_session=True`, everything it started, Ray's trial workers included (each worker
    is the leader of a process group of its own, so `group_members` misses them)."""
    return _live_processes(sid, field=3)


def alive(pid: int) -> bool:
    """Whether the process `pid` runs (it exists and is not a zombie)."""
    fields = _stat_fields(Path(f"/proc/{pid}"))
    return fields is not None and fields[0] != "Z"


def command_line(pid: int) -> bytes:
    """The process's /proc/PID/cmdline (arguments NUL-separated); b"" once it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _stat_fields(proc: Path) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), None once it is gone."""
    try:
        return (proc / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _live_processes(wanted: int, field: int) -> list[int]:
    """Live processes whose /proc/PID/stat field `field` (counted after the command name: 2 is
    the process group, 3 the session) is `wanted`."""
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat_fields(entry)
        if fields is not None and fields[0] != "Z" and int(fields[field]) == wanted:
            pids.append(int(entry.name))
    return pids


def paired_points(n: int, only_a: int, only_b: int, both: int) -> tuple["np.ndarray", "np.ndarray"]:
    """Bool arrays over n points: only_a points right for A alone, only_b for B alone, both for both."""
    import numpy as np

    a, b = np.zeros(n, bool), np.zeros(n, bool)
    a[:only_a] = True
    b[only_a:only_a + only_b] = True
    a[only_a + only_b:only_a + only_b + both] = b[only_a + only_b:only_a + only_b + both] = True
    return a, b
