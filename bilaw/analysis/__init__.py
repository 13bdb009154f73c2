"""What a run's weights mean, after training: the data behind the paper's interpretability
figures (weights against margins, vulnerable samples), the weight net's map seen at a few epochs
(margin -> weight, current and initial net), and the figures themselves.
"""
from bilaw.lazy_exports import lazy_exports

_EXPORTS = {
    "write_plots": "plots",
    "map_snapshot": "weight_maps",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
