"""The Pareto front of a two-objective search: the non-dominated trials, as a CSV and a plot."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

FRONT_CSV = "pareto_front.csv"
FRONT_PNG = "pareto_front.png"


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """a is at least as good as b on every objective and better on one."""
    sign = [1 if m == "max" else -1 for m in modes]
    ge = all(s * x >= s * y for s, x, y in zip(sign, a, b))
    gt = any(s * x > s * y for s, x, y in zip(sign, a, b))
    return ge and gt


def non_dominated(points: list[Sequence[float]], modes: Sequence[str]) -> list[int]:
    """Indices of the points no other point dominates."""
    return [i for i, p in enumerate(points) if not any(dominates(q, p, modes) for j, q in enumerate(points) if j != i)]


def write_front(rows: list[dict[str, Any]], metrics: Sequence[str], modes: Sequence[str], folder: Path) -> tuple[Path, Path, list[dict]]:
    """rows: one dict per finished trial (trial_id, params..., metric values). Writes the front's
    CSV and a plot of every trial with the front highlighted; returns (csv, png, front rows)."""
    points = [[row[m] for m in metrics] for row in rows]
    front = [rows[i] for i in non_dominated(points, modes)]
    front.sort(key=lambda r: r[metrics[0]], reverse=modes[0] == "max")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    csv_path = folder / FRONT_CSV
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(front)
    png_path = folder / FRONT_PNG
    _plot(rows, front, metrics, png_path)
    return csv_path, png_path, front


def _plot(rows, front, metrics, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    ax.scatter([r[metrics[0]] for r in rows], [r[metrics[1]] for r in rows], c="0.6", label="trials")
    ax.plot([r[metrics[0]] for r in front], [r[metrics[1]] for r in front], "o-", c="C3", label="Pareto front")
    ax.set_xlabel(metrics[0])
    ax.set_ylabel(metrics[1])
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
