"""Fixtures of the search's tests: a finished smoke search several files read, Ray's temp folder."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

import pytest
from helpers import run_search


class FinishedSearch(NamedTuple):
    root: Path  # the folder it ran in (its working folder), holding everything it wrote
    uri: str  # its MLflow tracking store: root/mlruns.db
    folder: Path  # its Ray Tune experiment and state folder: root/ray_results/ablation_capacity
    stdout: str  # what it printed
    experiment: str = "ablation_capacity"


@pytest.fixture(scope="session")
def smoke_search(tmp_path_factory) -> FinishedSearch:
    """One finished grid search (ablation_capacity on the smoke workload, 4 trials, with plots and
    the winner's model registered), run as a user runs it: `python tune/run_search.py` in a folder
    of its own. Shared by every test that only reads it (test_search, tracking/test_browser,
    tracking/test_search_models, test_rerun_printed): a test must not change it (resume it, add
    runs, write or delete files there); one that would works on a copy (helpers.tracking_copy)
    or on a search of its own."""
    root = tmp_path_factory.mktemp("smoke_search")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    out = run_search("--space", "ablation_capacity", "--workload", "smoke", "--storage-path", str(root / "ray_results"),
                     "--tracking-uri", uri, "--set", "plots=true", "--register", cwd=root, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return FinishedSearch(root, uri, root / "ray_results" / "ablation_capacity", out.stdout)


@pytest.fixture
def ray_tmp():
    """Ray's temp folder for one test (RAY_TMPDIR; short, for Ray's socket paths): the cluster file
    and sessions of the clusters it starts go there, never to the machine's /tmp/ray."""
    folder = Path(tempfile.mkdtemp(prefix="raytest-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
