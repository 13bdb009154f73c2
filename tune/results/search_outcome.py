"""The end of a search: the best config (mean of the ranking metric over its seeds), the
winner's run, model and registration, the Pareto front of a two-objective search, and what is
printed and written (`best_config.yaml`, the parent run's metrics and artifacts)."""
from __future__ import annotations

import math
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

from bilaw.config.reproducibility import FULL_EVAL, evaluation_label
from bilaw.config.train_config import TrainConfig
from bilaw.metrics import TEST_AA_ACC, TEST_CLEAN_ACC, TEST_PGD_ACC, TEST_PGD_ACC_AA_SUBSET
from tune.finished_search import ROUND_TAG
from tune.plan import Plan
from tune.results.best_vs_rest import config_key, paired_summary
from tune.tracking.runs import TRIAL_ID_TAG, SearchTracking, redact_uri, runs_table_url
from tune.tracking.runs_view import search_view, share_view
from tune.trainable import ran_config

BEST_CONFIG = "best_config.yaml"


def python_command() -> str:
    """The interpreter running this search as a shell word: relative to the working folder where
    it lies inside it (`.venv/bin/python`), else its absolute path. Printed commands start with it,
    since `python` and `mlflow` need not be on PATH (scripts/setup.sh makes .venv, unactivated)."""
    exe = Path(sys.executable)
    try:
        shown = str(exe.relative_to(Path.cwd()))
    except ValueError:
        shown = str(exe)
    return shlex.quote(shown)


def rerun_lines(path: Path) -> list[str]:
    """The commands that re-run the best config: as the trial ran (its recorded thread count and
    evaluation: the same numbers on this machine) and with the paper's evaluation."""
    python, config = python_command(), shlex.quote(str(path))
    return [f"  re-run it: {python} -m bilaw.train --config {config} --out runs/best",
            f"  with the paper's evaluation ({evaluation_label(FULL_EVAL, mark_full=False)}): "
            f"{python} -m bilaw.train --config {config} --full-eval --out runs/best_full_eval"]


def saved_config(plan: Plan, cfg: TrainConfig) -> TrainConfig:
    """The best config as best_config.yaml keeps it: the trial's config, with the device the user
    gave (a 0-GPU trial runs with device cpu, tune/search.py; the config stays `auto` where the
    base config says so)."""
    return cfg if "device" in plan.space.params else cfg.replace(device=plan.cfg.device)


def in_trial_order(results) -> list:
    """Ray's results ordered by trial id, an order a restored experiment keeps (its result list
    may come in another order): ties between configs go the same way after --resume."""
    return sorted(results, key=lambda r: str((r.metrics or {}).get("trial_id", "")))


def _winner(plan: Plan, results, tracking: SearchTracking, cfg: TrainConfig,
            child_runs: list) -> tuple[dict[str, float], str | None, Any]:
    """Tag the parent with the run of the winner (the best seed of the best config `cfg`, among
    the trials `best_config` counted, and the search's `child_runs`); return its test metrics as
    `winner_*` metrics for the parent, its MLflow run id and its result."""
    metric, sign = plan.space.metric[0], (1 if plan.space.mode[0] == "max" else -1)
    done = config_groups(plan, results).get(config_key(plan, cfg), (cfg, []))[1]
    if not done:
        return {}, None, None
    best = max(done, key=lambda r: sign * r.metrics[metric])
    run_id = None
    try:
        runs = [r for r in child_runs if r.data.tags.get(TRIAL_ID_TAG) == best.metrics.get("trial_id")]
        if runs:
            run_id = runs[0].info.run_id
            tracking.client.set_tag(tracking.parent_run_id, "winner_run_id", run_id)
            tracking.client.set_tag(tracking.parent_run_id, "winner_run_name", runs[0].info.run_name)
    except Exception as exc:  # tracking never stops the search
        print(f"warning: MLflow: could not tag the winner: {exc}", file=sys.stderr)
    keys = (metric, TEST_CLEAN_ACC, TEST_PGD_ACC, TEST_AA_ACC, TEST_PGD_ACC_AA_SUBSET)
    return ({f"winner_{k}": best.metrics[k] for k in keys if isinstance(best.metrics.get(k), (int, float))},
            run_id, best)


def _log_winner_model(plan: Plan, tracking: SearchTracking, run_id: str, result) -> None:
    """Log the winner's best model with its run (from the trial's last checkpoint) and, with
    --register, register it under the experiment's name (tune/tracking/model_store.py's `register` tags it
    with the searched parameters and test metrics and attaches the config)."""
    from tune.finished_search import logged_model_uri, registered_version
    from tune.tracking.model_store import log_model, register
    from tune.trainable import SAVED_RUN

    try:
        model_uri = logged_model_uri(tracking, run_id)  # a resumed search's winner may have it already
        if model_uri is None and plan.options.log_models == "winner":
            with result.checkpoint.as_directory() as folder:
                model_uri = log_model(tracking.uri, run_id, Path(folder) / SAVED_RUN)
        elif model_uri is None:  # "finished": logged with its run when the trial ended
            model_uri = f"runs:/{run_id}/model"
        print(f"winner's model: {model_uri} (mlflow.pytorch.load_model; run {run_id})")
        version = registered_version(tracking, run_id, plan.experiment) if plan.options.register else None
        if version is not None:
            print(f"registered: models:/{plan.experiment}/{version} (before)")
        elif plan.options.register:
            version = register(tracking.uri, model_uri, plan.experiment,  # register adds the run's params and metrics
                               {"run_id": run_id, "space": plan.space.name, "workload": plan.workload.name})
            print(f"registered: models:/{plan.experiment}/{version.version}")
    except Exception as exc:  # the search's results stand without the logged model
        print(f"warning: MLflow: could not log the winner's model: {exc}", file=sys.stderr)


def search_figures(plan: Plan, tracking: SearchTracking, folder: Path, child_runs: list) -> None:
    """The search's figures (tune/results/figures.py) from the stored study and the trials'
    histories, under search/ on the parent run (also after --resume); never stops the report."""
    import optuna

    from tune.results.figures import draw_search_figures, trial_histories
    from tune.state_files import OPTUNA_DB

    if tracking.parent_run_id is None:
        return
    try:
        study = optuna.load_study(study_name=plan.experiment, storage=f"sqlite:///{folder / OPTUNA_DB}")
        histories = trial_histories(tracking.client, child_runs)
        for png in draw_search_figures(study, histories, folder / "search", list(plan.space.metric)):
            tracking.client.log_artifact(tracking.parent_run_id, str(png), "search")
    except Exception as exc:  # figures never stop the search
        print(f"warning: search figures: {exc}", file=sys.stderr)


def _interval_note(metric: str, values: list[float], cfg: TrainConfig) -> str:
    """The 95% interval of the winner's ranking metric: Wilson over the held-out points for one
    seed (the held-out accuracies), the t-interval over seeds for several."""
    from tune.results.uncertainty import accuracy_interval

    points = cfg.resolved().holdout_val_size if "val_" in metric and "acc" in metric else None
    interval = accuracy_interval(values, points)
    return "" if interval is None else f"\n  95% interval [{interval[0]:.4f}, {interval[1]:.4f}] ({interval[2]})"


def config_groups(plan: Plan, results) -> dict[str, tuple[TrainConfig, list]]:
    """The finished trials with a finite ranking metric, by config (`config_key`): its config at
    the search's first seed, and its results in `in_trial_order`. Trials flagged for gradient
    masking take no part unless --allow-suspect: their PGD overstates their robustness."""
    metric = plan.space.metric[0]
    allow_suspect = plan.options.allow_suspect
    groups: dict[str, tuple[TrainConfig, list]] = {}
    for r in in_trial_order(results):
        value = (r.metrics or {}).get(metric)
        if r.error is not None or value is None or not math.isfinite(value):
            continue
        if (r.metrics or {}).get("suspect_gradient_masking") and not allow_suspect:
            continue
        cfg = ran_config(r)
        groups.setdefault(config_key(plan, cfg), (cfg.replace(seed=plan.seeds[0]), []))[1].append(r)
    return groups


def best_config(plan: Plan, results) -> tuple[TrainConfig | None, list[float]]:
    """The config whose mean of the ranking metric over its seeds is best (ties: the one met first
    in `in_trial_order`), and its values, among `config_groups`."""
    metric, sign = plan.space.metric[0], (1 if plan.space.mode[0] == "max" else -1)
    scored = [(cfg, [float(r.metrics[metric]) for r in members]) for cfg, members in config_groups(plan, results).values()]
    if not scored:
        return None, []
    return max(scored, key=lambda g: sign * statistics.fmean(g[1]))


def pareto_report(plan: Plan, results, tracking: SearchTracking, folder: Path) -> list[Path]:
    """Two objectives: print, save and plot the non-dominated trials."""
    from tune.results.pareto import write_front

    metrics, modes = plan.space.metric, plan.space.mode
    rows = []
    for r in results:
        m = r.metrics or {}
        if r.error is None and all(k in m and math.isfinite(m[k]) for k in metrics):
            cfg = ran_config(r)
            params = {k: p.shown_for(cfg) for k, p in plan.space.params.items()}
            rows.append({"trial_id": m.get("trial_id", ""), **params, **{k: m[k] for k in metrics}})
    if not rows:
        return []
    csv_path, png_path, front = write_front(rows, metrics, modes, folder)
    print(f"\nPareto front ({len(front)} of {len(rows)} trials; {metrics[0]} vs {metrics[1]}):")
    for row in front:
        print("  " + "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    print(f"front: {csv_path}\nplot:  {png_path}")
    return [csv_path, png_path]


def _share_runs_view(plan: Plan, tracking: SearchTracking, child_runs: list) -> str | None:
    """Save the view of this search's trials the printed runs-table link opens (its key: the parent
    run's id); None, with a warning, where MLflow refused it."""
    if tracking.parent_run_id is None:
        return None
    logged = {name for run in child_runs for name in run.data.metrics}
    race = [ROUND_TAG] if plan.options.race else []  # a race's runs join the same table, with their round
    view = search_view(tracking.parent_run_id, list(plan.space.params), plan.space.metric, plan.space.mode, logged,
                       race)
    try:
        return share_view(tracking.client, tracking.experiment_id, tracking.parent_run_id, view)
    except Exception as exc:  # tracking never stops the report
        print(f"warning: MLflow: could not save the runs table's view: {exc}", file=sys.stderr)
        return None


def report(plan: Plan, results, tracking: SearchTracking, folder: Path, store: Any = None) -> int:
    """Print and record the search's outcome (see the module docstring); `store`: a
    tune/results/per_point_runs.py PerPointStore to share its downloads with a race that follows."""
    space = plan.space
    try:
        child_runs = tracking.child_runs() if tracking.parent_run_id is not None else []
    except Exception as exc:  # tracking never stops the report
        print(f"warning: MLflow: could not read the trials' runs: {exc}", file=sys.stderr)
        child_runs = []
    errors = sum(1 for r in results if r.error is not None)
    front_files = pareto_report(plan, results, tracking, folder) if space.multi_objective else []
    cfg, values = best_config(plan, results)
    search_figures(plan, tracking, folder, child_runs)
    if cfg is None:
        tracking.finish_parent("FAILED")
        print(f"error: no trial of {plan.experiment} finished with {space.metric[0]} ({errors} errored); "
              f"see {folder}", file=sys.stderr)
        return 1
    path = folder / BEST_CONFIG
    saved_config(plan, cfg).to_yaml(path)
    mean = statistics.fmean(values)
    spread = f" +- {statistics.stdev(values):.4f} over {len(values)} seeds" if len(values) > 1 else ""
    print(f"\nbest {space.metric[0]}: {mean:.4f}{spread}  ({len(results)} trials, {errors} errored)"
          + _interval_note(space.metric[0], values, cfg))
    for name in space.params:
        print(f"  {name} = {plan.space.params[name].shown_for(cfg)!r}")
    print(f"best config: {path}\n" + "\n".join(rerun_lines(path)))
    winner, run_id, result = _winner(plan, results, tracking, cfg, child_runs)
    if run_id is not None and plan.options.log_models != "none":
        _log_winner_model(plan, tracking, run_id, result)
    paired, paired_files = paired_summary(plan, results, tracking, cfg, folder, child_runs, store)
    tracking.finish_parent("FINISHED", {f"best_{space.metric[0]}": mean, "trials": len(results), "errors": errors,
                                        **winner}, artifacts=[path, space.path, *front_files, *paired_files])
    view = _share_runs_view(plan, tracking, child_runs)
    print(f"MLflow: {python_command()} -m mlflow ui --backend-store-uri {shlex.quote(redact_uri(plan.tracking_uri))} "
          f"--host 127.0.0.1 --port 5000\n"
          f"  runs table: {runs_table_url(tracking.experiment_id, view=view)}")
    if paired:  # last, so the search's last lines say whether its winner stands out
        print("\n" + "\n".join(paired))
    return 0
