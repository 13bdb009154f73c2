"""What the cheaper bilevel settings cost in accuracy: BiLAW exact (meta step every step,
validation batch = training batch, validation PGD = training PGD) against meta_preset=fast
(validation batch 32, PGD-3) and meta_interval=5, same seeds, same workload.

    python benchmarks/preset_accuracy.py                          # digits, 3 seeds
    python benchmarks/preset_accuracy.py --workload fmnist_fc1_linf --epochs 10 --seeds 2 --set aa_samples=500

Prints and writes (JSON) mean and sample std over seeds of the test metrics of the best state,
and each variant's mean training time per epoch.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bilaw.config.train_config import TrainConfig, parse_overrides  # noqa: E402
from bilaw.training.trainer import train  # noqa: E402
from tune.spaces import load_workloads  # noqa: E402

VARIANTS = {"exact": {}, "fast": {"meta_preset": "fast"}, "interval_5": {"meta_interval": 5}}
METRICS = ("test_clean_acc", "test_pgd_acc", "test_aa_acc", "last_test_pgd_acc")


def summary(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", default="digits")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default="preset_accuracy.json")
    args = p.parse_args(argv)
    base = {**load_workloads()[args.workload].config, "method": "bilaw", "analysis_samples": 0,
            **parse_overrides(args.set)}
    if args.epochs:
        base["epochs"] = args.epochs
    result = {"workload": args.workload, "base": base, "seeds": args.seeds, "variants": {}}
    for name in args.variants.split(","):
        finals, epoch_s = {m: [] for m in METRICS}, []
        for seed in range(args.seeds):
            cfg = TrainConfig.from_dict({**base, **VARIANTS[name], "seed": seed})
            r = train(cfg, progress=False)
            for m in METRICS:
                if m in r.final:
                    finals[m].append(r.final[m])
            epoch_s += [h["epoch_time_s"] for h in r.history]
        row = {m: summary(v) for m, v in finals.items() if v}
        row["epoch_time_s"] = statistics.mean(epoch_s)
        result["variants"][name] = row
        cells = "  ".join(f"{m} {100 * s['mean']:.1f} ± {100 * s['std']:.1f}" for m, s in row.items() if m in METRICS)
        print(f"{name:<11} {cells}  epoch {row['epoch_time_s']:.2f} s", flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
