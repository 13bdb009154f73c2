"""Every shipped search space runs end to end on the smoke workload, the way a new user starts it
(`python tune/run_search.py --space NAME --workload smoke`), on real Ray with a SQLite MLflow
store. The spaces come from the project's own listing, so a new space is tested by adding it."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from helpers import run_search, search_runs, tracebacks
from tune import spaces as sp

SHIPPED = [name for name, _ in sp.list_spaces()]
SAMPLES = 2  # trials of a sampled (not grid) space
# A conditional parameter that a trial of that small search lacks (the seeded sampler's second draw
# is a plain BiLAW trial), so the progress reporter meets a trial without it.
LACKED = {"bilaw_tpe": "trades_beta"}


def _budget(space: sp.SearchSpace) -> tuple[list[str], int]:
    """The smallest search of the space (one seed; a grid runs its whole grid) and its trial count."""
    if space.sampler == "grid":
        return ["--seeds", "1"], space.grid_size()
    return ["--seeds", "1", "--num-samples", str(SAMPLES)], SAMPLES


def _smoke_epochs(space: sp.SearchSpace) -> int:
    return int(sp.base_config(space, sp.load_workloads()["smoke"])["epochs"])


def _study_trials(folder: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'optuna.db'}").trials


def test_the_listing_is_the_space_folder():
    assert SHIPPED == sorted(p.stem for p in sp.SPACES_DIR.glob("*.yaml") if p.name != "workloads.yaml")
    assert "bilaw_tpe" in SHIPPED and "workloads" not in SHIPPED


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_space_runs_end_to_end_on_smoke(name, tmp_path):
    space = sp.load_space(name)
    budget, trials = _budget(space)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    out = run_search("--space", name, "--workload", "smoke", *budget, "--storage-path", str(tmp_path / "rr"),
                     "--tracking-uri", uri, cwd=tmp_path)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert not tracebacks(log), log[-4000:]
    assert "findfont" not in log  # matplotlib's font fallback notices stay out of a search's output
    assert f"best {space.metric[0]}:" in out.stdout and f"({trials} trials, 0 errored)" in out.stdout

    client, _, parents, children = search_runs(uri, name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == trials
    epochs = _smoke_epochs(space)
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        history = client.get_metric_history(run.info.run_id, "val_pgd_acc")
        steps = sorted(m.step for m in history)
        assert steps == list(range(1, len(steps) + 1)) and steps, (run.info.run_name, steps)  # epochs from 1
        if run.data.tags["trial_status"] == "completed":
            assert run.info.status == "FINISHED" and len(steps) == epochs
            assert 0.0 <= run.data.metrics["test_pgd_acc"] <= 1.0

    study = _study_trials(tmp_path / "rr" / name, name)
    assert len(study) == trials
    if name in LACKED:
        assert any(LACKED[name] not in t.params for t in study), [t.params for t in study]
        # the MLflow run of each trial says which searched params it was never given
        lacking = sorted(r.data.params["method"] for r in children if r.data.tags.get("not_searched") == LACKED[name])
        given = sorted(r.data.params["method"] for r in children if "not_searched" not in r.data.tags)
        assert lacking and all(m == "bilaw" for m in lacking) and all(m == "bilaw_trades" for m in given), (
            lacking, given)
