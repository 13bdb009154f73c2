"""Do BiLAW's learned weights fade after the lr drops? last/peak `weight_std` per meta-optimiser
setting, over seeds, on a long CPU-sized schedule (the measurement behind
tests/bilaw/methods/test_weight_fading.py and the fading discussion in docs/results.md).

    python benchmarks/weight_fading.py                                  # digits, 80 epochs, 3 seeds
    python benchmarks/weight_fading.py --variants legacy,no_decay --seeds 5 --epochs 40
    python benchmarks/weight_fading.py --variants legacy,default,adamw,frozen --threads 1,2

Each variant is a set of TrainConfig overrides on top of the base (digits, FC1, batch 32, no
AutoAttack, no analysis). Prints one row per variant, thread count and seed (peak, last,
last/peak, the epoch of the peak, collapsed epoch if any, the weight status) and writes every
run's weight_std per epoch as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# Several thread counts in one process on a shared machine: OpenMP's busy-waiting threads would
# stall a 2-thread run behind other work (set before torch is imported).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from bilaw.config.train_config import TrainConfig, parse_overrides  # noqa: E402
from bilaw.training.trainer import train  # noqa: E402

BASE = {"dataset": "digits", "model": "fc1", "method": "bilaw", "batch_size": 32, "epochs": 80,
        "aa_samples": 0, "analysis_samples": 0, "plots": False, "device": "cpu"}
# legacy: the meta optimiser every run used before meta_grad_scale and adamw existed.
VARIANTS: dict[str, dict] = {
    "legacy": {"meta_optimizer": "adam", "meta_lr": 1e-3, "meta_weight_decay": 1e-4, "meta_grad_scale": "raw"},
    "no_decay": {"meta_optimizer": "adam", "meta_lr": 1e-3, "meta_weight_decay": 0.0, "meta_grad_scale": "raw"},
    "adamw": {"meta_optimizer": "adamw", "meta_lr": 1e-3, "meta_weight_decay": 1e-4, "meta_grad_scale": "raw"},
    "per_lr": {"meta_optimizer": "adam", "meta_lr": 1e-3, "meta_weight_decay": 1e-4, "meta_grad_scale": "per_lr"},
    # the two settings the Fashion-MNIST bilaw_meta search put first (docs/results.md)
    "sgd_0.025": {"meta_optimizer": "sgd", "meta_lr": 0.025, "meta_weight_decay": 1e-5, "meta_grad_scale": "raw"},
    "adamw_1.2e-4": {"meta_optimizer": "adamw", "meta_lr": 1.2e-4, "meta_weight_decay": 1e-4, "meta_grad_scale": "raw"},
    "default": {},
    # the control: BiLAW's net frozen at its initialisation; its weight_std moves with the margins alone
    "frozen": {"method": "bilaw_frozen"},
}


def fading(stds: list[float]) -> dict[str, float]:
    peak = max(stds)
    return {"peak": peak, "last": stds[-1], "ratio": stds[-1] / peak if peak > 0 else float("nan"),
            "peak_epoch": stds.index(peak)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--threads", default="1", help="torch thread counts, comma-separated (default 1)")
    p.add_argument("--epochs", type=int, default=BASE["epochs"])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key for all")
    p.add_argument("--out", default="weight_fading.json")
    args = p.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    base = {**BASE, "epochs": args.epochs, **parse_overrides(args.set)}
    runs = []
    threads = [int(t) for t in args.threads.split(",") if t]
    print(f"{'variant':<12} {'thr':>3} {'seed':>4} {'peak':>7} {'last':>7} {'last/peak':>9} {'peak ep':>7} "
          f"{'collapsed':>9}  status")
    for name in names:
        for t in threads:
            for seed in range(args.seeds):
                cfg = TrainConfig.from_dict({**base, **VARIANTS[name], "seed": seed})
                before = torch.get_num_threads()
                torch.set_num_threads(t)
                try:
                    result = train(cfg, progress=False, log=lambda _: None)
                finally:
                    torch.set_num_threads(before)
                stds = [h["weight_std"] for h in result.history]
                row = {"variant": name, "threads": t, "seed": seed, **fading(stds), "weight_std": stds,
                       "collapsed_epoch": result.final.get("weights_collapsed_epoch"),
                       "status": result.final.get("weight_status")}
                runs.append(row)
                print(f"{name:<12} {t:>3} {seed:>4} {row['peak']:7.4f} {row['last']:7.4f} {row['ratio']:9.3f} "
                      f"{row['peak_epoch'] + 1:>7} "
                      f"{'-' if row['collapsed_epoch'] is None else row['collapsed_epoch'] + 1:>9}  {row['status']}",
                      flush=True)
    for name in names:
        ratios = [r["ratio"] for r in runs if r["variant"] == name]
        spread = f" +- {statistics.stdev(ratios):.3f}" if len(ratios) > 1 else ""
        print(f"{name}: last/peak {statistics.mean(ratios):.3f}{spread} (min {min(ratios):.3f}, max {max(ratios):.3f})")
    Path(args.out).write_text(json.dumps({"base": base, "variants": {n: VARIANTS[n] for n in names}, "runs": runs},
                                         indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
