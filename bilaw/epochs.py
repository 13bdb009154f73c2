"""How a run numbers its epochs: from 1, as papers do ("best epoch 6" is the sixth epoch trained).

A history entry's `epoch`, `best_epoch`, `weights_collapsed_epoch`, a weight-map snapshot's
`epoch`, the MLflow step of an epoch's metrics and the plots' epoch axis all use that number. The
trainer's own counter (`RunState.epoch`, a checkpoint's `epoch`) is the number of epochs done,
so after epoch N it reads N too; a best epoch of 0 means none yet.

Runs written before this convention counted from 0 (and the last entry of their metrics.json
history also held the final metrics, which the trainer's last report carries, not its history,
since). Everything written since carries the marker
EPOCHS_FROM = 1 (a key of metrics.json, of checkpoint.pt and of weight_map.npz; a tag of a run's
MLflow run), and the readers add 1 to the epoch numbers of a file without it
(`bilaw.runs.saved.read_metrics`, a resumed checkpoint, `bilaw.analysis.weight_maps.load_weight_maps`;
`tune/report.py` for an MLflow run without the tag), so an old run reads as a new one.
"""
from __future__ import annotations

from typing import Any

EPOCHS_FROM = "epochs_from"
# Final metrics that are epoch numbers (renumbered with the history).
EPOCH_KEYS = ("best_epoch", "weights_collapsed_epoch")


def renumbered_history(history: list[dict[str, Any]], final: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """A 0-based history counted from 1; with the run's `final`, its last entry loses the final
    metrics the trainer added to it (keys of `final` that no earlier entry has)."""
    out = [{**renumbered_final(h), "epoch": h["epoch"] + 1} for h in history]
    if final and out:
        earlier = {k for h in out[:-1] for k in h}
        out[-1] = {k: v for k, v in out[-1].items() if k not in final or k in earlier}
    return out


def renumbered_final(final: dict[str, Any]) -> dict[str, Any]:
    """0-based final metrics counted from 1 (`EPOCH_KEYS`; -1, no best epoch, becomes 0)."""
    return {k: v + 1 if k in EPOCH_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool) else v
            for k, v in final.items()}


def renumbered_checkpoint(state: dict[str, Any]) -> dict[str, Any]:
    """A trainer checkpoint written before EPOCHS_FROM, counted from 1: its history, its best
    state's epoch and its weight-map snapshots (the count of epochs done is the same)."""
    if state.get(EPOCHS_FROM) == 1:
        return state
    best = dict(state["best"], epoch=state["best"]["epoch"] + 1)
    maps = [dict(m, epoch=m["epoch"] + 1) for m in state.get("weight_maps") or []]
    return {**state, "history": renumbered_history(list(state["history"])), "best": best, "weight_maps": maps,
            EPOCHS_FROM: 1}
