"""The end of a search: is its best config distinguishable from the others? Each finished
config's runs are paired with the best config's, seed by seed and point by point on the points
its ranking metric counts (tune/results/paired.py), and the summary says which configs the best one is
not distinguishable from."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bilaw.config.train_config import TrainConfig
from tune.plan import Plan
from tune.results.paired import (Comparison, Paired, against_leader, format_comparisons, mean_accuracy, verdict,
                                 winner_standing)
from tune.results.per_point_runs import PerPointStore, can_pair, group_points, shared_points, what
from tune.tracking.runs import TRIAL_ID_TAG, SearchTracking, run_name
from tune.trainable import ran_config

PAIRED_ARTIFACT = "paired_comparisons.txt"
DISTINGUISHABLE_TAG = "winner_distinguishable"  # tune/results/paired.py winner_standing: true | runs only | false | not compared


def config_label(space: Any, cfg: TrainConfig, precise: bool = False) -> str:
    """A config by its searched values, as its runs are named without the seed: "weight_net=64"
    (floats to 4 significant digits; `precise`: every digit). Never cut short."""
    values = {k: p.shown_for(cfg) for k, p in space.params.items()}
    if precise:  # a float as a string is left whole by run_name
        values = {k: repr(v) if isinstance(v, float) else v for k, v in values.items()}
    return run_name(values, "the config", limit=100_000)


def config_key(plan: Plan, cfg: TrainConfig) -> str:
    """What makes two trials the same config: every value but the seed."""
    return cfg.replace(seed=plan.seeds[0]).to_yaml()


@dataclass
class ConfigPoints:
    """Per-point results of a search's finished configs: label -> seed -> bool per point."""

    metric: str
    groups: dict[str, dict[int, np.ndarray]]
    labels: dict[str, str]                       # config_key -> label
    notes: list[str] = field(default_factory=list)

    def mean(self, label: str) -> float:
        return mean_accuracy(self.groups.get(label, {}))


def _labels(plan: Plan, configs: dict[str, TrainConfig]) -> dict[str, str]:
    """config_key -> label: the short label, or every digit where two configs' short ones meet."""
    short = {key: config_label(plan.space, cfg) for key, cfg in configs.items()}
    clash = {label for label in short.values() if list(short.values()).count(label) > 1}
    return {key: config_label(plan.space, configs[key], precise=True) if label in clash else label
            for key, label in short.items()}


def finished_config_points(plan: Plan, results: Any, store: PerPointStore, metric: str, runs: list) -> ConfigPoints:
    """The per-point results for `metric` of every finished trial (not those flagged for gradient
    masking, unless --allow-suspect), from their MLflow runs (`runs`: the search's child runs)."""
    allow_suspect = plan.options.allow_suspect
    by_trial = {r.data.tags.get(TRIAL_ID_TAG): r for r in runs}
    keys: dict[str, str] = {}
    configs: dict[str, TrainConfig] = {}
    chosen = []
    for r in results:
        m = r.metrics or {}
        if r.error is not None or not math.isfinite(m.get(plan.space.metric[0], math.nan)):
            continue
        if m.get("suspect_gradient_masking") and not allow_suspect:
            continue
        run = by_trial.get(m.get("trial_id"))
        if run is None:
            continue
        cfg = ran_config(r)
        keys[run.info.run_id] = key = config_key(plan, cfg)
        configs.setdefault(key, cfg)
        chosen.append(run)
    labels = _labels(plan, configs)
    groups, notes = group_points(store, chosen, lambda run: labels[keys[run.info.run_id]],
                                 metric)
    return ConfigPoints(metric, groups, labels, notes)


def paired_lines(points: ConfigPoints, leader: str) -> tuple[list[str], dict[str, Comparison]]:
    """The printed block: the leader against every other config, best mean first, and the verdict."""
    others = sorted((k for k in points.groups if k != leader), key=lambda k: -points.mean(k))
    comparisons = against_leader({k: points.groups[k] for k in [leader, *others]}, leader,
                                 shared_points(points.metric))
    head = (f"paired: {leader} against each other config, {what(points.metric)}, point by "
            f"point (leader minus other, 95% interval):")
    lines = [head, *format_comparisons(comparisons), *(f"  note: {n}" for n in points.notes)]
    line = verdict(leader, comparisons)
    if any(isinstance(p, Paired) and not p.better for p in comparisons.values()):
        line += ("; the ranking metric still picks it (the config saved, logged and re-run), though these runs do not "
                 "show it better than every other config; more seeds (--race K) or more held-out points can settle it")
    return [*lines, line], comparisons


def paired_summary(plan: Plan, results: Any, tracking: SearchTracking, cfg: TrainConfig, folder: Path,
                   child_runs: list, store: PerPointStore | None = None) -> tuple[list[str], list[Path]]:
    """The lines that say whether the search's winner is distinguishable from the other configs
    (tune/results/paired.py) and the file holding them; tags the parent run with the answer. Never stops
    the report: a failure is one line saying so."""
    metric = plan.space.metric[0]
    if plan.space.multi_objective:
        return [], []
    if not can_pair(metric):
        return [f"paired comparison: not available for {metric} (no per-point results for it)"], []
    try:
        points = finished_config_points(plan, results, store or PerPointStore(tracking.client), metric, child_runs)
        leader = points.labels.get(config_key(plan, cfg), config_label(plan.space, cfg))
        if leader not in points.groups:
            return [f"paired comparison: {leader} has no per-point results; nothing compared"], []
        if len(points.groups) < 2:
            return [f"paired comparison: {leader} is the only finished config; nothing to compare it with"], []
        lines, comparisons = paired_lines(points, leader)
        if tracking.parent_run_id is not None:
            tracking.client.set_tag(tracking.parent_run_id, DISTINGUISHABLE_TAG, winner_standing(comparisons))
        path = folder / PAIRED_ARTIFACT
        path.write_text("\n".join(lines) + "\n")
        return lines, [path]
    except Exception as exc:  # the comparison is a reading of the results, never a reason to lose them
        return [f"warning: paired comparison failed: {type(exc).__name__}: {exc}"], []
