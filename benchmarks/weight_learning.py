"""Does the weight net learn its map? The measurement behind the `untrained` thresholds in
bilaw/methods/weight_health.py: the learning statistics of the frozen control, of a net whose meta_lr is
too small to move it, and of the default BiLAW, over seeds and torch thread counts.

    python benchmarks/weight_learning.py                     # digits, 12 epochs, seeds 0-2, 1 and 2 threads
    python benchmarks/weight_learning.py --epochs 80 --variants frozen,default

Each variant is a set of TrainConfig overrides on the base (digits, FC1, batch 32, no
AutoAttack, no analysis). One row per variant, thread count and seed, from the last epoch:
`weight_net_drift`, `weight_rank_corr_init`, `weight_std` / `weight_std_init`, the status, and
the map snapshot's AUROC (weight as a score for 'the PGD example is misclassified') for the
current and the initial net. Writes every row as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# Several thread counts in one process on a shared machine: OpenMP's busy-waiting threads would
# stall a 2-thread run behind other work (set before torch is imported).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from bilaw.config.train_config import TrainConfig, parse_overrides  # noqa: E402
from bilaw.training.trainer import train  # noqa: E402

BASE = {"dataset": "digits", "model": "fc1", "batch_size": 32, "epochs": 12, "aa_samples": 0,
        "analysis_samples": 0, "plots": False, "device": "cpu"}
VARIANTS: dict[str, dict] = {
    "frozen": {"method": "bilaw_frozen"},
    "meta_lr_1e-9": {"method": "bilaw", "meta_lr": 1e-9},
    "default": {"method": "bilaw"},
}


def measure(overrides: dict, threads: int) -> dict:
    """One run's last-epoch learning statistics under `threads` torch threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result = train(TrainConfig.from_dict({**BASE, **overrides}), progress=False, log=lambda _: None)
    finally:
        torch.set_num_threads(before)
    last, final = result.history[-1], result.final
    return {"drift": last["weight_net_drift"], "rank_corr": last["weight_rank_corr_init"],
            "std_ratio": last["weight_std"] / last["weight_std_init"], "weight_std": last["weight_std"],
            "status": final["weight_status"], "auroc": final["weight_map_auroc"],
            "auroc_init": final["weight_map_auroc_init"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--threads", default="1,2", help="torch thread counts, comma-separated (default 1,2)")
    p.add_argument("--epochs", type=int, default=BASE["epochs"])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key for all")
    p.add_argument("--out", default="weight_learning.json")
    args = p.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    threads = [int(t) for t in args.threads.split(",") if t]
    base_overrides = {"epochs": args.epochs, **parse_overrides(args.set)}
    rows = []
    print(f"{'variant':<13} {'thr':>3} {'seed':>4} {'drift':>9} {'rank corr':>9} {'std/init':>8} {'AUROC':>6} "
          f"{'init':>6}  status")
    for name in names:
        for t in threads:
            for seed in range(args.seeds):
                row = {"variant": name, "threads": t, "seed": seed,
                       **measure({**base_overrides, **VARIANTS[name], "seed": seed}, t)}
                rows.append(row)
                print(f"{name:<13} {t:>3} {seed:>4} {row['drift']:>9.2e} {row['rank_corr']:>9.4f} "
                      f"{row['std_ratio']:>8.3f} {row['auroc']:>6.3f} {row['auroc_init']:>6.3f}  {row['status']}",
                      flush=True)
    Path(args.out).write_text(json.dumps({"base": {**BASE, **base_overrides}, "rows": rows}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
