"""`python tune/report.py --experiment NAME [--by PARAM] [--format md|csv] [--importance] [--trials]`:
the tracked results of a search as a table in the layout of the BiLAW paper's tables.

One row per value of the searched parameter (or per method), columns Clean, PGD, AA where
present, and the PGD - Clean gap of Table 6, each the mean and standard deviation over the
finished trials with that value (seeds, re-runs); the PGD and AA headings name the evaluation
the runs had (tune/results/eval_columns.py: `PGD-10`, or flagged as mixed). It reads MLflow only;
`--importance` adds Optuna's parameter importances from the search's stored study. `--trials` lists every finished
trial instead (its searched values, the held-out ranking metric, test metrics and whether its
learned weights stayed alive), best first: the view for searches over several parameters.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as `python tune/report.py`
    import _script_path  # noqa: F401  (puts this repository first on sys.path)

from bilaw.file_errors import DamagedFileError  # noqa: E402
from bilaw.metrics import (BEST_VAL_PGD_ACC, ROBUST_OVERFIT_GAP, TEST_AA_ACC, TEST_CLEAN_ACC,  # noqa: E402
                           TEST_PGD_ACC, finished)
from tune.results.eval_columns import EVAL_COLUMNS, column_evaluations, heading, mixed_note  # noqa: E402
from tune.results.per_point_runs import PER_POINT_KEYS  # noqa: E402
from tune.results.uncertainty import accuracy_interval  # noqa: E402
from tune.spaces.schema import NOT_SEARCHED  # noqa: E402
from tune.tracking.runs import (MASKING_TAG, NOT_SEARCHED_TAG, PARENT_TAG, STATUS_TAG, TrackingError,  # noqa: E402
                                absolute_tracking_uri, best_epoch, check_store_exists, check_tracking_uri)

COLUMNS = [("Clean", TEST_CLEAN_ACC), ("PGD", TEST_PGD_ACC), ("AA", TEST_AA_ACC)]
# --trials: per-run columns after the searched values (header, metric, percent?)
TRIAL_COLUMNS = [("held-out PGD (best)", BEST_VAL_PGD_ACC, True), ("Clean", TEST_CLEAN_ACC, True),
                 ("PGD", TEST_PGD_ACC, True), ("AA", TEST_AA_ACC, True),
                 ("best epoch", "best_epoch", None), ("overfit gap", ROBUST_OVERFIT_GAP, True),
                 ("w std peak", "weight_std_peak", False), ("w std last", "weight_std_last", False)]
IGNORED_PARAMS = {"seed", "device", "data_dir"}


class ReportError(ValueError):
    """No such experiment, no finished run, or an unusable --by."""


@dataclass
class Row:
    value: str
    n: int
    cells: dict[str, tuple[float, float] | None]  # column -> (mean, std) over runs
    gap: tuple[float, float] | None
    intervals: dict[str, tuple[float, float, str] | None] = field(default_factory=dict)  # 95%: t or Wilson
    points: dict[str, int | None] = field(default_factory=dict)  # column -> test points each run has
    evaluations: dict[str, list[str]] = field(default_factory=dict)  # PGD, AA -> the evaluations its runs had


def _mean_std(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def finished_runs(uri: str, experiment: str, reruns: bool | None = None) -> list:
    """Child runs of the experiment's searches (and re-runs) that finished with test metrics.
    reruns=None: both; False: search trials only; True: re-runs of the best config only."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ReportError(f"no experiment {experiment!r} in {uri}; experiments there: {', '.join(names) or 'none'}")
    runs = [r for r in client.search_runs([exp.experiment_id], max_results=50000)
            if (reruns is not True and PARENT_TAG in r.data.tags) or (reruns is not False and "rerun_of" in r.data.tags)]
    done = [r for r in runs if r.info.status == "FINISHED" and finished(r.data.metrics)
            and r.data.tags.get(STATUS_TAG, "completed") == "completed"]
    if not done:
        kind = {True: "re-run", False: "search trial"}.get(reruns, "run")
        raise ReportError(f"experiment {experiment!r} has no finished {kind} with test metrics yet")
    return done


def choose_by(runs: list, by: str | None) -> str:
    """The parameter to group by: --by, else the one searched parameter that varies, else method."""
    params = set().union(*(r.data.params for r in runs))
    if by is not None:
        if by not in params:
            from bilaw.registry import unknown_name_message

            raise ReportError("--by: " + unknown_name_message("parameter", by, params))
        return by
    varying = varying_params(runs)
    if len(varying) == 1:
        return varying[0]
    if "method" in varying or not varying:
        return "method"
    raise ReportError(f"several parameters vary ({', '.join(varying)}); choose one with --by, or list every "
                      f"trial with --trials")


def param_value(run, name: str, missing: str = "?") -> str:
    """A run's value of `name` as the search gave it: "-" where the trial was never given one
    (a conditional param whose `when` did not hold logs its default), `missing` where not logged."""
    if name in run.data.tags.get(NOT_SEARCHED_TAG, "").split(","):
        return NOT_SEARCHED
    return run.data.params.get(name, missing)


def build_rows(runs: list, by: str) -> list[Row]:
    groups: dict[str, list] = {}
    for r in runs:
        groups.setdefault(param_value(r, by), []).append(r)
    rows = []
    for value, members in groups.items():
        values = {name: [m.data.metrics[key] for m in members if key in m.data.metrics] for name, key in COLUMNS}
        cells = {name: _mean_std(v) for name, v in values.items()}
        intervals = {name: accuracy_interval(values[name], _points(members, POINTS[key]))
                     for name, key in COLUMNS}
        gaps = [m.data.metrics[TEST_PGD_ACC] - m.data.metrics[TEST_CLEAN_ACC] for m in members]
        points = {name: _points(members, POINTS[key]) for name, key in COLUMNS if values[name]}
        evaluations = {name: column_evaluations(members, name, key) for name, key in COLUMNS if name in EVAL_COLUMNS}
        rows.append(Row(value, len(members), cells, _mean_std(gaps), intervals, points, evaluations))
    return sorted(rows, key=lambda row: _sort_key(row.value))


# The count of test points each column's accuracy is measured on (a run's final metrics).
POINTS = {TEST_CLEAN_ACC: "test_points", TEST_PGD_ACC: "test_points", TEST_AA_ACC: "aa_points"}


def _points(runs: list, key: str) -> int | None:
    counts = {int(r.data.metrics[key]) for r in runs if key in r.data.metrics}
    return counts.pop() if len(counts) == 1 else None


def _sort_key(value: str):
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def _pct(cell: tuple[float, float] | None) -> str:
    return "-" if cell is None else f"{100 * cell[0]:.2f} ± {100 * cell[1]:.2f}"


def _with_interval(row: Row, col: str) -> str:
    cell, interval = row.cells[col], row.intervals.get(col)
    if cell is None:
        return "-"
    text = f"{100 * cell[0]:.2f}" if row.n == 1 else _pct(cell)
    return text + (f" [{100 * interval[0]:.2f}, {100 * interval[1]:.2f}]" if interval else "")


def format_markdown(rows: list[Row], by: str) -> str:
    cols = [name for name, _ in COLUMNS if any(row.cells[name] for row in rows)]
    head = [by, *(heading(c, sorted({e for row in rows for e in row.evaluations.get(c, [])})) for c in cols),
            "PGD - Clean", "n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        gap = "-" if row.gap is None else f"{100 * row.gap[0]:.2f}" if row.n == 1 else _pct(row.gap)
        lines.append("| " + " | ".join([row.value, *(_with_interval(row, c) for c in cols), gap, str(row.n)]) + " |")
    return "\n".join(lines) + ("\n\naccuracies in %; a row of one run: its accuracy and, in brackets, the 95% Wilson "
                               "interval over its test points; of n runs: mean ± std and the 95% t-interval of the "
                               "mean (df = n - 1)") + _points_note(rows, cols) + \
        "".join(f"\n{n}" for n in [mixed_note({row.value: row.evaluations for row in rows})] if n)


def _points_note(rows: list[Row], cols: list[str]) -> str:
    """How many test points each column's accuracies rest on, e.g. "; points per run: Clean 360, AA 100"."""
    counts = []
    for col in cols:
        found = {row.points.get(col) for row in rows if col in row.points}
        if found and None not in found:
            counts.append(f"{col} {'/'.join(str(n) for n in sorted(found))}")
    return f"; test points per run: {', '.join(counts)}" if counts else ""


def paired_section(uri: str, runs: list, by: str, metric: str) -> str:
    """The best row against every other row, point by point on `metric`'s points and seed by seed
    (tune/results/paired.py): the difference, its 95% interval, and whether it is distinguishable."""
    from mlflow.tracking import MlflowClient

    from tune.results.paired import against_leader, format_comparisons, mean_accuracy, verdict
    from tune.results.per_point_runs import PerPointStore, group_points, shared_points, what

    pooled = [p for p in varying_params(runs) if p != by]
    if pooled:
        return (f"paired comparison on {metric}: not made, the rows pool several configs ({', '.join(pooled)} "
                f"vary within them); it needs one config per row")
    groups, notes = group_points(PerPointStore(MlflowClient(uri)), runs, lambda r: f"{by}={param_value(r, by)}", metric)
    if len(groups) < 2:
        return f"paired comparison on {metric}: fewer than two rows have per-point results" + \
            "".join(f"; {n}" for n in notes)
    ranked = sorted(groups, key=lambda k: -mean_accuracy(groups[k]))
    comparisons = against_leader({k: groups[k] for k in ranked}, ranked[0], shared_points(metric))
    lines = [f"paired: {ranked[0]} (best mean {metric}) against each other row, {what(metric)}, point by point "
             f"and seed by seed (best minus other, 95% interval):", *format_comparisons(comparisons),
             *(f"  note: {n}" for n in notes), verdict(ranked[0], comparisons)]
    return "\n".join(lines)


def varying_params(runs: list) -> list[str]:
    """Parameters whose logged value differs between runs (a run without one shows "-")."""
    params = set().union(*(r.data.params for r in runs)) - IGNORED_PARAMS
    return sorted(p for p in params if len({param_value(r, p, "-") for r in runs}) > 1)


def trial_table(runs: list) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per run, best held-out PGD accuracy first."""
    params = varying_params(runs)
    cols = [c for c in TRIAL_COLUMNS if any(c[1] in r.data.metrics for r in runs)]
    ordered = sorted(runs, key=lambda r: -r.data.metrics.get(BEST_VAL_PGD_ACC, -math.inf))
    masking_column = any(MASKING_TAG in r.data.tags or "aa_points" in r.data.metrics for r in runs)
    rows = []
    for r in ordered:
        m = r.data.metrics
        cells = [param_value(r, p, "-") for p in params]
        for _, key, pct in cols:
            cells.append("-" if key not in m else f"{best_epoch(r):.0f}" if pct is None  # best_epoch, from 1
                         else f"{100 * m[key]:.2f}" if pct else f"{m[key]:.4f}")
        if any(key == "weight_std_peak" for _, key, _ in cols):
            peak, last = m.get("weight_std_peak"), m.get("weight_std_last")
            cells.append(f"{last / peak:.2f}" if peak and last is not None else "-")
            cells.append(_weights_state(r) if peak else "-")
        if masking_column:
            cells.append(_masking_cell(r))
        rows.append([r.info.run_name, *cells])
    header = ["run", *params, *(heading(c[0], column_evaluations(runs, c[0], c[1])) if c[0] in EVAL_COLUMNS
                                else c[0] for c in cols)]
    if any(key == "weight_std_peak" for _, key, _ in cols):
        header += ["last/peak", "weights"]
    if masking_column:
        header.append("gradient masking")
    return header, rows


def _masking_cell(run) -> str:
    """suspect (tagged), no (checked), or why it was not checked (bilaw/eval/per_point.py)."""
    from bilaw.eval.per_point import MASKING_MIN_POINTS

    if MASKING_TAG in run.data.tags:
        return "suspect"
    points = run.data.metrics.get("aa_points")  # the points PGD and AutoAttack were both run on
    if points is None:
        return "-"
    return "no" if points >= MASKING_MIN_POINTS else f"unchecked: {points:.0f} AA points, needs {MASKING_MIN_POINTS}"


def _weights_state(run) -> str:
    """The run's weight status: the tag its tracking set (collapsed / untrained / faded /
    learned, bilaw/methods/weight_health.py), else, for a run tracked before the tag said more than
    collapsed or faded, the same rule on its final metrics ("alive" where it neither collapsed
    nor faded and kept no learning statistics)."""
    from bilaw.methods.weight_health import health_label, is_faded
    from tune.tracking.runs import WEIGHTS_TAG

    if run.data.tags.get(WEIGHTS_TAG):
        return run.data.tags[WEIGHTS_TAG]
    metrics = run.data.metrics
    faded = is_faded(metrics["weight_std_last"], metrics["weight_std_peak"])
    return health_label({"weights_collapsed_epoch": metrics.get("weights_collapsed_epoch"),
                         "weights_faded": faded}) or "alive"


def format_trials(header: list[str], rows: list[list[str]], fmt: str) -> str:
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf).writerows([header, *rows])
        return buf.getvalue()
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + ("\n\naccuracies in %; held-out PGD is the best epoch's PGD accuracy on the held-out "
                               "validation set (the ranking metric); best epoch counts from 1; overfit gap is the "
                               "best held-out PGD accuracy minus the last epoch's (robust overfitting); w std is the "
                               "weights' standard deviation (mean-1 scale) at its peak epoch and at the last epoch")


def format_csv(rows: list[Row], by: str) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    names = [name for name, _ in COLUMNS]
    writer.writerow([by, *[f"{n.lower()}_{s}" for n in names for s in ("mean", "std")], "gap_mean", "gap_std",
                     *[f"{n.lower()}_{s}" for n in names for s in ("lo", "hi")],
                     *[f"{n.lower()}_eval" for n in EVAL_COLUMNS], "n"])
    for row in rows:
        cells = [v for n in names for v in (row.cells[n] or ("", ""))]
        bounds = [v for n in names for v in ((row.intervals.get(n) or ("", ""))[:2])]
        evals = [" / ".join(row.evaluations.get(n, [])) for n in EVAL_COLUMNS]
        writer.writerow([row.value, *cells, *(row.gap or ("", "")), *bounds, *evals, row.n])
    return buf.getvalue()


def study_folders(runs: list, uri: str) -> list[Path]:
    """The state folders (Optuna study) of the searches `runs` belong to, from their parent runs'
    tags (`state_dir`; searches from before it kept the study in the Ray experiment folder)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    parent_ids = sorted({r.data.tags.get(PARENT_TAG) for r in runs} - {None})
    tags = [client.get_run(parent_id).data.tags for parent_id in parent_ids]
    paths = [t.get("state_dir") or t.get("ray_experiment_path") for t in tags]
    return [Path(p) for p in paths if p]


def importances(runs: list, experiment: str, uri: str) -> dict[str, float]:
    """Optuna's parameter importances for the search's ranking metric, from its stored study
    (checked first: a damaged or foreign optuna.db is a DamagedFileError naming it)."""
    import optuna

    from tune.state_files import OPTUNA_DB, check_study

    for folder in study_folders(runs, uri):
        db = folder / OPTUNA_DB
        if db.exists() or db.is_symlink():
            check_study(db, experiment, "the study is needed only for --importance: leave that option out (the "
                                        "tables read MLflow), or re-run the search")
            study = optuna.load_study(study_name=experiment, storage=f"sqlite:///{db}")
            done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
            if len({tuple(sorted(t.params.items())) for t in done}) < 2:
                raise ReportError("importance needs at least two finished trials with different parameters")
            target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
            return optuna.importance.get_param_importances(study, target=target)
    raise ReportError(f"no stored Optuna study found for experiment {experiment!r} (the search parent run's "
                      f"state_dir tag)")


def _close_orphans(uri: str, experiment: str) -> None:
    """Runs left RUNNING by a search whose driver is gone end KILLED (tune/orphans.py), so that
    nothing reads as still running; never counted as results either way."""
    from tune.orphans import KILLED_TAG, close_orphans_in_experiment

    closed, notes = close_orphans_in_experiment(uri, experiment)
    if closed:
        print(f"closed {closed} run(s) left RUNNING by a search whose driver is gone (ended KILLED, tagged "
              f"{KILLED_TAG})", file=sys.stderr)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="report.py", description="Tables of a search's tracked results (reads MLflow).")
    p.add_argument("--experiment", required=True, help="MLflow experiment (the space name, or --experiment of the search)")
    p.add_argument("--by", help="group rows by this parameter (default: the searched one, or method)")
    p.add_argument("--format", choices=["md", "csv"], default="md")
    p.add_argument("--reruns", action="store_true",
                   help="tabulate the re-runs of rerun_best.py (full evaluation) instead of the search's trials")
    p.add_argument("--importance", action="store_true", help="add Optuna's importance of each searched parameter")
    p.add_argument("--trials", action="store_true",
                   help="one row per finished trial (searched values, held-out and test metrics, weight health), "
                        "best first, instead of rows grouped by one parameter")
    p.add_argument("--paired-metric", default=TEST_PGD_ACC, choices=sorted(PER_POINT_KEYS),
                   help="compare the best row with each other row point by point on this metric (default "
                        "test_pgd_acc; best_val_pgd_acc: the search's held-out ranking metric); md format only")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///mlruns.db in this folder)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        uri = absolute_tracking_uri(args.tracking_uri)
        check_store_exists(uri)
        check_tracking_uri(uri)
        _close_orphans(uri, args.experiment)
        runs = finished_runs(uri, args.experiment, reruns=args.reruns)
        if args.trials:
            print(format_trials(*trial_table(runs), args.format), end="\n")
        else:
            by = choose_by(runs, args.by)
            rows = build_rows(runs, by)
            print(format_markdown(rows, by) if args.format == "md" else format_csv(rows, by), end="\n")
            if args.format == "md":
                try:
                    print("\n" + paired_section(uri, runs, by, args.paired_metric))
                except Exception as exc:  # noqa: BLE001 - the table above stands without the comparison
                    print(f"warning: paired comparison failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        if args.importance:
            print("\nparameter importance (Optuna, fANOVA):")
            for name, value in importances(runs, args.experiment, uri).items():
                print(f"  {name:<20} {value:.3f}")
    except (ReportError, TrackingError, DamagedFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from tune.process_exit import exit_now

    exit_now(main())
