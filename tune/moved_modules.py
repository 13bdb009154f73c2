"""The old import paths of modules that moved into tune's subpackages, kept importable.

Ray Tune pickles the searcher, the scheduler and the run config's callbacks into a search's
experiment snapshot, naming each class by its module path; `--resume` of a search stored before
the move unpickles `tune.trial_tracking.TrialTracking` and the like. `install` puts an import hook
first on `sys.meta_path` that answers each old name with the module now at the new one (the same
module object, so classes compare equal), and nothing else.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType

MOVED = {
    "tune.space_schema": "tune.spaces.schema",
    "tune.space_loading": "tune.spaces.loading",
    "tune.space_conditions": "tune.spaces.conditions",
    "tune.seeds": "tune.spaces.seeds",
    "tune.trial_tracking": "tune.tracking.trial_callback",
    "tune.model_store": "tune.tracking.model_store",
    "tune.model_registry": "tune.tracking.model_registry",
    "tune.run_queries": "tune.tracking.queries",
    "tune.runs_view": "tune.tracking.runs_view",
    "tune.search_report": "tune.results.search_outcome",
    "tune.search_paired": "tune.results.best_vs_rest",
    "tune.search_figures": "tune.results.figures",
    "tune.paired": "tune.results.paired",
    "tune.paired_runs": "tune.results.per_point_runs",
    "tune.pareto": "tune.results.pareto",
    "tune.uncertainty": "tune.results.uncertainty",
    "tune.report_eval": "tune.results.eval_columns",
}


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path and loads it as the module at its new path."""

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec) -> ModuleType:
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module: ModuleType) -> None:
        """The module at the new path ran when it was imported."""


def install() -> None:
    """Make the old paths importable in this process (once)."""
    if not any(isinstance(f, _OldPaths) for f in sys.meta_path):
        sys.meta_path.insert(0, _OldPaths())
