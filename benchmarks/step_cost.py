"""Per-step cost of each training method, as ratios to the AT step measured in the same run.

    python benchmarks/step_cost.py                       # fc1, tiny_cnn, small_cnn on this machine's device
    python benchmarks/step_cost.py --models fc1 --reps 5 --out step_cost.json
    python benchmarks/step_cost.py --tiny                # the suite's quick mode (fc1, 3 reps)

Every variant is built from the same initial model and batch; after warm-up the variants run
interleaved round-robin (so drift hits all alike) and each timing is a median over repetitions.
`bilaw_k5` times whole 5-step cycles (meta step once per cycle) divided by 5; `bilaw_fast` is
meta_preset=fast (a 32-sample validation batch attacked with PGD-3); `*_jvp` use the Eq. 6 JVP
hypergradient instead of double backward. docs/performance.md sec. 1 has the pass-count floors.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bilaw.config.train_config import TrainConfig, parse_overrides  # noqa: E402
from bilaw.data.datasets import DataBundle  # noqa: E402
from bilaw.training.trainer import RunState  # noqa: E402

SHAPES = {"fc1": (1, 28, 28), "tiny_cnn": (1, 28, 28), "small_cnn": (3, 32, 32)}
VARIANTS = {  # name -> (config overrides, steps per timed cycle)
    "plain": ({"method": "plain"}, 1),
    "at": ({"method": "at"}, 1),
    "trades": ({"method": "trades"}, 1),
    "nonparam": ({"method": "nonparam"}, 1),
    "bilaw": ({"method": "bilaw"}, 1),
    "bilaw_k5": ({"method": "bilaw", "meta_interval": 5}, 5),
    "bilaw_fast": ({"method": "bilaw", "meta_preset": "fast"}, 1),
    "bilaw_jvp": ({"method": "bilaw", "hypergrad": "jvp"}, 1),
    "nonparam_jvp": ({"method": "nonparam", "hypergrad": "jvp"}, 1),
}
GATES = {"bilaw": 2.3, "nonparam": 2.3, "trades": 1.25, "bilaw_k5": 1.3, "bilaw_fast": 1.45}


def synthetic_bundle(shape, batch: int, device: torch.device, k: int = 10) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4 * batch, *shape, generator=g).to(device)
    y = torch.randint(0, k, (4 * batch,), generator=g).to(device)
    empty = torch.empty(0, dtype=torch.long, device=device)
    return DataBundle("synthetic", x, y, x, y, x[:batch], y[:batch], x[:batch], y[:batch], k, tuple(shape),
                      False, empty, y)


def build(model: str, variant: str, batch: int, device: str, data: DataBundle, extra: dict | None = None) -> RunState:
    overrides, _ = VARIANTS[variant]
    cfg = TrainConfig.from_dict({"dataset": "mnist", "model": model, "batch_size": batch, "device": device,
                                 "eps": 0.1, "epochs": 10, "meta_val_size": batch, "holdout_val_size": batch,
                                 "burn_in_epochs": 0, **(extra or {}), **overrides}).resolved()
    return RunState(cfg, data)


def time_cycle(run: RunState, steps: int, x, y, device: torch.device) -> float:
    acc: dict = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        run.train_step(x, y, run.cfg.lr, acc)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def measure(model: str, reps: int, warmup: int, batch: int, device: torch.device,
            variants: list[str] | None = None, extra: dict | None = None) -> dict:
    data = synthetic_bundle(SHAPES[model], batch, device)
    x, y = data.x_train[:batch], data.y_train[:batch]
    names = ["at"] + [v for v in (variants or VARIANTS) if v != "at"]
    runs = {v: build(model, v, batch, str(device.type), data, extra) for v in names}
    init = runs["at"].model.state_dict()
    for run in runs.values():  # the same initial classifier for every variant
        run.model.load_state_dict(init)
    for v, run in runs.items():
        for _ in range(warmup):
            time_cycle(run, VARIANTS[v][1], x, y, device)
    times = {v: [] for v in runs}
    peak = {}
    for _ in range(reps):
        for v, run in runs.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times[v].append(time_cycle(run, VARIANTS[v][1], x, y, device))
            if device.type == "cuda":
                peak[v] = max(peak.get(v, 0), torch.cuda.max_memory_allocated(device))
    at = statistics.median(times["at"])
    out = {}
    for v, ts in times.items():
        q = statistics.quantiles(ts, n=4) if len(ts) >= 2 else [ts[0]] * 3
        med = statistics.median(ts)
        out[v] = {"median_ms": 1e3 * med, "q1_ms": 1e3 * q[0], "q3_ms": 1e3 * q[2], "ratio_to_at": med / at,
                  "gate": GATES.get(v), "peak_mem_mb": peak[v] / 2 ** 20 if v in peak else None, "reps": len(ts)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="fc1,tiny_cnn,small_cnn")
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--small-cnn-reps", type=int, default=3, help="fewer reps for small_cnn on the CPU")
    p.add_argument("--small-cnn-batch", type=int, default=32,
                   help="smaller batch for small_cnn on the CPU (an AT step at 128 is ~800 GFLOP: ~15 s here)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated; AT is always timed")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config key for every variant, e.g. amp=true, channels_last=true, compile=true")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--tiny", action="store_true", help="quick mode for the test suite: fc1, 3 reps, batch 32")
    p.add_argument("--check", action="store_true", help="exit 1 when a ratio exceeds its gate")
    p.add_argument("--out", default="step_cost.json")
    args = p.parse_args(argv)
    extra = parse_overrides(args.set)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; allowed: {', '.join(VARIANTS)}")
    if args.tiny:
        args.models, args.reps, args.warmup, args.batch = "fc1", 3, 1, 32
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "device_type": device.type, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "batch": args.batch, "settings": extra, "models": {}}
    start = time.perf_counter()
    for model in args.models.split(","):
        cpu_small = model == "small_cnn" and device.type == "cpu" and not args.tiny
        reps = args.small_cnn_reps if cpu_small else args.reps
        batch = args.small_cnn_batch if cpu_small else args.batch
        warmup = min(args.warmup, 1) if cpu_small else args.warmup
        rows = measure(model, reps, warmup, batch, device, variants, extra)
        result["models"][model] = {"batch": batch, "reps": reps, "variants": rows}
        print(f"\n{model} ({device.type}, batch {batch}, {reps} reps, {torch.get_num_threads()} threads)")
        print(f"  {'variant':<11} {'median ms':>10} {'IQR ms':>15} {'x AT':>6} {'gate':>6}")
        for v, r in rows.items():
            gate = f"{r['gate']:.2f}" if r["gate"] else ""
            print(f"  {v:<11} {r['median_ms']:10.2f} {r['q1_ms']:7.2f}-{r['q3_ms']:<7.2f} {r['ratio_to_at']:6.2f} {gate:>6}")
    result["total_s"] = time.perf_counter() - start
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"\n{result['total_s']:.0f} s in all; wrote {args.out}")
    if args.check:
        bad = [(m, v, r["ratio_to_at"]) for m, rs in result["models"].items() for v, r in rs["variants"].items()
               if r["gate"] and r["ratio_to_at"] > r["gate"]]
        for m, v, ratio in bad:
            print(f"over gate: {m} {v} {ratio:.2f}", file=sys.stderr)
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
