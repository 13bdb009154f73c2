"""Small helpers shared by the test modules (not a test file)."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]  # the repository root, wherever a test file sits under tests/

# A two-trial BiLAW grid on the smoke workload: the smallest real search (a space file's text)
TWO_CAPACITIES_SPACE = """\
description: two weight-net capacities (a test's own space)
workload: smoke
paper_workload: smoke
base:
  method: bilaw
search:
  weight_net: {choice: ["64", "128"]}
sampler: grid
metric: best_val_pgd_acc
mode: max
seeds: [0]
scheduler: none
"""


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


def _live_processes(wanted: int, field: int) -> list[int]:
    """Live processes whose /proc/PID/stat field `field` (counted after the command name: 2 is
    the process group, 3 the session) is `wanted`."""
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[field]) == wanted:
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
