"""Small helpers shared by the test modules (not a test file)."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


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
