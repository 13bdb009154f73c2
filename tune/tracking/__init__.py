"""MLflow tracking of searches, written by the search's driver alone: one experiment per search
space, a parent run per search and a child run per Ray trial (runs), the Ray Tune callback that
writes each trial's child run from what Ray brings back (trial_callback), finding runs by value
(queries), the shared runs table a search's printed link opens (runs_view), and trained models
logged, registered and fetched back (model_store, model_registry). No trial process talks to the
tracking store.
"""
from bilaw.lazy_exports import lazy_exports

_EXPORTS = {
    **{name: "runs" for name in ("DEFAULT_TRACKING_URI", "SearchTracking", "TrialRun", "TrackingError",
                                 "check_tracking_uri", "redact_uri", "runs_table_url")},
    "TrialTracking": "trial_callback",
    "find_runs": "queries",
    **{name: "model_store" for name in ("log_model", "register", "fetch_run_folder", "ModelStoreError")},
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
