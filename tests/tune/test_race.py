"""`--race K`: a digits smoke search races its top 2 configs on up to 3 seeds through Ray, its
rounds logged under the search's parent run, and stops by its rule (replayed here from the
stored per-point results); a repeated `--resume --race` reuses the finished race runs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import run_search, search_runs, tracebacks
from mlflow.tracking import MlflowClient

from tune.finished_search import NOTE_TAG
from tune.results.paired import Paired, compare, mean_accuracy
from tune.tracking.runs import PARENT_TAG

SEEDS = 3


def _search(tmp_path: Path, *extra: str) -> str:
    out = run_search("--space", "ablation_capacity", "--workload", "smoke", "--race", "2", "--race-seeds", str(SEEDS),
                     "--storage-path", str(tmp_path / "rr"), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
                     *extra, cwd=tmp_path)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert not tracebacks(log), log[-4000:]
    return out.stdout


def _holdout(client: MlflowClient, run) -> np.ndarray:
    return np.load(client.download_artifacts(run.info.run_id, "per_point.npz"))["holdout_pgd"]


def _replay(points: dict[str, dict[int, np.ndarray]], raced: list[str]) -> tuple[list[str], list[tuple[str, int]]]:
    """The race's rule, step by step: who is left, and which (config, seed) each round ran."""
    alive, ran, seeds = list(raced), [], 1
    while True:
        have = {k: {s: points[k][s] for s in range(seeds)} for k in alive}
        leader = max(alive, key=lambda k: (mean_accuracy(have[k]), -alive.index(k)))
        for k in list(alive):
            p = compare(have[leader], have[k]) if k != leader else None
            if isinstance(p, Paired) and p.better and len(p.seeds) >= 3:  # dropped only on 3+ seeds
                alive.remove(k)
        if len(alive) == 1 or seeds == SEEDS:
            return alive, ran
        ran += [(k, seeds) for k in alive]
        seeds += 1


@pytest.mark.slow
def test_a_race_runs_its_rounds_under_the_parent_and_stops_by_its_rule(tmp_path):
    out = _search(tmp_path)
    raced = re.search(r"race: the top 2 configs \((.+), (.+)\) on up to 3 seeds each", out).groups()
    found = search_runs(f"sqlite:///{tmp_path / 'm.db'}", "ablation_capacity")
    client, exp, parent = found.client, found.experiment_id, found.parents[0]
    children = [r for r in found.children if r.data.tags[PARENT_TAG] == parent.info.run_id]
    assert len(children) == len(found.runs) - 1  # every race run is a child of the search's parent
    trials = [r for r in children if "race" not in r.data.tags]
    race = [r for r in children if r.data.tags.get("race") == "true"]
    assert len(trials) == 4 and all(r.data.params["seed"] == "0" for r in trials)

    points: dict[str, dict[int, np.ndarray]] = {}
    for r in trials:
        points.setdefault(f"weight_net={r.data.params['weight_net']}", {})[0] = _holdout(client, r)
    for r in race:
        label, seed = r.data.tags["race_config"], int(r.data.params["seed"])
        assert label == f"weight_net={r.data.params['weight_net']}" and r.data.tags["race_round"] == str(seed)
        assert r.info.status == "FINISHED" and r.info.run_name == f"{label} seed={seed}"
        points[label][seed] = _holdout(client, r)
    alive, ran = _replay(points, list(raced))
    assert sorted((r.data.tags["race_config"], int(r.data.params["seed"])) for r in race) == sorted(ran)

    lines = out.strip().splitlines()
    ending = next(x for x in lines if x.startswith("race after "))
    if len(alive) == 1:
        assert "separated" in ending and parent.data.tags["race_separated"] == "true"
    else:
        assert f"spent: {SEEDS} seeds" in ending and parent.data.tags["race_separated"] == "false"
    leader = parent.data.tags["race_winner"]
    assert leader in alive and lines[-1].startswith(f"{leader} is ")
    assert parent.info.status == "FINISHED"
    stored = Path(client.download_artifacts(parent.info.run_id, "race.txt")).read_text()
    assert ending in stored and lines[-1] in stored
    assert f"### Race\n\n```\n{stored.rstrip()}" in parent.data.tags[NOTE_TAG]  # the parent's story has it
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "search")}
    assert {"search/race_by_config.png", "search/val_pgd_acc_by_trial.png"} <= logged
    # the epoch figure was drawn again with every run (the search's trials and the race's)
    shown = Path(client.download_artifacts(parent.info.run_id, "search/val_pgd_acc_by_trial.png")).read_bytes()
    assert shown == _epoch_figure(client, children, tmp_path / "all.png")
    assert shown != _epoch_figure(client, trials, tmp_path / "search_only.png")
    _assert_race_study(tmp_path, race)
    view = json.loads(client.get_experiment(exp).tags["mlflow.sharedViewState." + parent.info.run_id])
    assert view["selectedColumns"][-1] == "tags.`race_round`"  # the printed link's table shows each run's round

    # again on the stored search: the race runs are reused, none run again, and it ends the same way
    again = _search(tmp_path, "--resume")
    assert len(client.search_runs([exp])) == len(found.runs)
    assert again.strip().splitlines()[-1] == lines[-1] and ending in again
    assert client.get_run(parent.info.run_id).info.end_time == parent.info.end_time  # nothing stored changed
    _assert_race_study(tmp_path, race)  # each race run once


def _epoch_figure(client: MlflowClient, runs: list, path: Path) -> bytes:
    """The epoch figure drawn afresh from these runs' histories (the PNG's bytes)."""
    from tune.results.figures import _plot_epochs, _save, trial_histories

    return _save(_plot_epochs(trial_histories(client, runs)), path).read_bytes()


def _assert_race_study(tmp_path: Path, race: list) -> None:
    """The study `<search>-race` holds each race run once: its params, seed and value as in MLflow."""
    import optuna

    study = optuna.load_study(study_name="ablation_capacity-race",
                              storage=f"sqlite:///{tmp_path / 'rr' / 'ablation_capacity' / 'optuna.db'}")
    assert study.metric_names == ["best_val_pgd_acc"]
    by_run = {t.user_attrs["mlflow_run_ids"][0]: t for t in study.trials}
    assert len(by_run) == len(study.trials) == len(race)
    for r in race:
        t = by_run[r.info.run_id]
        assert t.params == {"weight_net": r.data.params["weight_net"]} and t.user_attrs["seeds"] == [int(r.data.params["seed"])]
        assert t.value == r.data.metrics["best_val_pgd_acc"] and t.user_attrs["race_round"] == r.data.tags["race_round"]
        assert t.user_attrs["test_pgd_acc"] == r.data.metrics["test_pgd_acc"]


@pytest.mark.parametrize("extra, message", [
    (["--race", "1"], "--race 1: a race needs at least 2 configs"),
    (["--race", "2", "--race-seeds", "2"], "--race-seeds 2: a race drops a config only once it is distinguishably "
                                           "worse on 3 seeds"),
    (["--race", "2", "--race-seeds", "3", "--seeds", "3"], "--race-seeds 3: the search already runs 3 seed(s)"),
    (["--race", "2", "--space", "pareto"], "--race: a two-objective (nsga2) search has a front"),
])
def test_bad_race_options_are_refused_before_ray(extra, message, tmp_path, capsys):
    from tune.run_search import main

    argv = ["--space", "ablation_capacity", "--workload", "smoke", "--storage-path", str(tmp_path / "rr"),
            "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "rr").exists()
