"""A finished run on disk: writing it (`save_run`) and loading it back (`load_run`); bilaw/evaluate.py
re-evaluates it.

Layout: DIR/config.yaml (resolved config), DIR/metrics.json ({"history": [...], "final": {...},
"epochs_from": 1}: epochs counted from 1, bilaw/epochs.py),
DIR/best.pt (the best state's model and weight net, loadable with weights_only=True),
DIR/analysis.pt (the per-sample training weights of every epoch, the weight trace and the
end-of-training analysis of `bilaw/analysis/weights.py`; weights_only) and DIR/plots/*.png.

Each file is read by one function here that checks it before use (`load_run`, `load_analysis`,
`read_run_config`, `read_metrics`): a missing, damaged or foreign file is a `DamagedFileError`
naming it, what is wrong and what to do.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from bilaw.config.train_config import KEYS, ConfigError, TrainConfig, stored_config_dict, yaml_load
from bilaw.config.yaml_values import yaml_problem
from bilaw.epochs import EPOCHS_FROM, renumbered_final, renumbered_history
from bilaw.file_errors import DamagedFileError, MissingFileError, load_json, one_line, read_text, require_mapping
from bilaw.metrics import TEST_CLEAN_ACC, TEST_PGD_ACC
from bilaw.models import build_model, model_kwargs
from bilaw.training.checkpoint import atomic_write_text, load_checkpoint, save_checkpoint

BEST_NAME = "best.pt"
ANALYSIS_NAME = "analysis.pt"
CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.json"
DATA_RECORD_NAME = "dataset.json"  # bilaw/data/record.py: which samples the run saw


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no inf/nan
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def save_run(result, out_dir: str | Path) -> Path:
    """Write config.yaml, metrics.json and best.pt of a `TrainResult` to `out_dir`, with its
    data's record (dataset.json), per-point results, analysis, weight-map snapshots and plots where it has them."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / CONFIG_NAME, result.config.to_yaml())
    metrics = {"history": result.history, "final": result.final, EPOCHS_FROM: 1}
    atomic_write_text(out / METRICS_NAME, json.dumps(_jsonable(metrics), indent=1))
    if getattr(result, "data_record", None):
        atomic_write_text(out / DATA_RECORD_NAME, json.dumps(result.data_record, indent=1))
    save_checkpoint({"model": result.best_state["model"] or result.model.state_dict(),
                     "weight_net": result.best_state.get("weight_net"),
                     "epoch": result.best_state.get("epoch", 0),
                     "input_shape": result.best_state["input_shape"], "num_classes": result.best_state["num_classes"],
                     "config": result.config.to_dict(), EPOCHS_FROM: 1}, out / BEST_NAME)
    if getattr(result, "per_point", None):
        from bilaw.eval.per_point import PER_POINT_NAME, save_per_point

        save_per_point(out / PER_POINT_NAME, result.per_point["test"], result.per_point.get("holdout"))
    if getattr(result, "weight_maps", None):
        from bilaw.analysis.weight_maps import WEIGHT_MAP_NAME, save_weight_maps

        save_weight_maps(out / WEIGHT_MAP_NAME, result.weight_maps)
        if result.config.plots:
            from bilaw.analysis.plots import plot_weight_maps

            plot_weight_maps(out / "plots", result.weight_maps)
    if result.analysis is not None or result.sample_weights is not None:
        save_checkpoint({"analysis": result.analysis, "sample_weights": result.sample_weights,
                         "trace": result.trace}, out / ANALYSIS_NAME)
    if result.config.plots and result.history:
        from bilaw.analysis.plots import plot_curves

        plot_curves(out / "plots", result.history)
    if result.analysis is not None and result.config.plots:
        from bilaw.analysis.plots import write_plots

        write_plots(out / "plots", analysis=result.analysis, history=result.history, trace=result.trace,
                    final=result.final)
    return out


def _rewrite_fix(run_dir: Path, name: str) -> str:
    """What to do about a damaged best.pt or analysis.pt: the run's own command writes it again."""
    return (f"re-run the command that wrote the run (python -m bilaw.train --config {run_dir / CONFIG_NAME} "
            f"--out {run_dir}): it writes {name} again from the folder's checkpoint.pt, or trains the run "
            f"again where there is none")


def _run_folder(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        error = DamagedFileError if run_dir.exists() else MissingFileError
        raise error(run_dir, "is not a run folder (a run folder holds config.yaml, metrics.json and best.pt)",
                    "pass a folder written by `python -m bilaw.train --out DIR`")
    return run_dir


def load_analysis(run_dir: str | Path) -> dict[str, Any]:
    """DIR/analysis.pt: {"analysis", "sample_weights" (epochs, n_train), "trace"}."""
    run_dir = _run_folder(run_dir)
    path, fix = run_dir / ANALYSIS_NAME, _rewrite_fix(run_dir, ANALYSIS_NAME)
    if not path.exists():
        raise MissingFileError(path, "does not exist (runs with analysis_samples: 0 write none)", fix)
    state = load_checkpoint(path, fix=fix)
    require_mapping(path, state, ("analysis", "sample_weights", "trace"), "a run's analysis (analysis.pt)", fix)
    return state


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, TrainConfig]:
    """The run's best model (eval mode, on `device`) and its resolved config; a best.pt that is
    missing, damaged or holds weights its own config's model cannot take is a DamagedFileError."""
    model, cfg, _ = load_best(run_dir, device)
    return model, cfg


def load_best(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, TrainConfig, dict]:
    """`load_run`, and the contents of best.pt it read (input_shape, num_classes, epoch, ...)."""
    run_dir = _run_folder(run_dir)
    path, fix = run_dir / BEST_NAME, _rewrite_fix(run_dir, BEST_NAME)
    state = load_checkpoint(path, fix=fix)
    require_mapping(path, state, ("model", "config", "input_shape", "num_classes"), "a run's best model (best.pt)",
                    fix)
    try:
        cfg = TrainConfig.from_dict(state["config"])
    except (ValueError, TypeError, AttributeError) as exc:
        problems = "; ".join(exc.errors) if isinstance(exc, ConfigError) else one_line(exc)
        raise DamagedFileError(path, f"holds a config that is not valid: {problems}", fix) from None
    try:
        model = build_model(cfg.model, state["input_shape"], state["num_classes"], **model_kwargs(cfg))
        model.load_state_dict(state["model"])
    except Exception as exc:  # shapes or keys of another model, or a damaged state
        raise DamagedFileError(path, f"holds weights that do not fit the model its config names ({cfg.model}, "
                                     f"input {state['input_shape']}, {state['num_classes']} classes): "
                                     f"{one_line(exc, 300)}", fix) from None
    return model.to(device).eval(), cfg, state


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """DIR/config.yaml as stored. Its values of today's keys must make a valid config (keys it
    predates are filled as `stored_config_dict` does; keys no longer known are left alone), so a
    file cut short or edited into nonsense is a DamagedFileError."""
    run_dir = _run_folder(run_dir)
    path, fix = run_dir / CONFIG_NAME, f"delete the run folder {run_dir} to train the run again"
    try:
        data = yaml_load(read_text(path, fix))
    except yaml.YAMLError as exc:
        raise DamagedFileError(path, f"{yaml_problem(exc)} (cut short or damaged)", fix) from None
    data = dict(require_mapping(path, data, ("dataset", "method", "seed"), "a run's config", fix))
    try:
        TrainConfig.from_dict({k: v for k, v in stored_config_dict(data).items() if k in KEYS})
    except ConfigError as exc:
        raise DamagedFileError(path, f"is not a valid config: {'; '.join(exc.errors)}", fix) from None
    return data


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """DIR/metrics.json: {"history": [one dict per epoch, with "epoch"], "final": {test metrics}}, its
    epochs counted from 1 (a file written before `epochs_from` is renumbered as it is read)."""
    run_dir = _run_folder(run_dir)
    path, fix = run_dir / METRICS_NAME, f"delete the run folder {run_dir} to train the run again"
    metrics = require_mapping(path, load_json(path, fix), ("history", "final"), "a run's metrics", fix)
    history, final = metrics["history"], metrics["final"]
    if not isinstance(history, list) or not all(isinstance(h, dict) and "epoch" in h for h in history):
        raise DamagedFileError(path, "its history is not a list of per-epoch metrics (each with 'epoch')", fix)
    missing = [k for k in (TEST_CLEAN_ACC, TEST_PGD_ACC) if not isinstance(final, dict) or k not in final]
    if missing:
        raise DamagedFileError(path, f"its final metrics lack {', '.join(map(repr, missing))}", fix)
    if metrics.get(EPOCHS_FROM) != 1:  # written when epochs were counted from 0
        return {**metrics, "history": renumbered_history(history, final), "final": renumbered_final(final),
                EPOCHS_FROM: 1}
    return dict(metrics)
