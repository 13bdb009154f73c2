"""Judging a model: white-box attacks (PGD under l-inf and l-2, TRADES' inner maximisation),
AutoAttack through pyautoattack, clean / PGD / AutoAttack accuracy with per-class and confusion
statistics, and the per-point results with McNemar's paired test.
"""
from bilaw.lazy_exports import lazy_exports

_EXPORTS = {
    "pgd": "attacks",
    "NORMS": "attacks",
    "run_autoattack": "autoattack",
    "evaluate_model": "evaluate",
    "accuracy": "evaluate",
    "mcnemar_p": "per_point",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
