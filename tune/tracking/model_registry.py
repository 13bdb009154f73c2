"""What a registered version of a search's winner says about itself (tune/tracking/model_store.py
`register` sets it): tags naming its run and search, the values of the searched parameters and
the run's test metrics, and a description of which search, space, seeds and metric chose it.

The searched parameters are the run's `searched` tag (tune/tracking/trial_callback.py), or for a run
logged before it, the parameters whose values differ between the runs of its search. The metric
is the search's stored objectives (`search.json` in the state folder its parent run names).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bilaw.metrics import TEST_AA_ACC, TEST_CLEAN_ACC, TEST_PGD_ACC, TEST_PGD_ACC_AA_SUBSET
from tune.tracking.runs import PARENT_TAG, SEARCHED_TAG, best_epoch, find_runs

# A version's metric tags (with its search's ranking metrics): what the model scored, on how many points.
TAG_METRICS = (TEST_CLEAN_ACC, TEST_PGD_ACC, TEST_AA_ACC, TEST_PGD_ACC_AA_SUBSET, "test_points", "aa_points",
               "best_epoch")
OBJECTIVE = re.compile(r"^(\S+) \((max|min)\)$")  # search.json's "best_val_pgd_acc (max)"


@dataclass
class VersionFacts:
    """A run and its search, as a registered version shows them."""

    run: Any
    parent: Any | None
    searched: list[str]
    objectives: list[tuple[str, str]]  # (metric, max|min), empty where the search stored none
    tags: dict[str, str] = field(default_factory=dict)


def tag_number(value: float) -> str:
    """A metric as a tag: a whole number without decimals, else Python's shortest exact repr."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def searched_params(client: Any, run: Any) -> list[str]:
    """The run's searched parameters (its `searched` tag; else those that vary among its search's runs)."""
    if run.data.tags.get(SEARCHED_TAG):
        return run.data.tags[SEARCHED_TAG].split(",")
    parent = run.data.tags.get(PARENT_TAG)
    if not parent:
        return []
    siblings = find_runs(client, [run.info.experiment_id], {f"tags.{PARENT_TAG}": parent}, max_results=5000)
    return sorted(k for k in run.data.params if k != "seed" and len({s.data.params.get(k) for s in siblings}) > 1)


def search_objectives(parent: Any | None) -> list[tuple[str, str]]:
    """(metric, direction) the search ranked by, from its stored search.json; [] where unreadable."""
    from tune.state_files import IDENTITY_FILE

    folder = parent.data.tags.get("state_dir") if parent is not None else None
    try:
        stored = json.loads((Path(folder) / IDENTITY_FILE).read_text()) if folder else {}
    except (OSError, ValueError):
        return []
    found = [OBJECTIVE.match(str(o)) for o in stored.get("objectives", [])] if isinstance(stored, dict) else []
    return [(m.group(1), m.group(2)) for m in found if m]


def version_tags(client: Any, run_id: str) -> VersionFacts:
    """The facts of run `run_id` and its search, with the version's tags: run_id, search_run_id,
    the searched parameters and seed, TAG_METRICS and the search's ranking metrics."""
    run = client.get_run(run_id)
    parent_id = run.data.tags.get(PARENT_TAG)
    parent = client.get_run(parent_id) if parent_id else None
    facts = VersionFacts(run, parent, searched_params(client, run), search_objectives(parent))
    params, metrics = run.data.params, run.data.metrics
    tags = {"run_id": run_id, **({"search_run_id": parent_id} if parent_id else {})}
    tags.update({k: params[k] for k in [*facts.searched, "seed"] if k in params})
    for key in [*TAG_METRICS, *(m for m, _ in facts.objectives)]:
        value = best_epoch(run) if key == "best_epoch" else metrics.get(key)
        if value is not None and math.isfinite(value):
            tags[key] = tag_number(value)
    facts.tags = tags
    return facts


def describe(facts: VersionFacts) -> str:
    """Which search, space, seeds and metric chose the version's run (MLflow shows it as the
    version's description)."""
    run, parent, params = facts.run, facts.parent, facts.run.data.params
    values = ", ".join(f"{k}={params.get(k, '-')}" for k in facts.searched) or "no searched parameter"
    if parent is None:
        search = "no search (the run has no parent run)"
    else:
        t = parent.data.tags
        search = (f"the search '{parent.info.run_name}' (MLflow run {parent.info.run_id}): space "
                  f"{t.get('space', '?')} on workload {t.get('workload', '?')}, sampler {t.get('sampler', '?')} "
                  f"with sampler seed {t.get('sampler_seed', '?')}, trial seeds {t.get('seeds', '?')}")
    chosen = "; ".join(f"{m} ({d}) = {facts.tags.get(m, '-')}" for m, d in facts.objectives)
    return (f"Chosen by {chosen or 'its search ranking metric (not recorded: no search.json in its state folder)'} "
            f"in {search}. This run: {values}, seed {params.get('seed', '?')} (MLflow run {run.info.run_id}, "
            f"'{run.info.run_name}'). Its searched values and test metrics are this version's tags; its full "
            f"config is config.yaml among the model's files.")
