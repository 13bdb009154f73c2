"""Is a learned weighting still alive? Two named conditions read from a run's per-epoch history.

A weight net can stop weighting without any error: its weights drift to uniform (the run is then
plain AT at twice the cost). `weight_std` is the per-epoch standard deviation of the weights on
the mean-1 scale of their batches (0 = uniform), so both conditions are read from it:

- **collapsed**: an epoch after burn-in whose `weight_std` is below `COLLAPSE_STD` (every weight
  within about 0.1% of its batch mean) after an epoch at or above it: `weights_collapsed_epoch` is
  the first such epoch (0-based). A freshly initialised weight net gives nearly uniform weights,
  so a run whose first few meta steps have not yet moved it is not called collapsed.
- **faded**: the last epoch's `weight_std` is below `FADE_FRACTION` of its peak over the epochs
  after burn-in: `weights_faded`, with `weight_std_peak`.
"""
from __future__ import annotations

from typing import Any, Sequence

COLLAPSE_STD = 1e-3
FADE_FRACTION = 0.25


def _active(history: Sequence[dict[str, Any]], burn_in: int) -> list[dict[str, Any]]:
    return [m for m in history if m["epoch"] >= burn_in and "weight_std" in m]


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


def weight_health(history: Sequence[dict[str, Any]], burn_in: int) -> dict[str, Any]:
    """`weight_std_peak`, `weight_std_last`, `weights_faded` and, when it happened,
    `weights_collapsed_epoch` (empty for a history with no weighted epoch)."""
    active = _active(history, burn_in)
    if not active:
        return {}
    peak, last = max(m["weight_std"] for m in active), active[-1]["weight_std"]
    out: dict[str, Any] = {"weight_std_peak": peak, "weight_std_last": last,
                           "weights_faded": is_faded(last, peak)}
    epoch = collapsed_epoch(history, burn_in)
    if epoch is not None:
        out["weights_collapsed_epoch"] = epoch
    return out


def health_label(final: dict[str, Any]) -> str | None:
    """"collapsed", "faded" or None for a run's final metrics (collapse is the stronger)."""
    if final.get("weights_collapsed_epoch") is not None:
        return "collapsed"
    if final.get("weights_faded"):
        return "faded"
    return None


def collapse_message(epoch: int, std: float) -> str:
    return (f"warning: the learned weights collapsed in epoch {epoch + 1}: weight_std {std:.2e} < {COLLAPSE_STD:g} "
            f"(every weight equals its batch mean; from here the run trains like unweighted AT)")


def fade_message(health: dict[str, Any]) -> str:
    return (f"warning: the learned weights faded: last-epoch weight_std {health['weight_std_last']:.4f} is under "
            f"{FADE_FRACTION:.0%} of its peak {health['weight_std_peak']:.4f}")
