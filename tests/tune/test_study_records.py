"""The Optuna study names what MLflow holds: each study trial's user attributes give its MLflow
runs, seeds and test metrics (tune/study_records.py), checked against MLflow's own records."""
from __future__ import annotations

import statistics
from pathlib import Path

import optuna
import pytest
from helpers import run_search
from mlflow.tracking import MlflowClient

from tune.study_records import RUN_IDS_ATTR, TEST_METRICS


def check_study_names_its_runs(state: Path, uri: str, experiment: str, seeds: list[int]) -> None:
    """Every study trial lists one run per seed, each run has the trial's params and seed, and the
    trial's test metrics are the mean of its runs' (read from MLflow)."""
    client = MlflowClient(uri)
    trials = optuna.load_study(study_name=experiment, storage=f"sqlite:///{state / 'optuna.db'}").trials
    assert trials and {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
    seen: set[str] = set()
    for t in trials:
        runs = [client.get_run(run_id) for run_id in t.user_attrs[RUN_IDS_ATTR]]
        assert len(runs) == len(seeds) and t.user_attrs["seeds"] == seeds, t.user_attrs
        assert sorted(int(r.data.params["seed"]) for r in runs) == seeds
        assert all(r.data.params[k] == str(v) for r in runs for k, v in t.params.items())
        for key in ("test_clean_acc", "test_pgd_acc"):
            assert key in TEST_METRICS
            assert t.user_attrs[key] == pytest.approx(statistics.fmean(r.data.metrics[key] for r in runs), abs=1e-12)
        assert t.value == pytest.approx(statistics.fmean(r.data.metrics["best_val_pgd_acc"] for r in runs), abs=1e-12)
        seen.update(t.user_attrs[RUN_IDS_ATTR])
    assert len(seen) == len(trials) * len(seeds)  # no run named by two trials


@pytest.mark.slow
def test_a_trial_of_two_seeds_names_both_runs(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    out = run_search("--space", "ablation_capacity", "--workload", "smoke", "--seeds", "0,1", "--set", "epochs=1",
                     "--log-models", "none", "--storage-path", str(tmp_path / "rr"), "--tracking-uri", uri,
                     cwd=tmp_path, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "could not note" not in out.stderr
    check_study_names_its_runs(tmp_path / "rr" / "ablation_capacity", uri, "ablation_capacity", [0, 1])
