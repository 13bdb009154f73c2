"""What makes one method differ from another: the per-sample objective (plain, AT, TRADES), the
sample weighting (GAIRAT, WMMR, MAIL, BiLAW and its frozen control, the non-parametric
alignment), the margin inputs BiLAW's weight net sees, the bilevel (look-ahead) step, and the
signals that say whether a learned weighting stayed alive and learned its map.
"""
from bilaw.lazy_exports import lazy_exports

_EXPORTS = {
    "OBJECTIVES": "objectives",
    "WEIGHTINGS": "weighting",
    "WeightNet": "weighting",
    "MARGIN_INPUTS": "margins",
    "weight_health": "weight_health",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
