"""What a search costs beyond its trials: `tune/run_search.py` against an Optuna + MLflow script
and a plain loop over the same trainings.

    python benchmarks/search_overhead.py                       # the README's main search and 16 smoke trials, 3 rounds
    python benchmarks/search_overhead.py --tiny                # the suite's quick mode: 2 smoke trials, 1 round
    python benchmarks/search_overhead.py --gpu-packing 1,2,4   # on a GPU: trials/hour at 1, 2, 4 per GPU

Three ways to run the same trials, each a fresh Python process in an empty folder, timed from
its start to its exit (interpreter start, imports and every store included):
- `search`: the tool, as a user runs it (`python tune/run_search.py --space ...`: Ray Tune,
  Optuna's study and MLflow in SQLite, checkpoints, the report, the winner's model);
- `script`: what a user would otherwise write: an Optuna study (SQLite) whose objective trains
  one config with `bilaw.training.trainer.train` and logs its parameters, per-epoch metrics and
  final metrics to MLflow (SQLite), trials one at a time in the process;
- `plain`: the same trainings in a loop, nothing else.
The trials are the search's own: the configs its trials ran (each child run's config.yaml),
in the order they started. The three are interleaved, round after round, and medians are
compared, so drift of a shared machine hits each alike.

Printed per workload: the median walls and the ratios search/script and search/plain; the
search's trial phase (first trial start to last trial end, from its MLflow child runs) and how
busy the cores were in it (CPU time of the search's whole process tree, sampled, over the
phase's length times the cores); and, from a second search of the same space with fewer trials,
the overhead per extra trial: how much more wall an extra trial costs the search than its
training needs at the search's concurrency.

Packing (GPU only): the same small-model trials with 1, 2 and 4 trials sharing each GPU
(fractional GPU resources); trials per hour and the speed-up over one trial per GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bilaw.metrics import BEST_VAL_PGD_ACC, TEST_CLEAN_ACC, scalar_final  # noqa: E402

# name -> the search's arguments, and the smaller search of the same space the per-trial
# overhead is measured against (its trials are the first ones of the larger: same sampler seed)
WORKLOADS: dict[str, dict[str, Any]] = {
    "main": {"args": ["--space", "ablation_capacity"], "what": "the README's main search (digits, 4 trials)"},
    "smoke16": {"args": ["--space", "wmmr", "--workload", "smoke", "--num-samples", "16"],
                "what": "16 smoke trials", "fewer": 4},
    "tiny": {"args": ["--space", "wmmr", "--workload", "smoke", "--num-samples", "2"],
             "what": "2 smoke trials (the suite's quick mode)", "fewer": 1},
}
ARMS = ("search", "script", "plain")
SAMPLE_S = 0.1


# -- the process tree's CPU time --------------------------------------------------------------------
def run_watched(cmd: list[str], cwd: Path) -> tuple[float, float, list[tuple[float, float]], str]:
    """Run `cmd` in `cwd`; return its start (time.time()), its wall time, samples (seconds since start, CPU seconds used
    so far by it and every process it started) and its output. A process's CPU time is counted
    as last sampled (a process ending between two samples loses at most SAMPLE_S of it)."""
    import psutil

    log = cwd / "output.txt"
    with log.open("w") as out:
        start, started = time.perf_counter(), time.time()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        root, cpu, samples = psutil.Process(proc.pid), {}, []
        while proc.poll() is None:
            try:
                family = [root, *root.children(recursive=True)]
            except psutil.Error:
                family = []
            for p in family:
                try:
                    t = p.cpu_times()
                    cpu[p.pid] = t.user + t.system
                except psutil.Error:
                    pass
            samples.append((time.perf_counter() - start, sum(cpu.values())))
            time.sleep(SAMPLE_S)
        wall = time.perf_counter() - start
    text = log.read_text()
    if proc.returncode != 0:
        raise SystemExit(f"exit {proc.returncode}: {' '.join(cmd)}\n{text[-3000:]}")
    return started, wall, samples, text


def cpu_between(samples: list[tuple[float, float]], t0: float, t1: float) -> float:
    """CPU seconds the tree used between t0 and t1 (seconds since its start), linearly interpolated."""
    def at(t: float) -> float:
        before = [s for s in samples if s[0] <= t]
        after = [s for s in samples if s[0] >= t]
        if not before:
            return 0.0
        if not after:
            return samples[-1][1]
        (ta, ca), (tb, cb) = before[-1], after[0]
        return ca if tb == ta else ca + (cb - ca) * (t - ta) / (tb - ta)
    return at(t1) - at(t0)


# -- the three arms ---------------------------------------------------------------------------------
def run_search_arm(args: list[str], folder: Path) -> dict[str, Any]:
    """The tool from an empty folder, as a user runs it; its trial phase from its MLflow runs."""
    from mlflow.tracking import MlflowClient

    folder.mkdir(parents=True)
    launched, wall, samples, _ = run_watched([sys.executable, str(REPO / "tune" / "run_search.py"), *args], folder)
    client = MlflowClient(f"sqlite:///{folder / 'mlruns.db'}")
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    runs = client.search_runs([e.experiment_id for e in experiments], max_results=10000)
    trials = sorted((r for r in runs if "mlflow.parentRunId" in r.data.tags), key=lambda r: r.info.start_time)
    # a trial ends when the driver logs its final metrics (a run's end_time moves when the report
    # logs the winner's model into it)
    ends = [client.get_metric_history(r.info.run_id, TEST_CLEAN_ACC)[-1].timestamp for r in trials]
    first, last = min(r.info.start_time for r in trials) / 1000, max(ends) / 1000
    phase = (first - launched, last - launched)  # seconds since the process started (both clocks are wall clocks)
    import yaml

    configs = []
    for run in trials:
        path = client.download_artifacts(run.info.run_id, "config.yaml", str(folder))
        configs.append(yaml.safe_load(Path(path).read_text()))
    cores = os.cpu_count() or 1
    busy = cpu_between(samples, *phase) / ((phase[1] - phase[0]) * cores)
    return {"wall_s": wall, "trials": len(trials), "trial_phase_s": phase[1] - phase[0],
            "before_trials_s": phase[0], "after_trials_s": wall - phase[1], "busy_share": busy, "configs": configs}


def run_script_arm(arm: str, configs: list[dict], folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True)
    (folder / "configs.json").write_text(json.dumps(configs))
    _, wall, _, text = run_watched([sys.executable, __file__, "--arm", arm, "--configs", "configs.json"], folder)
    inside = json.loads(text.strip().splitlines()[-1])
    return {"wall_s": wall, "trials": len(configs), "training_s": inside["training_s"]}


def optuna_mlflow_script(configs: list[dict]) -> float:
    """What a user would write: an Optuna study, MLflow logging per trial, trials one at a time.
    Returns the seconds spent inside `train`."""
    import mlflow
    import optuna

    from bilaw.config.reproducibility import use_threads
    from bilaw.config.train_config import TrainConfig
    from bilaw.training.trainer import train

    mlflow.set_tracking_uri("sqlite:///mlruns.db")
    mlflow.set_experiment("script")
    study = optuna.create_study(study_name="script", storage="sqlite:///optuna.db", direction="maximize")
    inside = []

    def objective(trial: optuna.Trial) -> float:
        cfg = use_threads(TrainConfig.from_dict(configs[trial.number]))  # the thread count the trial ran with
        with mlflow.start_run(run_name=f"trial {trial.number}"):
            mlflow.log_params(cfg.to_dict())

            def on_epoch(metrics: dict, _checkpoint: Any) -> None:
                numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
                mlflow.log_metrics(numbers, step=int(metrics["epoch"]))

            start = time.perf_counter()
            result = train(cfg, on_epoch, progress=False, log=None)
            inside.append(time.perf_counter() - start)
            mlflow.log_metrics(scalar_final(result.final))
        return result.history[-1][BEST_VAL_PGD_ACC]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=len(configs))
    return sum(inside)


def plain_loop(configs: list[dict]) -> float:
    """The same trainings and nothing else; returns the seconds spent inside `train`."""
    from bilaw.config.reproducibility import use_threads
    from bilaw.config.train_config import TrainConfig
    from bilaw.training.trainer import train

    start = time.perf_counter()
    for values in configs:
        train(use_threads(TrainConfig.from_dict(values)), progress=False, log=None)
    return time.perf_counter() - start


# -- the comparison -------------------------------------------------------------------------------
def compare(root: Path, names: list[str], rounds: int, verbose: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        spec = WORKLOADS[name]
        rows: dict[str, list[dict]] = {arm: [] for arm in ARMS}
        fewer_rows: list[dict] = []
        fewer_plain: list[dict] = []
        configs: list[dict] = []
        for r in range(rounds):
            order = ARMS[r % 3:] + ARMS[:r % 3]  # each arm takes each place in turn
            for arm in order:  # round 0 starts with the search, which gives the configs
                folder = root / f"{name}_{arm}_{r}"
                if arm == "search":
                    row = run_search_arm(spec["args"], folder)
                    if configs and len(row["configs"]) != len(configs):
                        raise SystemExit(f"{name}: round {r} ran {len(row['configs'])} trials, not {len(configs)}")
                    configs = configs or row["configs"]
                else:
                    row = run_script_arm(arm, configs, folder)
                rows[arm].append(_public(row))
                if verbose:
                    print(f"  {name} round {r} {arm}: {row['wall_s']:.1f} s", flush=True)
            if "fewer" in spec:
                k = spec["fewer"]
                args = [*spec["args"][:-1], str(k)]
                fewer_rows.append(_public(run_search_arm(args, root / f"{name}_fewer_{r}")))
                fewer_plain.append(run_script_arm("plain", configs[:k], root / f"{name}_fewer_plain_{r}"))
        out[name] = summarize(name, spec, rows, configs, fewer_rows, fewer_plain)
    return out


def _public(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "configs"}


def _median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def summarize(name: str, spec: dict, rows: dict[str, list[dict]], configs: list[dict],
              fewer_rows: list[dict], fewer_plain: list[dict]) -> dict[str, Any]:
    walls = {arm: _median(rows[arm], "wall_s") for arm in ARMS}
    n = len(configs)
    concurrency = min(n, os.cpu_count() or 1)
    s = {"what": spec["what"], "args": spec["args"], "trials": n, "rounds": len(rows["search"]),
         "wall_s": walls, "walls": {arm: [r["wall_s"] for r in rows[arm]] for arm in ARMS},
         "search_vs_script": walls["search"] / walls["script"], "search_vs_plain": walls["search"] / walls["plain"],
         "plain_training_s": _median(rows["plain"], "training_s"),
         "trial_phase_s": _median(rows["search"], "trial_phase_s"),
         "before_trials_s": _median(rows["search"], "before_trials_s"),
         "after_trials_s": _median(rows["search"], "after_trials_s"),
         "busy_share": _median(rows["search"], "busy_share"), "concurrency": concurrency}
    if fewer_rows:
        k = fewer_rows[0]["trials"]
        extra = n - k
        wall_per_extra = (walls["search"] - _median(fewer_rows, "wall_s")) / extra
        training_per_extra = (s["plain_training_s"] - _median(fewer_plain, "training_s")) / extra
        s.update(fewer_trials=k, fewer_wall_s=_median(fewer_rows, "wall_s"), wall_per_extra_trial_s=wall_per_extra,
                 training_per_extra_trial_s=training_per_extra,
                 overhead_per_extra_trial_s=wall_per_extra - training_per_extra / concurrency)
    return s


def report(s: dict[str, Any]) -> str:
    w = s["wall_s"]
    lines = [f"{s['what']} ({' '.join(s['args'])}), medians of {s['rounds']} interleaved rounds:",
             f"  search {w['search']:.1f} s, Optuna + MLflow script {w['script']:.1f} s, plain loop {w['plain']:.1f} s "
             f"(its trainings {s['plain_training_s']:.1f} s): search/script {s['search_vs_script']:.2f}x, "
             f"search/plain {s['search_vs_plain']:.2f}x",
             f"  search: {s['before_trials_s']:.1f} s before the first trial starts, trial phase "
             f"{s['trial_phase_s']:.1f} s with the {os.cpu_count()} cores {100 * s['busy_share']:.0f}% busy, "
             f"{s['after_trials_s']:.1f} s after the last trial ends"]
    if "overhead_per_extra_trial_s" in s:
        lines.append(f"  per extra trial ({s['fewer_trials']} -> {s['trials']} trials): search wall "
                     f"+{s['wall_per_extra_trial_s']:.2f} s against {s['training_per_extra_trial_s']:.2f} s of training "
                     f"({s['concurrency']} at once): overhead {s['overhead_per_extra_trial_s']:+.2f} s per trial")
    return "\n".join(lines)


# -- GPU packing ------------------------------------------------------------------------------------
def write_space(root: Path, trials: int, model: str) -> Path:
    """A grid of `trials` weight-net capacities (similar cost per trial, so waves pack evenly)."""
    path = root / f"capacity_{trials}_{model}.yaml"
    sizes = ", ".join(f'"{32 + 16 * i}"' for i in range(trials))
    path.write_text(f"description: search_overhead benchmark, {trials} capacities\n"
                    f"workload: digits\nbase: {{method: bilaw, model: {model}}}\n"
                    f"search:\n  weight_net: {{choice: [{sizes}]}}\n"
                    f"sampler: grid\nmetric: best_val_pgd_acc\nmode: max\nseeds: [0]\nscheduler: none\n")
    return path


def packing(root: Path, shares: list[int], trials: int, epochs: int) -> list[dict]:
    import torch

    out = []
    for k in shares:
        folder = root / f"pack{k}"
        folder.mkdir(parents=True)
        args = ["--space", str(write_space(folder, trials, "fc1")), "--workload", "digits", "--epochs", str(epochs),
                "--gpus-per-trial", str(1.0 / k), "--max-concurrent", str(k * torch.cuda.device_count()),
                "--set", "aa_samples=0"]
        _, wall, _, _ = run_watched([sys.executable, str(REPO / "tune" / "run_search.py"), *args], folder)
        out.append({"trials_per_gpu": k, "trials": trials, "wall_s": wall, "trials_per_hour": 3600 * trials / wall})
    base = out[0]["trials_per_hour"]
    for row in out:
        row["speedup_vs_1"] = row["trials_per_hour"] / base
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default="main,smoke16", help=f"comma-separated, of {', '.join(WORKLOADS)}")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians are compared)")
    p.add_argument("--tiny", action="store_true", help="quick mode for the test suite: 2 smoke trials, 1 round")
    p.add_argument("--gpu-packing", default="", help="e.g. 1,2,4 (needs CUDA): trials per GPU to compare")
    p.add_argument("--packing-trials", type=int, default=8)
    p.add_argument("--packing-epochs", type=int, default=40)
    p.add_argument("--verbose", action="store_true", help="print each run's wall as it ends")
    p.add_argument("--out", default="search_overhead.json")
    p.add_argument("--arm", choices=("script", "plain"), help=argparse.SUPPRESS)  # one arm, in its own process
    p.add_argument("--configs", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.arm:
        configs = json.loads(Path(args.configs).read_text())
        inside = optuna_mlflow_script(configs) if args.arm == "script" else plain_loop(configs)
        print(json.dumps({"training_s": inside}))
        return 0
    names = ["tiny"] if args.tiny else [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        p.error(f"--workloads {args.workloads}: unknown {', '.join(unknown)} (known: {', '.join(WORKLOADS)})")
    if args.rounds < 1:
        p.error(f"--rounds {args.rounds}: at least 1")
    shares = [int(s) for s in args.gpu_packing.split(",") if s.strip()]
    import torch

    if shares and not torch.cuda.is_available():
        p.error(f"--gpu-packing {args.gpu_packing}: no CUDA device here (packing is measured on GPUs only)")
    import mlflow
    import optuna
    import ray

    result: dict[str, Any] = {
        "device": platform.processor() or "cpu", "cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": {"ray": ray.__version__, "optuna": optuna.__version__, "mlflow": mlflow.__version__,
                     "torch": torch.__version__}}
    with tempfile.TemporaryDirectory(prefix="search_overhead_") as tmp:
        if shares:
            result["packing"] = rows = packing(Path(tmp), shares, args.packing_trials, args.packing_epochs)
            for r in rows:
                print(f"  {r['trials_per_gpu']} per GPU: {r['trials']} trials in {r['wall_s']:.0f} s = "
                      f"{r['trials_per_hour']:.0f} trials/h ({r['speedup_vs_1']:.2f}x one per GPU)")
        else:
            result["workloads"] = compare(Path(tmp), names, 1 if args.tiny else args.rounds, args.verbose)
            for s in result["workloads"].values():
                print(report(s), flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
