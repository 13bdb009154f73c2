"""The per-point results of tracked runs (each run's `per_point.npz` artifact), grouped by config
and seed for the paired comparisons of tune/results/paired.py."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from bilaw.eval.per_point import PER_POINT_NAME
from bilaw.metrics import BEST_VAL_PGD_ACC, TEST_AA_ACC, TEST_CLEAN_ACC, TEST_PGD_ACC, TEST_PGD_ACC_AA_SUBSET


@dataclass(frozen=True)
class PointsOf:
    """Which per-point array a metric is the mean of: the file's key, whether only AutoAttack's
    points count (PGD on them is the first points of test_pgd), and what to call it."""

    key: str
    aa_points_only: bool
    what: str


PER_POINT_KEYS: dict[str, PointsOf] = {
    BEST_VAL_PGD_ACC: PointsOf("holdout_pgd", False, "held-out PGD accuracy of each run's best state"),
    TEST_CLEAN_ACC: PointsOf("test_clean", False, "test clean accuracy"),
    TEST_PGD_ACC: PointsOf("test_pgd", False, "test PGD accuracy"),
    TEST_AA_ACC: PointsOf("test_aa", False, "test AutoAttack accuracy"),
    TEST_PGD_ACC_AA_SUBSET: PointsOf("test_pgd", True, "test PGD accuracy on AutoAttack's points"),
}


def can_pair(metric: str) -> bool:
    return metric in PER_POINT_KEYS


def shared_points(metric: str) -> bool:
    """Whether every seed is scored on the same points for `metric`: the test set is one for all
    seeds; the held-out split is drawn by the seed."""
    return PER_POINT_KEYS[metric].key.startswith("test_")


def what(metric: str) -> str:
    return PER_POINT_KEYS[metric].what


class PerPointStore:
    """Reads and caches runs' per-point files from MLflow; a run without one (an older run, a
    lost artifact) gives None."""

    def __init__(self, client: Any) -> None:
        import os

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per run otherwise
        self.client = client
        self.cache: dict[str, dict[str, np.ndarray] | None] = {}

    def arrays(self, run_id: str) -> dict[str, np.ndarray] | None:
        if run_id not in self.cache:
            self.cache[run_id] = self._load(run_id)
        return self.cache[run_id]

    def _load(self, run_id: str) -> dict[str, np.ndarray] | None:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = self.client.download_artifacts(run_id, PER_POINT_NAME, tmp)
            except Exception:  # noqa: BLE001 - not logged, or the artifact store cannot be read
                return None
            try:
                with np.load(Path(path)) as npz:
                    return {k: npz[k] for k in npz.files}
            except (OSError, ValueError):  # a damaged file counts as none; the run's metrics still stand
                return None

    def correct(self, run_id: str, metric: str) -> np.ndarray | None:
        """Which points `run_id` gets right for `metric` (bool), or None."""
        arrays = self.arrays(run_id)
        of = PER_POINT_KEYS[metric]
        if arrays is None or of.key not in arrays:
            return None
        values = arrays[of.key].astype(bool)
        if of.aa_points_only:
            if "test_aa" not in arrays:
                return None
            values = values[:len(arrays["test_aa"])]
        return values


def group_points(store: PerPointStore, runs: Iterable[Any], label_of: Callable[[Any], str],
                 metric: str) -> tuple[dict[str, dict[int, np.ndarray]], list[str]]:
    """label -> seed -> per-point results, for the runs (MLflow runs with a `seed` param) that
    have them, and notes on what was left out. Of several runs of one label and seed, the one
    started first counts."""
    groups: dict[str, dict[int, np.ndarray]] = {}
    missing, repeated = 0, 0
    for run in sorted(runs, key=lambda r: getattr(r.info, "start_time", None) or 0):
        label, seed = label_of(run), int(run.data.params.get("seed", 0))
        values = store.correct(run.info.run_id, metric)
        if values is None:
            missing += 1
        elif seed in groups.get(label, {}):
            repeated += 1
        else:
            groups.setdefault(label, {})[seed] = values
    notes = []
    if missing:
        notes.append(f"{missing} run(s) without per-point results ({PER_POINT_NAME}) left out")
    if repeated:
        notes.append(f"{repeated} repeated run(s) of a config and seed left out (the first counts)")
    return groups, notes
