"""The metrics a run reports that a search may rank by: each registered once with its direction
(higher or lower is better) and when it is reported (every epoch, so a scheduler can act on it,
or once, after training). Search spaces validate their `metric` against this registry. Also the
FINISHED flag of a run's last report and `finished`, the one test of whether a run finished."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from bilaw.registry import Registry

# The registered metrics' names, for code that reads them (each name is a key of stored runs:
# metrics.json, MLflow and users' YAML; never change one's value).
TRAIN_LOSS = "train_loss"
VAL_CLEAN_ACC = "val_clean_acc"
VAL_PGD_ACC = "val_pgd_acc"
BEST_VAL_PGD_ACC = "best_val_pgd_acc"
TEST_CLEAN_ACC = "test_clean_acc"
TEST_PGD_ACC = "test_pgd_acc"
TEST_AA_ACC = "test_aa_acc"
TEST_PGD_ACC_AA_SUBSET = "test_pgd_acc_aa_subset"
LAST_TEST_CLEAN_ACC = "last_test_clean_acc"
LAST_TEST_PGD_ACC = "last_test_pgd_acc"
ROBUST_OVERFIT_GAP = "robust_overfit_gap"

# The trainer's last report (the last epoch's metrics with the final ones) carries FINISHED = 1,
# a number because Ray Tune results take numbers ("done" is Ray Tune's own key). It marks a report,
# not a measurement: MLflow never gets it as a metric (tune/tracking/runs.py numeric_metrics), since
# a run's status already says it finished and a "finished" column would sit among the accuracies.
FINISHED = "finished"


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
    (TRAIN_LOSS, "min", "epoch", "the epoch's weighted training loss"),
    (VAL_CLEAN_ACC, "max", "epoch", "clean accuracy on the held-out validation set"),
    (VAL_PGD_ACC, "max", "epoch", "PGD accuracy on the held-out validation set"),
    (BEST_VAL_PGD_ACC, "max", "epoch", "the best val_pgd_acc so far (what picks the best state)"),
    (TEST_CLEAN_ACC, "max", "final", "clean test accuracy of the best state"),
    (TEST_PGD_ACC, "max", "final", "PGD test accuracy of the best state"),
    (TEST_AA_ACC, "max", "final", "AutoAttack accuracy of the best state on the first aa_samples test points"),
    (TEST_PGD_ACC_AA_SUBSET, "max", "final", "PGD accuracy of the best state on AutoAttack's points"),
    (LAST_TEST_CLEAN_ACC, "max", "final", "clean test accuracy of the last state"),
    (LAST_TEST_PGD_ACC, "max", "final", "PGD test accuracy of the last state"),
    (ROBUST_OVERFIT_GAP, "min", "final", "best held-out PGD accuracy minus the last epoch's: how far robust "
                                         "accuracy fell after its best epoch (robust overfitting)"),
]:
    _register(_name, _direction, _when, _meaning)


def epoch_metrics() -> list[str]:
    """The registered metrics reported every epoch (what a scheduler such as ASHA can act on)."""
    return [name for name in METRICS.names() if METRICS.facts(name)["when"] == "epoch"]


def scalar_final(final: dict[str, Any]) -> dict[str, float]:
    """The final metrics that are single numbers (what trackers log as metrics)."""
    return {k: v for k, v in final.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def final_report(final: dict[str, Any]) -> dict[str, float]:
    """What the trainer's last report adds to its epoch's metrics: the scalar final metrics and
    FINISHED = 1."""
    return {**scalar_final(final), FINISHED: 1}


def finished(metrics: Mapping[str, Any]) -> bool:
    """Whether `metrics` are a finished run's: a report or Ray result carrying FINISHED, or any
    mapping holding the final metrics (TEST_CLEAN_ACC), the test used before the flag existed,
    which MLflow runs (never given the flag) and saved metrics.json of earlier versions still
    pass. An epoch's report has neither."""
    return bool(metrics.get(FINISHED)) or TEST_CLEAN_ACC in metrics
