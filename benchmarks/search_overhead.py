"""What a search costs beyond its trials' training: wall time against time inside the trainer.

    python benchmarks/search_overhead.py                   # 4 BiLAW trials of about a minute each, 2 at once
    python benchmarks/search_overhead.py --tiny            # the suite's quick mode (2 short trials)
    python benchmarks/search_overhead.py --gpu-packing 1,2,4   # on a GPU: trials/hour at 1, 2, 4 per GPU

A real search (`tune/run_search.py`, Ray Tune + Optuna + MLflow, checkpoints every epoch) runs a
grid over BiLAW's weight-net capacity (one trial per capacity) on `digits`. Its wall time, from the call to the return (Ray start-up
included), is compared with the time its trials spent inside the trainer (the per-epoch training
and evaluation and the final test evaluation, as each trial logged them to MLflow) at the
concurrency the search ran with:

    overhead = wall / (sum of trial trainer time / concurrency) - 1

split into what each trial spends outside the trainer within its MLflow run (set-up, per-epoch
bookkeeping, finish; as a fraction of trainer time) and what the search itself costs in seconds
(Ray and worker start-up, scheduling, shut-down), which only longer searches amortise.

Packing (GPU only): the same number of small-model trials with 1, 2 and 4 trials sharing each GPU
(fractional GPU resources); trials per hour and the speed-up over one trial per GPU.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tune.run_search import main as run_search_main  # noqa: E402

TRAINER_TIME_KEYS = ("epoch_time_s", "eval_time_s")
GATE = 0.05


def trial_times(tracking_uri: str, experiment: str) -> list[dict]:
    """Per trial (MLflow child run): time inside the trainer, from the metrics it logged, and where
    the rest of the run's life went.

    Each epoch's metrics are logged (with a timestamp) right after its checkpoint is written, so
    the time between two epochs' timestamps, less the second epoch's training and evaluation, is
    that epoch's bookkeeping: best-state copy, checkpoint, the MLflow log and Ray's report.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`mlflow.parentRunId` != ''")
    rows = []
    for run in runs:
        hist = {key: sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
                for key in TRAINER_TIME_KEYS}
        inside = [sum(ms) for ms in zip(*([m.value for m in hist[key]] for key in TRAINER_TIME_KEYS))]
        stamps = [m.timestamp / 1000 for m in hist[TRAINER_TIME_KEYS[0]]]
        test_eval = run.data.metrics.get("test_eval_time_s", 0.0)
        row = {"run_id": run.info.run_id, "trainer_s": sum(inside) + test_eval, "epochs": len(inside)}
        if stamps and run.info.end_time:
            # the last epoch is logged after the final test evaluation (its report carries the test metrics)
            start, end = run.info.start_time / 1000, run.info.end_time / 1000
            one = len(stamps) == 1
            row.update(
                run_s=end - start,
                setup_s=stamps[0] - start - inside[0] - (test_eval if one else 0.0),  # data, model, first imports
                epoch_bookkeeping_s=sum(stamps[i] - stamps[i - 1] - inside[i] for i in range(1, len(stamps)))
                - (0.0 if one else test_eval),
                finish_s=end - stamps[-1])  # saved run, MLflow artifacts, Ray's last report
            row["outside_s"] = row["run_s"] - row["trainer_s"]
        rows.append(row)
    return rows


def write_space(root: Path, trials: int, model: str) -> Path:
    """A grid of `trials` weight-net capacities (similar cost per trial, so waves pack evenly)."""
    path = root / f"capacity_{trials}_{model}.yaml"
    sizes = ", ".join(f'"{32 + 16 * i}"' for i in range(trials))
    path.write_text(f"description: search_overhead benchmark, {trials} capacities\n"
                    f"workload: digits\nbase: {{method: bilaw, model: {model}}}\n"
                    f"search:\n  weight_net: {{choice: [{sizes}]}}\n"
                    f"sampler: grid\nmetric: best_val_pgd_acc\nmode: max\nseeds: [0]\nscheduler: none\n")
    return path


def timed_search(root: Path, name: str, trials: int, args: list[str], quiet: bool,
                 model: str = "fc1") -> tuple[float, str, list[dict]]:
    uri = f"sqlite:///{root / (name + '.db')}"
    argv = ["--space", str(write_space(root, trials, model)), "--experiment", name,
            "--storage-path", str(root / "ray_results"), "--tracking-uri", uri, *args]
    sink = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
        rc = run_search_main(argv)
    wall = time.perf_counter() - start
    if rc != 0:
        raise SystemExit(f"search failed (exit {rc}): {' '.join(argv)}\n{sink.getvalue()[-2000:]}")
    return wall, uri, trial_times(uri, name)


def overhead(root: Path, workload: str, epochs: int, trials: int, concurrency: int, quiet: bool,
             plots: bool = False) -> dict:
    wall, _, rows = timed_search(root, "overhead", trials, [
        "--workload", workload, "--epochs", str(epochs), "--max-concurrent", str(concurrency),
        "--gpus-per-trial", "0", "--set", "aa_samples=0", "--set", f"plots={str(plots).lower()}"], quiet)
    inside = sum(r["trainer_s"] for r in rows)
    ideal = inside / concurrency
    out = {"workload": workload, "epochs": epochs, "trials": len(rows), "concurrency": concurrency,
           "plots": plots, "wall_s": wall, "trainer_s_sum": inside, "ideal_wall_s": ideal, "overhead": wall / ideal - 1,
           "gate": GATE, "trial_trainer_s": [r["trainer_s"] for r in rows]}
    if all("run_s" in r for r in rows):
        # per trial, outside the trainer but inside its MLflow run; the rest of the wall time is the
        # search's own: Ray start-up, worker start-up, scheduling between trials, the end, and any
        # slot left idle while the last trials finish (trials of unequal length do not pack evenly)
        for key in ("setup_s", "epoch_bookkeeping_s", "finish_s", "outside_s"):
            out[f"trial_{key}"] = [r[key] for r in rows]
        out["per_trial_overhead"] = sum(r["outside_s"] for r in rows) / inside
        out["search_fixed_s"] = wall - sum(r["run_s"] for r in rows) / concurrency
    return out


def packing(root: Path, shares: list[int], trials: int, epochs: int, quiet: bool) -> list[dict]:
    out = []
    for k in shares:
        wall, _, rows = timed_search(root, f"pack{k}", trials, [
            "--workload", "digits", "--epochs", str(epochs), "--gpus-per-trial", str(1.0 / k),
            "--max-concurrent", str(k * torch.cuda.device_count()), "--set", "aa_samples=0", "--set", "plots=false"],
            quiet)
        out.append({"trials_per_gpu": k, "trials": len(rows), "wall_s": wall,
                    "trials_per_hour": 3600 * len(rows) / wall})
    base = out[0]["trials_per_hour"]
    for row in out:
        row["speedup_vs_1"] = row["trials_per_hour"] / base
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--epochs", type=int, default=40, help="digits epochs per trial (40: about a minute on one CPU core)")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--gpu-packing", default="", help="e.g. 1,2,4 (needs CUDA): trials per GPU to compare")
    p.add_argument("--packing-trials", type=int, default=8)
    p.add_argument("--plots", action="store_true", help="let the trials draw their plots (off: the search machinery alone)")
    p.add_argument("--tiny", action="store_true", help="quick mode for the test suite: 2 smoke trials of 1 epoch")
    p.add_argument("--verbose", action="store_true", help="show the searches' own output")
    p.add_argument("--out", default="search_overhead.json")
    args = p.parse_args(argv)
    shares = [int(s) for s in args.gpu_packing.split(",") if s.strip()]
    if shares and not torch.cuda.is_available():
        p.error(f"--gpu-packing {args.gpu_packing}: no CUDA device here (packing is measured on GPUs only)")
    workload = "smoke" if args.tiny else "digits"
    if args.tiny:
        args.trials, args.epochs = 2, 1
    import mlflow
    import optuna
    import ray

    result = {"device": platform.processor() or "cpu", "cpus": __import__("os").cpu_count(),
              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
              "versions": {"ray": ray.__version__, "optuna": optuna.__version__, "mlflow": mlflow.__version__,
                           "torch": torch.__version__}}
    with tempfile.TemporaryDirectory(prefix="search_overhead_") as tmp:
        result["overhead"] = o = overhead(Path(tmp), workload, args.epochs, args.trials, args.concurrency,
                                          quiet=not args.verbose, plots=args.plots)
        print(f"search of {o['trials']} trials ({o['workload']}, {o['epochs']} epochs, {o['concurrency']} at once): "
              f"wall {o['wall_s']:.1f} s; inside the trainer {o['trainer_s_sum']:.1f} s "
              f"(ideal wall {o['ideal_wall_s']:.1f} s); overhead {100 * o['overhead']:+.1f}% (gate {100 * GATE:.0f}%)")
        if "per_trial_overhead" in o:
            mean = {k: sum(o[f"trial_{k}"]) / o["trials"] for k in ("setup_s", "epoch_bookkeeping_s", "finish_s")}
            print(f"  of which per trial {100 * o['per_trial_overhead']:+.1f}% (mean set-up {mean['setup_s']:.1f} s, "
                  f"per-epoch bookkeeping {mean['epoch_bookkeeping_s']:.1f} s in all, finish {mean['finish_s']:.1f} s), "
                  f"and the search's own {o['search_fixed_s']:.1f} s (Ray and worker start-up, scheduling, idle slots "
                  f"at the end, shut-down)")
        if shares:
            result["packing"] = rows = packing(Path(tmp), shares, args.packing_trials, args.epochs, not args.verbose)
            for r in rows:
                print(f"  {r['trials_per_gpu']} per GPU: {r['trials']} trials in {r['wall_s']:.0f} s = "
                      f"{r['trials_per_hour']:.0f} trials/h ({r['speedup_vs_1']:.2f}x one per GPU)")
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
