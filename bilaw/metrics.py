"""The metrics a run reports that a search may rank by: each registered once with its direction
(higher or lower is better) and when it is reported (every epoch, so a scheduler can act on it,
or once, after training). Search spaces validate their `metric` against this registry."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bilaw.registry import Registry


@dataclass(frozen=True)
class Metric:
    name: str
    direction: str   # "max" or "min": which way is better
    when: str        # "epoch" (every epoch's report) or "final" (the last report only)
    meaning: str


METRICS: Registry[Metric] = Registry("metric")


def _register(name: str, direction: str, when: str, meaning: str) -> None:
    METRICS.register(name, direction=direction, when=when)(Metric(name, direction, when, meaning))


for _name, _direction, _when, _meaning in [
    ("train_loss", "min", "epoch", "the epoch's weighted training loss"),
    ("val_clean_acc", "max", "epoch", "clean accuracy on the held-out validation set"),
    ("val_pgd_acc", "max", "epoch", "PGD accuracy on the held-out validation set"),
    ("best_val_pgd_acc", "max", "epoch", "the best val_pgd_acc so far (what picks the best state)"),
    ("test_clean_acc", "max", "final", "clean test accuracy of the best state"),
    ("test_pgd_acc", "max", "final", "PGD test accuracy of the best state"),
    ("test_aa_acc", "max", "final", "AutoAttack accuracy of the best state on the first aa_samples test points"),
    ("test_pgd_acc_aa_subset", "max", "final", "PGD accuracy of the best state on AutoAttack's points"),
    ("last_test_clean_acc", "max", "final", "clean test accuracy of the last state"),
    ("last_test_pgd_acc", "max", "final", "PGD test accuracy of the last state"),
    ("robust_overfit_gap", "min", "final", "best held-out PGD accuracy minus the last epoch's: how far robust "
                                           "accuracy fell after its best epoch (robust overfitting)"),
]:
    _register(_name, _direction, _when, _meaning)


def epoch_metrics() -> list[str]:
    """The registered metrics reported every epoch (what a scheduler such as ASHA can act on)."""
    return [name for name in METRICS.names() if METRICS.facts(name)["when"] == "epoch"]


def scalar_final(final: dict[str, Any]) -> dict[str, float]:
    """The final metrics that are single numbers (what trackers log as metrics)."""
    return {k: v for k, v in final.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
