"""Is a learned weighting alive, and did it learn? A run's weight status, read from its per-epoch
history: `collapsed`, `untrained`, `faded` or `learned` (`weight_status`).

A weight net can stop weighting without any error: its weights drift to uniform (the run is then
plain AT at twice the cost). `weight_std` is the per-epoch standard deviation of the weights on
the mean-1 scale of their batches (0 = uniform), so both conditions are read from it:

- **collapsed**: an epoch after burn-in whose `weight_std` is below `COLLAPSE_STD` (every weight
  within about 0.1% of its batch mean) after an epoch at or above it: `weights_collapsed_epoch` is
  the first such epoch (counted from 1, bilaw/epochs.py). A freshly initialised weight net gives nearly uniform weights,
  so a run whose first few meta steps have not yet moved it is not called collapsed.
- **faded**: the last epoch's `weight_std` is below `FADE_FRACTION` of its peak over the epochs
  after burn-in: `weights_faded`, with `weight_std_peak`.
- **untrained**: the map did not move beyond what a frozen net shows. `weight_std` cannot tell
  (with the net fixed it still moves with the classifier's margins), so this reads the statistics
  that compare the net with its own initial state on the same samples (bilaw/methods/weight_learning.py):
  in the last weighted epoch the current and the initial net rank the samples alike
  (`weight_rank_corr_init` >= UNTRAINED_RANK_CORR) and spread them alike (`weight_std` within a
  factor UNTRAINED_SPREAD_RATIO of `weight_std_init`). A frozen net gives exactly 1 and 1.
- **learned**: none of the above.
Collapse is the strongest; a net that never moved is `untrained` even when the margins faded
its weights.

The untrained thresholds come from measured runs (`python benchmarks/weight_learning.py`: digits,
FC1, batch 32, 12 epochs, seeds 0-2, 1 and 2 torch threads; output in
docs/results/benchmarks/weight_learning_12.txt). The frozen control and BiLAW with meta_lr 1e-9
gave a last-epoch rank correlation of 1.0000 and a spread ratio of 1.000 on all 12 runs (drift 0
or under 1e-11). The default BiLAW gave rank correlations 0.58-0.99 (seeds 0, 1, 2: 0.580,
0.994, 0.785 on one thread; 0.580, 0.994, 0.762 on two) and spread ratios 0.66-1.34 (1.119, 1.336,
0.663; 1.113, 1.340, 0.660), drift 6e-3 to 9e-3. No default run lies inside both lines: seed 1
ranks like its initial net (0.994) but spreads its weights a third wider, seed 0 spreads about
as wide (1.11) but ranks differently (0.58). The lines sit at 0.99 and 5%: a run inside both
gives, to within 5% of spread and 1% of rank agreement, the initial net's weights.
"""
from __future__ import annotations

from typing import Any, Sequence

COLLAPSE_STD = 1e-3
FADE_FRACTION = 0.25
UNTRAINED_RANK_CORR = 0.99
UNTRAINED_SPREAD_RATIO = 1.05
STATUSES = ("collapsed", "untrained", "faded", "learned")


def _active(history: Sequence[dict[str, Any]], burn_in: int) -> list[dict[str, Any]]:
    """The weighted epochs: those after the `burn_in` first ones (epochs count from 1)."""
    return [m for m in history if m["epoch"] > burn_in and "weight_std" in m]


def collapsed_epoch(history: Sequence[dict[str, Any]], burn_in: int) -> int | None:
    """The first epoch after burn-in with `weight_std` < COLLAPSE_STD that follows a weighted
    epoch with `weight_std` >= COLLAPSE_STD, or None."""
    spread = False
    for m in _active(history, burn_in):
        if m["weight_std"] >= COLLAPSE_STD:
            spread = True
        elif spread:
            return m["epoch"]
    return None


def is_faded(last: float, peak: float) -> bool:
    """The last epoch's `weight_std` is under FADE_FRACTION of its peak."""
    return bool(last < FADE_FRACTION * peak)


def is_untrained(last: dict[str, Any]) -> bool:
    """The last weighted epoch's map is the initial net's: the same ranking and the same spread."""
    rank, std, std_init = last.get("weight_rank_corr_init"), last.get("weight_std"), last.get("weight_std_init")
    if rank is None or std is None or std_init is None:
        return False
    if rank != rank:  # NaN: constant weights (collapse, or a net whose output never varies)
        return False
    ratio = std / std_init if std_init > 0 else (1.0 if std == 0 else float("inf"))
    return bool(rank >= UNTRAINED_RANK_CORR and 1 / UNTRAINED_SPREAD_RATIO <= ratio <= UNTRAINED_SPREAD_RATIO)


def weight_health(history: Sequence[dict[str, Any]], burn_in: int) -> dict[str, Any]:
    """`weight_std_peak`, `weight_std_last`, `weights_faded`, `weight_status` and, when it
    happened, `weights_collapsed_epoch` (empty for a history with no weighted epoch); with the
    learning statistics, also the last epoch's `weight_net_drift` and `weight_rank_corr_init`."""
    active = _active(history, burn_in)
    if not active:
        return {}
    peak, last = max(m["weight_std"] for m in active), active[-1]["weight_std"]
    out: dict[str, Any] = {"weight_std_peak": peak, "weight_std_last": last,
                           "weights_faded": is_faded(last, peak)}
    epoch = collapsed_epoch(history, burn_in)
    if epoch is not None:
        out["weights_collapsed_epoch"] = epoch
    for key in ("weight_net_drift", "weight_rank_corr_init", "weight_std_init"):
        if key in active[-1]:
            out[f"{key}_last"] = active[-1][key]
    out["weights_untrained"] = is_untrained(active[-1])
    out["weight_status"] = health_label(out)
    return out


def health_label(final: dict[str, Any]) -> str | None:
    """The weight status of a run's final metrics: "collapsed", "untrained", "faded" or "learned";
    None for a run without a weight net, or one from before the learning statistics that neither
    collapsed nor faded."""
    if "weights_faded" not in final and final.get("weights_collapsed_epoch") is None:
        return None
    if final.get("weights_collapsed_epoch") is not None:
        return "collapsed"
    if final.get("weights_untrained"):
        return "untrained"
    if final.get("weights_faded"):
        return "faded"
    return "learned" if "weight_rank_corr_init_last" in final else None  # older runs kept no learning statistics


def collapse_message(epoch: int, std: float) -> str:
    return (f"warning: the learned weights collapsed in epoch {epoch}: weight_std {std:.2e} < {COLLAPSE_STD:g} "
            f"(every weight equals its batch mean; from here the run trains like unweighted AT)")


def fade_message(health: dict[str, Any]) -> str:
    return (f"warning: the learned weights faded: last-epoch weight_std {health['weight_std_last']:.4f} is under "
            f"{FADE_FRACTION:.0%} of its peak {health['weight_std_peak']:.4f}")


def untrained_message(health: dict[str, Any]) -> str:
    return (f"warning: the weight net did not learn its map: in the last epoch its weights rank the samples as its "
            f"initial net's do (rank correlation {health['weight_rank_corr_init_last']:.4f}) and spread them alike "
            f"(weight_std {health['weight_std_last']:.4f} against {health['weight_std_init_last']:.4f}); the run "
            f"reweighted by margin as an untrained net would (see the bilaw_frozen control)")


def health_warning(history: Sequence[dict[str, Any]], burn_in: int, learned: bool) -> tuple[dict[str, Any], str | None]:
    """The run's `weight_health` and the warning its end prints, if any: a learned weighting whose
    net never moved (the frozen control is untrained by design), or weights that faded."""
    health = weight_health(history, burn_in)
    if health.get("weight_status") == "untrained" and learned:
        return health, untrained_message(health)
    if health.get("weights_faded"):
        return health, fade_message(health)
    return health, None
