"""Which evaluation a report's PGD and AA columns hold, read from each run's logged config: a
column heading names the evaluation its runs had (`PGD-10`, `AA (apgd-ce, 20 iterations)`), and
a column whose runs had different ones says so in its heading and in a note, so that no PGD-10
number sits under a PGD-20 heading (bilaw/config/reproducibility.py defines the paper's evaluation)."""
from __future__ import annotations

from typing import Any

from bilaw.config.reproducibility import aa_label, pgd_label

EVAL_COLUMNS = ("PGD", "AA")


def run_evaluation(run: Any, column: str) -> str | None:
    """The evaluation behind a run's `column` ("PGD": 'PGD-20'; "AA": 'standard', a custom
    subset with its iterations), None where its params do not say (a run logged without them)."""
    params = run.data.params
    if column == "PGD":
        steps = params.get("eval_pgd_steps")
        return None if steps is None else pgd_label(steps)
    if not any(k in params for k in ("aa_version", "aa_attacks")):
        return None
    return aa_label(params)


def column_evaluations(runs: list, column: str, metric: str) -> list[str]:
    """The distinct evaluations behind `column` among the runs that have `metric`, sorted."""
    return sorted({e for r in runs if metric in r.data.metrics and (e := run_evaluation(r, column)) is not None})


def heading(column: str, evaluations: list[str]) -> str:
    """`column`'s heading: the one evaluation its runs had ('PGD-20'; 'AA' for standard AutoAttack
    with its own iterations, else 'AA (apgd-ce, 5 iterations)'), 'PGD (mixed: PGD-10 / PGD-20)'
    for several, the bare name where none is known."""
    if not evaluations:
        return column
    if len(evaluations) > 1:
        return f"{column} (mixed: {' / '.join(evaluations)})"
    (only,) = evaluations
    if column == "PGD":
        return only
    return column if only == "standard" else f"{column} ({only})"


def mixed_note(groups: dict[str, dict[str, list[str]]]) -> str:
    """A note for each column whose rows (label -> column -> evaluations) had different
    evaluations, naming which row had which; '' where every column had one."""
    notes = []
    for column in EVAL_COLUMNS:
        found = sorted({e for evals in groups.values() for e in evals.get(column, [])})
        if len(found) < 2:
            continue
        where = "; ".join(f"{e}: {', '.join(label for label, evals in groups.items() if e in evals.get(column, []))}"
                          for e in found)
        notes.append(f"note: the {column} column mixes evaluations ({where}); only accuracies measured alike "
                     f"compare (tune/rerun_best.py re-runs a config with the paper's)")
    return "\n".join(notes)
