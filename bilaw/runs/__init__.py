"""A finished run on disk: writing it, loading its best model back, reading its config and
metrics (each file checked before use), and exporting it as a RobustBench entry.
"""
from bilaw.lazy_exports import lazy_exports

_EXPORTS = {
    "save_run": "saved",
    "load_run": "saved",
    "read_metrics": "saved",
    "read_run_config": "saved",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
