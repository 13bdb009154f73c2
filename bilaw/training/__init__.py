"""The one training loop (`train`: a method is an objective plus a weighting), its atomic
checkpoints with RNG state (a killed run resumes exactly), the per-epoch statistics, progress
output, and how epochs are numbered (from 1).
"""
from bilaw.lazy_exports import lazy_exports

_EXPORTS = {
    "train": "trainer",
    "TrainResult": "trainer",
    "resolve_device": "trainer",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
