"""`run_search.py ... --race K`: after the search (or, with --resume, a stored one), race its top K
configs on more seeds until one is separated from the rest.

Round 0 is the search itself. Each round gives every config still in the race one more seed (the
next seed it has not run) as Ray trials, tracked as children of the search's parent run and
tagged with their round and config; then the leader (best mean of the ranking metric over its
seeds) is compared with each other config, seed by seed and point by point on the points of the
ranking metric (tune/results/paired.py), and every config distinguishably worse than the leader on at
least MIN_SEEDS_TO_DROP seeds is dropped (fewer seeds cannot bound the seed-to-seed noise). The
race ends when one config is left (separated), when the configs left have `--race-seeds` seeds
each (spent), or when a round loses every trial; it prints the final paired table. A race run
that finished before (a repeated `--resume --race`) is reused, not run again.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tune.finished_search import (CONFIG_TAG, RACE_ARTIFACT, RACE_ASKED_TAG, RACE_TAG, ROUND_TAG, describe_parent,
                                  race_asked)
from tune.plan import Plan, SearchError
from tune.results.best_vs_rest import config_key, finished_config_points
from tune.results.paired import MIN_SEEDS_TO_DROP, Paired, against_leader, format_comparisons, mean_accuracy, verdict
from tune.results.per_point_runs import PerPointStore, can_pair, shared_points, what
from tune.state_files import OPTUNA_DB
from tune.study_records import RACE_SUFFIX, record_race
from tune.tracking.runs import TRIAL_ID_TAG, SearchTracking
from tune.trainable import META_KEY, VARIANT_KEY, ran_config, trial_values


def check_race(plan: Plan) -> None:
    """--race K / --race-seeds N against the space, before Ray starts."""
    k, most = plan.options.race, plan.options.race_seeds
    if k is None:
        return
    if k < 2:
        raise SearchError(f"--race {k}: a race needs at least 2 configs")
    if most < MIN_SEEDS_TO_DROP:
        raise SearchError(f"--race-seeds {most}: a race drops a config only once it is distinguishably worse on "
                          f"{MIN_SEEDS_TO_DROP} seeds, so give at least {MIN_SEEDS_TO_DROP}")
    if most <= len(plan.seeds):
        raise SearchError(f"--race-seeds {most}: the search already runs {len(plan.seeds)} seed(s) per config; "
                          f"a race adds seeds, so give more than {len(plan.seeds)}")
    if plan.space.multi_objective:
        raise SearchError("--race: a two-objective (nsga2) search has a front, not one winner to race")
    if not can_pair(plan.space.metric[0]):
        raise SearchError(f"--race: the space ranks by {plan.space.metric[0]}, which has no per-point results "
                          f"to pair; a race needs best_val_pgd_acc or a test accuracy")

@dataclass
class Race:
    """The configs in the race: label -> seed -> bool per held-out point, and their values."""

    metric: str
    points: dict[str, dict[int, np.ndarray]]
    values: dict[str, dict[str, Any]]           # label -> TrainConfig values without the seed
    alive: list[str]
    dropped: dict[str, tuple[int, Paired]] = field(default_factory=dict)  # label -> (round, the comparison then)
    lines: list[str] = field(default_factory=list)

    def leader(self) -> str:
        """Best mean over its seeds; ties: the earlier in the race (the search's order)."""
        return max(self.alive, key=lambda k: (mean_accuracy(self.points[k]), -self.alive.index(k)))

    def next_seed(self, label: str) -> int:
        have = self.points[label]
        return next(s for s in range(len(have) + 1) if s not in have)


def _values(result: Any) -> dict[str, Any]:
    """A search trial's TrainConfig values (what it was given; no seed)."""
    values = trial_values(result.config)
    values.pop("seed", None)
    return values


def start(plan: Plan, results: Any, tracking: SearchTracking, store: PerPointStore, k: int) -> Race:
    """Round 0: the top `k` configs of the search by their mean ranking metric over the held-out
    points, with the per-point results of their search trials. Ties: configs an earlier race of
    this search ran first (a repeated race continues it), then the search's winner."""
    from tune.results.search_outcome import best_config

    metric = plan.space.metric[0]
    runs = tracking.child_runs()
    found = finished_config_points(plan, results, store, metric, runs)
    winner, _ = best_config(plan, results)
    first = None if winner is None else found.labels.get(config_key(plan, winner))
    raced = {r.data.tags.get(CONFIG_TAG) for r in runs if r.data.tags.get(RACE_TAG) == "true"}
    ranked = sorted(found.groups, key=lambda label: (-found.mean(label), label not in raced, label != first))[:k]
    values: dict[str, dict[str, Any]] = {}
    for r in results:
        if r.error is None and r.config:
            label = found.labels.get(config_key(plan, ran_config(r)))
            if label in ranked:
                values.setdefault(label, _values(r))
    race = Race(metric, {label: dict(found.groups[label]) for label in ranked}, values, list(ranked))
    race.lines += [f"race: note: {n}" for n in found.notes]
    if first is not None and first not in ranked:
        race.lines.append(f"race: note: the search's winner {first} is not in the race (no per-point results)")
    return race


def _judge(race: Race, round_no: int) -> None:
    """Compare the leader with every other config still in; drop those distinguishably worse on
    at least MIN_SEEDS_TO_DROP seeds."""
    leader = race.leader()
    others = sorted((k for k in race.alive if k != leader), key=lambda k: -mean_accuracy(race.points[k]))
    comparisons = against_leader({k: race.points[k] for k in [leader, *others]}, leader, shared_points(race.metric))
    worse = [label for label, p in comparisons.items()
             if isinstance(p, Paired) and p.better and len(p.seeds) >= MIN_SEEDS_TO_DROP]
    for label in worse:
        race.alive.remove(label)
        race.dropped[label] = (round_no, comparisons[label])
    seeds = {label: len(race.points[label]) for label in [leader, *others]}
    counts = ", ".join(f"{k}: {n} seed{'s' if n != 1 else ''}" for k, n in seeds.items())
    race.lines.append(f"race round {round_no}: {leader} leads ({counts})"
                      + (f"; dropped {', '.join(worse)}" if worse else "; none dropped"))


def _round_variants(race: Race, most: int) -> list[tuple[str, int, dict[str, Any]]]:
    """One more seed for each config still in the race that has fewer than `most`."""
    return [(label, seed, {**race.values[label], "seed": seed})
            for label in race.alive if len(race.points[label]) < most for seed in [race.next_seed(label)]]


def _reuse(race: Race, store: PerPointStore, runs: list, wanted: list[tuple[str, int, dict]]) -> list[tuple[str, int, dict]]:
    """Take the per-point results of race runs that already finished; return what is left to run."""
    done = {(r.data.tags.get(CONFIG_TAG), int(r.data.params.get("seed", -1))): r for r in runs
            if r.data.tags.get(RACE_TAG) == "true" and r.info.status == "FINISHED"}
    left = []
    for label, seed, values in wanted:
        run = done.get((label, seed))
        got = None if run is None else store.correct(run.info.run_id, race.metric)
        if got is None:
            left.append((label, seed, values))
        else:
            race.points[label][seed] = got
    return left


def _run_round(plan: Plan, race: Race, round_no: int, todo: list[tuple[str, int, dict]], tracking: SearchTracking,
               store: PerPointStore, meta: dict[str, Any], resources: dict[str, float]) -> int:
    """Run one round's new seeds as Ray trials (each run tagged with its config when it starts, so
    a stopped race reuses what finished); return how many failed."""
    from tune.stopping import STOP
    from tune.variant_runs import run_variants, unfinished_trials

    results = run_variants([values for _, _, values in todo], meta=meta, resources=resources, tracking=tracking,
                           tags={RACE_TAG: "true", ROUND_TAG: str(round_no)},
                           variant_tags=[{CONFIG_TAG: label} for label, _, _ in todo],
                           name=f"{plan.experiment}-race{round_no}-{time.strftime('%Y%m%d-%H%M%S')}",
                           storage_path=plan.storage_location, searched=list(plan.space.params),
                           space=plan.space.name, max_concurrent=plan.options.max_concurrent)
    if unfinished_trials(results) or STOP.stopping:  # Ray Tune took a stop and returned:
        raise KeyboardInterrupt                                    # the race stops as interrupted
    by_trial = {r.data.tags.get(TRIAL_ID_TAG): r for r in tracking.child_runs()}
    failed = 0
    for result in results:
        label, seed, _ = todo[int(result.config[VARIANT_KEY])]
        run = by_trial.get((result.metrics or {}).get("trial_id"))
        got = None if run is None or result.error is not None else store.correct(run.info.run_id, race.metric)
        if got is None:
            failed += 1
        else:
            race.points[label][seed] = got
    return failed


def run_race(plan: Plan, results: Any, tracking: SearchTracking, folder: Path, gpus: float,
             store: PerPointStore | None = None) -> int:
    """The race after a finished search (Ray up, the parent run finished by the report); 0 when
    it ran to its end, 1 when it stopped early (a round lost every trial, or an error). What it
    found so far is printed and recorded however it ends; Ctrl-C marks the parent KILLED."""
    k, most = plan.options.race, plan.options.race_seeds
    store = store or PerPointStore(tracking.client)
    race = start(plan, results, tracking, store, k)
    for line in race.lines:
        print(line)
    if len(race.alive) < 2:
        print(f"\nrace: fewer than two configs with per-point results ({len(race.alive)}); nothing to race")
        return 0
    meta = {**next(r.config[META_KEY] for r in results if r.config and META_KEY in r.config)}
    meta.pop("seeds", None)
    tracking.client.update_run(tracking.parent_run_id, status="RUNNING")
    print(f"\nrace: the top {len(race.alive)} configs ({', '.join(race.alive)}) on up to {most} seeds each; "
          f"a config is dropped once it is distinguishably worse on {MIN_SEEDS_TO_DROP}+ seeds", flush=True)
    round_no, stopped = 0, None
    try:
        _judge(race, round_no)
        print(race.lines[-1], flush=True)
        while len(race.alive) > 1 and any(len(race.points[label]) < most for label in race.alive):
            round_no += 1
            todo = _reuse(race, store, tracking.child_runs(), _round_variants(race, most))
            if todo and _run_round(plan, race, round_no, todo, tracking, store, meta,
                                   {"cpu": plan.cpus, "gpu": gpus}) == len(todo):
                stopped = f"stopped: every trial of round {round_no} failed"
                break
            _judge(race, round_no)
            print(race.lines[-1], flush=True)
    except KeyboardInterrupt:
        _note_in_study(plan, tracking, folder)
        _finish(race, round_no, tracking, folder, most, "stopped: interrupted", "KILLED")
        raise
    except Exception as exc:  # noqa: BLE001 - the rounds that finished are still worth recording
        stopped = f"stopped by an error: {type(exc).__name__}: {exc}"
    _note_in_study(plan, tracking, folder)
    return _finish(race, round_no, tracking, folder, most, stopped, "FINISHED" if stopped is None else "FAILED",
                   race_asked(k, most))


def _note_in_study(plan: Plan, tracking: SearchTracking, folder: Path) -> None:
    """The race's finished runs, each once, as trials of the Optuna study `<search>-race`, and the
    parent's figures drawn again with them (the epochs of every run; the race's configs over seeds)."""
    from tune.results.search_outcome import search_figures

    children = tracking.child_runs()
    search_figures(plan, tracking, folder, children)
    _race_figure(plan, tracking, folder, children)
    try:
        runs = [r for r in children if r.data.tags.get(RACE_TAG) == "true"]
        added = record_race(f"sqlite:///{Path(folder) / OPTUNA_DB}", plan.experiment, runs, plan.space.metric[0],
                            "maximize" if plan.space.mode[0] == "max" else "minimize")
        if added:
            print(f"race: {added} run(s) added to the Optuna study {plan.experiment}{RACE_SUFFIX}", flush=True)
    except Exception as exc:  # noqa: BLE001 - the race's runs are in MLflow either way
        print(f"warning: could not add the race's runs to the Optuna study: {type(exc).__name__}: {exc}")


def _race_figure(plan: Plan, tracking: SearchTracking, folder: Path, children: list) -> None:
    """search/race_by_config.png on the parent: each raced config's ranking metric per seed (its
    search trial's and its race runs'), the mean and its interval."""
    from tune.results.figures import RACE_PNG, draw_race_figure

    metric, searched = plan.space.metric[0], list(plan.space.params)

    def params(run: Any) -> tuple:
        return tuple(run.data.params.get(p) for p in searched)

    raced = {params(r): r.data.tags.get(CONFIG_TAG) for r in children if r.data.tags.get(RACE_TAG) == "true"}
    by_config: dict[str, dict[int, float]] = {}
    for run in children:  # a raced config's search trial (seed 0) and its race runs
        label = raced.get(params(run))
        if label is not None and metric in run.data.metrics and run.info.status == "FINISHED":
            by_config.setdefault(label, {})[int(run.data.params.get("seed", -1))] = run.data.metrics[metric]
    if not by_config:
        return
    try:
        png = draw_race_figure(by_config, metric, Path(folder) / "search" / RACE_PNG)
        tracking.client.log_artifact(tracking.parent_run_id, str(png), "search")
    except Exception as exc:  # noqa: BLE001 - figures never stop the search
        print(f"warning: race figure: {type(exc).__name__}: {exc}")


def _finish(race: Race, rounds: int, tracking: SearchTracking, folder: Path, most: int, stopped: str | None,
            status: str, asked: str = "") -> int:
    """Print and record the race's outcome: the configs still in against the leader, and when
    and how each dropped one fell behind. The parent run is ended whatever fails on the way."""
    try:
        lines = _outcome(race, rounds, most, stopped)
        print("\n" + "\n".join(lines), flush=True)
        path = folder / RACE_ARTIFACT
        path.write_text("\n".join([*race.lines, *lines]) + "\n")
        leader = race.leader()
        tracking.client.set_tag(tracking.parent_run_id, "race_winner", leader)
        tracking.client.set_tag(tracking.parent_run_id, "race_separated", str(len(race.alive) == 1).lower())
        if status == "FINISHED" and asked:  # what a finished race was asked: the same --race again changes nothing
            tracking.client.set_tag(tracking.parent_run_id, RACE_ASKED_TAG, asked)
        tracking.client.log_artifact(tracking.parent_run_id, str(path))
        describe_parent(tracking, folder)
    except Exception as exc:  # noqa: BLE001 - what the rounds found is in their runs either way
        print(f"warning: could not record the race's outcome: {type(exc).__name__}: {exc}")
        status = "FAILED"
    finally:
        try:
            tracking.client.set_terminated(tracking.parent_run_id, status)
        except Exception as exc:  # noqa: BLE001
            print(f"warning: MLflow: could not end the parent run: {exc}")
    return 0 if status == "FINISHED" else 1


def _outcome(race: Race, rounds: int, most: int, stopped: str | None) -> list[str]:
    leader = race.leader()
    left = [leader, *sorted((k for k in race.alive if k != leader), key=lambda k: -mean_accuracy(race.points[k]))]
    comparisons = against_leader({k: race.points[k] for k in left}, leader, shared_points(race.metric))
    ending = stopped or ("separated: every other config was dropped" if len(left) == 1
                         else f"spent: {most} seeds, and {leader} is still not distinguishable from "
                              f"{', '.join(left[1:])}")
    lines = [f"race after {rounds} round(s): {ending}"]
    if len(left) > 1:
        lines += [f"paired: {leader} against each config still in the race, {what(race.metric)}, "
                  f"seed by seed and point by point (leader minus other, 95% interval):",
                  *format_comparisons(comparisons)]
    for label, (round_no, p) in race.dropped.items():
        lines.append(f"  dropped in round {round_no} (against that round's leader): "
                     f"{format_comparisons({label: p}, '')[0]}")
    lines.append(verdict(leader, comparisons) if len(left) > 1 else
                 f"{leader} is the one config left: each other raced config was distinguishably worse than the "
                 f"leader of the round it was dropped in (each test at 95%, repeated every round without correction)")
    return lines
