"""`python -m bilaw.evaluate RUN_DIR [--pgd-steps N] [--aa-samples N] [--device D]`: re-evaluate a
finished run's best model (a folder bilaw/runs/saved.py wrote) on its test split."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bilaw.config.train_config import ConfigError
from bilaw.data.datasets import MissingDatasetError, load_data
from bilaw.file_errors import DamagedFileError
from bilaw.runs.saved import load_run


def evaluate_run(run_dir: str | Path, *, pgd_steps: int | None = None, aa_samples: int | None = None,
                 device: str = "auto") -> dict[str, Any]:
    """Re-evaluate a finished run's best model on its test split: clean, PGD, AutoAttack."""
    from bilaw.eval.evaluate import evaluate_model
    from bilaw.training.trainer import resolve_device

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


def main(argv: list[str] | None = None) -> int:
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
    except (ConfigError, MissingDatasetError, DamagedFileError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"clean accuracy       {res['clean_acc']:.4f}")
    print(f"PGD accuracy         {res['pgd_acc']:.4f}")
    if "aa_acc" in res:
        print(f"AutoAttack accuracy  {res['aa_acc']:.4f}")
        for message in res.get("aa_warnings", []):
            print(f"AutoAttack's check: {message}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
