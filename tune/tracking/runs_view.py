"""The runs table a search's printed link opens: its trials, best first, with what was searched and
what they scored as columns.

MLflow's UI (3.x) restores a saved view from the link `#/experiments/<id>/runs?viewStateShareKey=<key>`:
it reads the experiment tag SHARED_VIEW_TAG + key, a JSON object whose search keys (searchFilter,
orderByKey, orderByAsc, ...) and display keys (selectedColumns, runsHiddenMode, ...) replace the
defaults. The display keys that say which rows are expanded or pinned are ignored, so the view
filters on the parent run rather than expanding it: the table lists the search's trials themselves.
A column is named `params.`<name>`` or `metrics.`<name>``, as the UI's column menu names it.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

from bilaw.metrics import TEST_AA_ACC, TEST_CLEAN_ACC, TEST_PGD_ACC

SHARED_VIEW_TAG = "mlflow.sharedViewState."
# The trials' scores shown beside the ranking metric, where any trial has them.
SCORE_COLUMNS = (TEST_CLEAN_ACC, TEST_PGD_ACC, TEST_AA_ACC, "best_epoch")
SHOW_ALL_RUNS = "SHOW_ALL"  # the charts draw every run (the UI's default hides all but the first 10)


def column(kind: str, name: str) -> str:
    """A runs-table column as the UI names it: kind "params", "metrics" or "tags"."""
    return f"{kind}.`{name}`"


def search_view(parent_run_id: str, params: Sequence[str], metrics: Sequence[str], modes: Sequence[str],
                logged: Iterable[str], tags: Sequence[str] = ()) -> dict[str, Any]:
    """The view of one search: its child runs, ranked by `metrics[0]` (`modes[0]` "max" or "min"),
    with the searched `params` and the seed, the ranking metrics, the SCORE_COLUMNS in `logged`
    (the metric names its runs have) and the `tags` (e.g. a race's round) as columns."""
    logged = set(logged)
    shown = list(dict.fromkeys([*metrics, *(m for m in SCORE_COLUMNS if m in logged)]))
    return {
        "searchFilter": f"tags.mlflow.parentRunId = '{parent_run_id}'",
        "orderByKey": column("metrics", metrics[0]),
        "orderByAsc": modes[0] == "min",
        "selectedColumns": [column("params", p) for p in dict.fromkeys([*params, "seed"])]
                           + [column("metrics", m) for m in shown] + [column("tags", t) for t in tags],
        "runsHiddenMode": SHOW_ALL_RUNS,
    }


def share_view(client: Any, experiment_id: str, key: str, view: dict[str, Any]) -> str:
    """Store `view` on the experiment under `key` (what the link's viewStateShareKey names); returns `key`."""
    client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG + key, json.dumps(view))
    return key
