"""What a search's results say, and how sure they are: the end-of-search outcome (the best config,
its winner run and model, `best_config.yaml`; search_outcome), whether the best config is
distinguishable from the rest (best_vs_rest, from per-point paired comparisons in paired over the
runs' per-point artifacts in per_point_runs), intervals for one accuracy or a mean over seeds
(uncertainty), the search's figures (figures), a two-objective search's Pareto front (pareto), and
which evaluation a report's columns hold (eval_columns).
"""
from bilaw.lazy_exports import lazy_exports

_EXPORTS = {
    "best_config": "search_outcome",
    "paired_summary": "best_vs_rest",
    "compare": "paired", "Paired": "paired",
    "accuracy_interval": "uncertainty", "t_interval": "uncertainty", "wilson_interval": "uncertainty",
    "draw_search_figures": "figures",
    "write_front": "pareto",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
