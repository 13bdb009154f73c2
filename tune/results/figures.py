"""The search's own figures, drawn from the stored Optuna study and the trials' MLflow histories.

`draw_search_figures` writes PNGs (optimisation history, parallel coordinates, parameter
importances, slices, and every trial's per-epoch validation PGD accuracy on one plot) into a
folder the driver then logs under `search/` on the parent run, at the end of a search and after
`--resume`. Figures are a by-product: one that cannot be drawn is skipped with a warning and never
stops the others or the search. `trial_histories` reads the per-epoch points from MLflow.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

import optuna
from optuna.trial import FrozenTrial, TrialState

from bilaw.metrics import VAL_PGD_ACC

HISTORY_METRIC = VAL_PGD_ACC
HISTORY_PNG = "optimization_history.png"
PARALLEL_PNG = "parallel_coordinate.png"
IMPORTANCES_PNG = "param_importances.png"
SLICE_PNG = "slice.png"
EPOCHS_PNG = "val_pgd_acc_by_trial.png"
RACE_PNG = "race_by_config.png"
MIN_IMPORTANCE_TRIALS = 3
MAX_LEGEND_ENTRIES = 15


def _pyplot():
    """pyplot on the headless Agg backend (the driver may run where there is no display)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def varied_params(study: optuna.Study, common: bool = True) -> list[str]:
    """Parameters taking at least two distinct values among the COMPLETE trials that have them; a
    parameter fixed across them says nothing about the objective. `common`: only those every
    COMPLETE trial has, since Optuna's importance evaluators and the parallel-coordinate plot use
    only those (a conditional parameter is absent from some trials)."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not trials:
        return []
    names = set(trials[0].params).intersection(*(t.params for t in trials[1:])) if common else \
        {n for t in trials for n in t.params}
    return sorted(n for n in names if len({repr(t.params[n]) for t in trials if n in t.params}) > 1)


def _target(study: optuna.Study, metric_names: list[str]) -> dict[str, Any]:
    """`target`/`target_name` keywords for Optuna's per-objective plots: a two-objective study has
    no single value per trial, so these plots show the first objective (the Pareto plot, drawn
    elsewhere, shows both); a one-objective study only gets its metric's name on the axis."""
    name = metric_names[0] if metric_names else "Objective Value"
    if len(study.directions) > 1:
        target: Callable[[FrozenTrial], float] = lambda t: t.values[0]  # noqa: E731
        return {"target": target, "target_name": name}
    return {"target_name": name}


def _save(drawn: Any, path: Path) -> Path:
    """Save the figure behind an Axes (or an array of Axes, as a multi-parameter slice plot gives)."""
    plt = _pyplot()
    axes = drawn.ravel()[0] if hasattr(drawn, "ravel") else drawn
    fig = axes.figure
    try:
        fig.savefig(path, dpi=100, bbox_inches="tight")  # keeps long parameter names inside the image
    finally:
        plt.close(fig)
    return path


def _draw(name: str, path: Path, draw: Callable[[], Any], written: list[Path]) -> None:
    """Draw one figure; Optuna's ExperimentalWarning is silenced here only, and its global
    ggplot style is undone afterwards (rc_context) so later figures of the process keep theirs.
    Matplotlib's font fallback notices (a machine without the STIX or Computer Modern fonts logs
    one per missing family) are kept out of the search's output. A failure becomes a warning, and
    any figure it left open is closed."""
    import logging

    import matplotlib

    plt = _pyplot()
    before = set(plt.get_fignums())
    fonts = logging.getLogger("matplotlib.font_manager")
    level = fonts.level
    fonts.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), matplotlib.rc_context():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            written.append(_save(draw(), path))
    except Exception as exc:  # a figure never stops the others
        warnings.warn(f"search figure {name} not drawn: {type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=3)
    finally:
        fonts.setLevel(level)
        for num in set(plt.get_fignums()) - before:
            plt.close(num)


def draw_search_figures(study: optuna.Study, histories: dict[str, list[tuple[int, float]]], folder: Path,
                        metric_names: list[str]) -> list[Path]:
    """Write the search's figures into `folder` and return the PNGs written.

    From the study (COMPLETE trials): optimisation history whenever one trial is complete; slices
    of the parameters that vary (conditional ones too); parallel coordinates when at least two
    parameters common to every trial vary; parameter importances when, besides, there are at least
    MIN_IMPORTANCE_TRIALS trials, since fANOVA's random forest fitted to fewer points ranks noise.
    A two-objective study plots its first objective (`metric_names[0]`). From `histories` (trial
    label -> (epoch, val_pgd_acc) points): every trial's validation PGD accuracy per epoch on one
    plot, drawn even when no trial completed.
    """
    from optuna.visualization import matplotlib as ovm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        kw = _target(study, metric_names)
        varied = varied_params(study)
        _draw("optimization history", folder / HISTORY_PNG, lambda: ovm.plot_optimization_history(study, **kw),
              written)
        if len(varied) >= 2:
            _draw("parallel coordinates", folder / PARALLEL_PNG,
                  lambda: ovm.plot_parallel_coordinate(study, params=varied, **kw), written)
        if len(varied) >= 2 and len(complete) >= MIN_IMPORTANCE_TRIALS:
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
            _draw("parameter importances", folder / IMPORTANCES_PNG,
                  lambda: ovm.plot_param_importances(study, evaluator=evaluator, params=varied, **kw), written)
        sliced = varied_params(study, common=False)
        if sliced:
            _draw("slices", folder / SLICE_PNG, lambda: ovm.plot_slice(study, params=sliced, **kw), written)
    if any(histories.values()):
        _draw("validation PGD accuracy by trial", folder / EPOCHS_PNG, lambda: _plot_epochs(histories), written)
    return written


def _plot_epochs(histories: dict[str, list[tuple[int, float]]]) -> Any:
    """Every trial's per-epoch validation PGD accuracy as one line each (legend only while it stays
    readable)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lines = {label: pts for label, pts in histories.items() if pts}
    for label, pts in sorted(lines.items()):
        pts = [(e, v) for e, v in pts if math.isfinite(v)]
        ax.plot([e for e, _ in pts], [v for _, v in pts], marker="." if len(pts) < 30 else None, lw=1.2,
                alpha=0.85, label=label)
    ax.set(xlabel="epoch", ylabel="validation PGD accuracy",
           title=f"validation PGD accuracy per epoch ({len(lines)} trials)")
    ax.xaxis.get_major_locator().set_params(integer=True)  # epochs are whole numbers
    ax.grid(alpha=0.3)
    if len(lines) <= MAX_LEGEND_ENTRIES:
        ax.legend(fontsize="x-small", loc="best")
    return ax


def trial_histories(client: Any, child_runs: Iterable[Any], metric: str = HISTORY_METRIC
                    ) -> dict[str, list[tuple[int, float]]]:
    """Run name -> (step, value) points of `metric` (step = epoch), sorted by step, for each MLflow
    run that has any. A step logged twice keeps its latest value; two runs with one name are told
    apart by their run id's first characters. A run whose history cannot be read is skipped with
    a warning (figures never stop the search)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for run in child_runs:
        info = run.info
        try:
            points = client.get_metric_history(info.run_id, metric)
        except Exception as exc:
            warnings.warn(f"{metric} history of run {info.run_id} not read: {exc}", RuntimeWarning, stacklevel=2)
            continue
        by_step: dict[int, tuple[int, float]] = {}
        for m in sorted(points, key=lambda m: (m.step, m.timestamp)):
            by_step[int(m.step)] = (int(m.step), float(m.value))
        if not by_step:
            continue
        label = info.run_name or info.run_id
        if label in out:
            label = f"{label} ({info.run_id[:8]})"
        out[label] = [by_step[s] for s in sorted(by_step)]
    return out


def draw_race_figure(by_config: dict[str, dict[int, float]], metric: str, path: Path) -> Path:
    """The race's configs side by side: each seed's `metric` as a dot, the mean over seeds as a bar
    with its 95% t-interval (none for a config of one seed); `by_config`: label -> seed -> value."""
    from tune.results.uncertainty import t_interval

    plt = _pyplot()
    labels = list(by_config)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(labels)), 4.5))
    for x, label in enumerate(labels):
        values = [by_config[label][s] for s in sorted(by_config[label])]
        mean = sum(values) / len(values)
        ax.scatter([x] * len(values), values, s=14, color="0.45", zorder=3)
        if len(values) >= 2:
            lo, hi = t_interval(values)
            ax.errorbar([x], [mean], yerr=[[mean - lo], [hi - mean]], fmt="o", color="C0", capsize=6, zorder=4)
        else:
            ax.plot([x], [mean], "o", color="C0", zorder=4)
        ax.annotate(f"{len(values)} seed{'s' if len(values) != 1 else ''}", (x, mean), textcoords="offset points",
                    xytext=(8, 0), fontsize="x-small")
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize="small")
    ax.set(ylabel=metric, title=f"race: {metric} by config over seeds (mean, 95% t-interval)")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
