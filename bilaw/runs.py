"""A finished run on disk: writing it (`save_run`), loading it back (`load_run`), and
re-evaluating it (`python -m bilaw.evaluate DIR`).

Layout: DIR/config.yaml (resolved config), DIR/metrics.json ({"history": [...], "final": {...}}),
DIR/best.pt (the best state's model and weight net, loadable with weights_only=True),
DIR/analysis.pt (the per-sample training weights of every epoch, the weight trace and the
end-of-training analysis of `bilaw/analysis.py`; weights_only) and DIR/plots/*.png.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig
from .data import MissingDatasetError, load_data
from .models import build_model

BEST_NAME = "best.pt"
ANALYSIS_NAME = "analysis.pt"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no inf/nan
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def save_run(result, out_dir: str | Path) -> Path:
    """Write config.yaml, metrics.json and best.pt of a `TrainResult` to `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", result.config.to_yaml())
    metrics = {"history": result.history, "final": result.final}
    atomic_write_text(out / "metrics.json", json.dumps(_jsonable(metrics), indent=1))
    save_checkpoint({"model": result.best_state["model"] or result.model.state_dict(),
                     "weight_net": result.best_state.get("weight_net"),
                     "epoch": result.best_state.get("epoch", -1),
                     "input_shape": result.best_state["input_shape"], "num_classes": result.best_state["num_classes"],
                     "config": result.config.to_dict()}, out / BEST_NAME)
    if result.analysis is not None or result.sample_weights is not None:
        save_checkpoint({"analysis": result.analysis, "sample_weights": result.sample_weights,
                         "trace": result.trace}, out / ANALYSIS_NAME)
    if result.analysis is not None and result.config.plots:
        from .plots import write_plots

        write_plots(out / "plots", analysis=result.analysis, history=result.history, trace=result.trace,
                    final=result.final)
    return out


def load_analysis(run_dir: str | Path) -> dict[str, Any]:
    """DIR/analysis.pt: {"analysis", "sample_weights" (epochs, n_train), "trace"}."""
    path = Path(run_dir) / ANALYSIS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no {ANALYSIS_NAME} (runs with analysis_samples: 0 write none)")
    return load_checkpoint(path)


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, TrainConfig]:
    """The run's best model (eval mode, on `device`) and its resolved config."""
    run_dir = Path(run_dir)
    path = run_dir / BEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a finished run: {path} is missing "
                                f"(a run folder holds config.yaml, metrics.json and {BEST_NAME})")
    state = load_checkpoint(path)
    cfg = TrainConfig.from_dict(state["config"])
    kwargs = {"depth": cfg.wrn_depth, "widen_factor": cfg.wrn_width} if cfg.model == "wrn" else {}
    model = build_model(cfg.model, state["input_shape"], state["num_classes"], **kwargs)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg


def evaluate_run(run_dir: str | Path, *, pgd_steps: int | None = None, aa_samples: int | None = None,
                 device: str = "auto") -> dict[str, Any]:
    """Re-evaluate a finished run's best model on its test split: clean, PGD, AutoAttack."""
    from .evaluate import evaluate_model
    from .trainer import resolve_device

    dev = resolve_device(device)
    model, cfg = load_run(run_dir, dev)
    data = load_data(cfg.dataset, data_dir=cfg.data_dir, meta_val_size=cfg.meta_val_size,
                     holdout_val_size=cfg.holdout_val_size, seed=cfg.seed, device=dev)
    n_aa = cfg.aa_samples if aa_samples is None else aa_samples
    return evaluate_model(model, data.x_test, data.y_test, num_classes=data.num_classes, norm=cfg.norm,
                          eps=cfg.eps, pgd_steps=cfg.eval_pgd_steps if pgd_steps is None else pgd_steps,
                          aa_samples=min(n_aa, len(data.y_test)),
                          aa_version="custom" if cfg.aa_attacks else cfg.aa_version, aa_attacks=cfg.aa_attacks,
                          aa_n_iter=cfg.aa_n_iter, seed=cfg.seed, batch_size=cfg.eval_batch_size)


def evaluate_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bilaw.evaluate",
                                     description="Re-evaluate a finished run (clean, PGD, AutoAttack accuracy).")
    parser.add_argument("run_dir", help="a folder written by `python -m bilaw.train --out DIR`")
    parser.add_argument("--pgd-steps", type=int, default=None, help="PGD steps (default: the run's eval_pgd_steps)")
    parser.add_argument("--aa-samples", type=int, default=None,
                        help="AutoAttack on the first N test samples; 0 skips it (default: the run's aa_samples)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args(argv)
    try:
        res = evaluate_run(args.run_dir, pgd_steps=args.pgd_steps, aa_samples=args.aa_samples, device=args.device)
    except (ConfigError, MissingDatasetError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"clean accuracy       {res['clean_acc']:.4f}")
    print(f"PGD accuracy         {res['pgd_acc']:.4f}")
    if "aa_acc" in res:
        print(f"AutoAttack accuracy  {res['aa_acc']:.4f}")
    return 0
