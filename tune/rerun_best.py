"""`python tune/rerun_best.py --experiment NAME [--metric M] [--seeds 3] [--epochs N]`: re-train the
best finished trial's exact config once per seed with the paper's evaluation (`FULL_EVAL` of
bilaw/config/reproducibility.py: PGD-20 and standard AutoAttack on 1,000 test points), each re-run an
MLflow run tagged with the run it re-runs, and print mean and standard deviation. Each re-run
uses the torch thread count the trial recorded (`--threads` overrides it, with a note). The
seeds run as Ray trials, so a GPU machine or cluster runs them in parallel.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python tune/rerun_best.py`
    import _script_path  # noqa: F401  (puts this repository first on sys.path)

from bilaw.config.reproducibility import FULL_EVAL, evaluation_label, pgd_label, threads_note  # noqa: E402
from bilaw.config.train_config import ConfigError, TrainConfig, parse_overrides  # noqa: E402
from bilaw.file_errors import DamagedFileError  # noqa: E402
from bilaw.metrics import BEST_VAL_PGD_ACC, TEST_AA_ACC, TEST_CLEAN_ACC, TEST_PGD_ACC, finished  # noqa: E402
from tune.report import POINTS, ReportError, finished_runs  # noqa: E402
from tune.tracking.model_store import ModelStoreError, source_run  # noqa: E402
from tune.tracking.runs import (TrackingError, absolute_tracking_uri, check_store_exists,  # noqa: E402
                                check_tracking_uri)

SUMMARY = [("clean", TEST_CLEAN_ACC), ("PGD", TEST_PGD_ACC), ("AutoAttack", TEST_AA_ACC)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rerun_best.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", required=True, help="MLflow experiment of the search")
    p.add_argument("--metric", default=BEST_VAL_PGD_ACC, help="rank finished trials by this metric (max)")
    p.add_argument("--run-id", help="re-run this MLflow run instead of the best one")
    p.add_argument("--model", metavar="URI", help="re-run the run a logged model comes from: runs:/RUN_ID/model, "
                                                   "models:/m-MODEL_ID, models:/NAME/VERSION, models:/NAME/latest "
                                                   "or models:/NAME@ALIAS")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0..N-1), default 3")
    p.add_argument("--epochs", type=int, help="override the epochs of the re-runs")
    p.add_argument("--aa-samples", type=int, default=FULL_EVAL["aa_samples"],
                   help=f"AutoAttack test samples (default {FULL_EVAL['aa_samples']}, the paper's)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch CPU threads per re-run (default: the count the trial recorded)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///mlruns.db in this folder)")
    p.add_argument("--storage-path", default="ray_results", help="folder for the re-runs' Ray results")
    p.add_argument("--gpus-per-trial", type=float, help="GPU share per seed (default: 1 if a GPU exists, else 0)")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per seed (default: its thread count, else 1)")
    return p


def pick_run(uri: str, experiment: str, metric: str, run_id: str | None):
    runs = finished_runs(uri, experiment, reruns=False)
    if run_id is not None:
        for r in runs:
            if r.info.run_id == run_id:
                return r
        raise ReportError(f"--run-id {run_id}: no finished run with that id in experiment {experiment!r}")
    ranked = [r for r in runs if metric in r.data.metrics and "rerun_of" not in r.data.tags]
    if not ranked:
        raise ReportError(f"no finished run of {experiment!r} has the metric {metric!r}")
    return max(ranked, key=lambda r: r.data.metrics[metric])


def run_config(uri: str, run) -> dict:
    """The run's exact config: its config.yaml artifact, else (no such artifact) its params. An
    artifact that is damaged or not a valid config is a DamagedFileError naming it."""
    import mlflow.artifacts

    where = f"{run.info.artifact_uri.rstrip('/')}/config.yaml"
    with tempfile.TemporaryDirectory() as d:
        try:
            path = mlflow.artifacts.download_artifacts(artifact_uri=where, dst_path=d, tracking_uri=uri)
        except Exception:  # no config.yaml logged (or the artifact store cannot be read): the params
            return TrainConfig.from_dict(run.data.params).to_dict()
        try:
            return TrainConfig.from_yaml(path).to_dict()
        except ConfigError as exc:
            problems = "; ".join(e.replace(f"{path}: ", "") for e in exc.errors)
            raise DamagedFileError(where, f"the config.yaml of run {run.info.run_id} is not a valid config: "
                                          f"{problems}", "pass --run-id of another finished run") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.seeds < 1:
            raise ConfigError([f"--seeds {args.seeds}: must be >= 1"])
        uri = absolute_tracking_uri(args.tracking_uri)
        check_store_exists(uri)
        check_tracking_uri(uri)
        if args.model and args.run_id:
            raise ReportError("--model and --run-id both name a run: pass one")
        run_id = source_run(uri, args.model) if args.model else args.run_id
        best = pick_run(uri, args.experiment, args.metric, run_id)
        recorded = run_config(uri, best)
        config = {**recorded, **FULL_EVAL, "aa_samples": args.aa_samples, **parse_overrides(args.set)}
        if args.epochs is not None:
            config["epochs"] = args.epochs
        if args.threads is not None:
            config["threads"] = args.threads
        config.pop("seed", None)
        cfg = TrainConfig.from_dict(config)  # validate before Ray starts
    except (ReportError, TrackingError, ConfigError, DamagedFileError, ModelStoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"re-running run {best.info.run_id} ({best.info.run_name}, {args.metric} "
          f"{best.data.metrics.get(args.metric, float('nan')):.4f}) with seeds 0..{args.seeds - 1}; "
          f"evaluation: {evaluation_label(cfg.to_dict())}", flush=True)
    if cfg.threads is not None:
        note = threads_note(recorded.get("threads"), cfg.threads, f"run {best.info.run_id}'s config.yaml")
        print(note or f"{cfg.threads} torch thread{'s' if cfg.threads != 1 else ''} per re-run, as the trial ran",
              flush=True)
    return _run(args, uri, best, config)


def _run(args, uri: str, best, config: dict) -> int:
    import ray
    import torch

    from tune.ray_start import LOCAL_RAY
    from tune.search import use_tune_env
    from tune.tracking.runs import SearchTracking, use_fast_fail_http
    from tune.variant_runs import run_variants
    from tune.worker_exit import worker_runtime_env

    use_tune_env()
    use_fast_fail_http()

    tracking = SearchTracking(uri, args.experiment)
    gpus = args.gpus_per_trial if args.gpus_per_trial is not None else (1.0 if torch.cuda.is_available() else 0.0)
    if gpus == 0 and config.get("device", "auto") == "auto":
        config["device"] = "cpu"
    threads = TrainConfig.from_dict(config).threads or 1  # a trial stored before threads were recorded ran 1
    cpus = args.cpus_per_trial if args.cpus_per_trial is not None else float(threads)
    ray.init(address=LOCAL_RAY, include_dashboard=False, object_store_memory=256 * 1024 ** 2, logging_level="WARNING",
             runtime_env=worker_runtime_env({}))
    name = f"{args.experiment}-rerun-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        results = run_variants([{**config, "seed": seed} for seed in range(args.seeds)],
                               meta={"threads": threads}, resources={"cpu": cpus, "gpu": gpus}, tracking=tracking,
                               tags={"rerun_of": best.info.run_id, "rerun": "true"}, name=name,
                               storage_path=str(Path(args.storage_path).resolve()))
    finally:
        ray.shutdown()
    finals = [r.metrics for r in results if r.error is None and finished(r.metrics or {})]
    if not finals:
        print(f"error: no re-run finished ({sum(r.error is not None for r in results)} errored)", file=sys.stderr)
        return 1
    print(f"\n{len(finals)} re-runs of {best.info.run_id}:")
    for line in summary_lines(finals, pgd_label(config["eval_pgd_steps"])):
        print(line)
    return 0


def summary_lines(finals: list[dict], pgd: str = "PGD-20") -> list[str]:
    """Mean of each test accuracy over the re-runs with its 95% interval: over seeds (std and t)
    for several, the Wilson interval over its test points for one; `pgd` labels the PGD line
    with the steps the re-runs used."""
    from tune.results.uncertainty import accuracy_interval

    lines = []
    for label, key in SUMMARY:
        label = pgd if key == TEST_PGD_ACC else label
        values = [m[key] for m in finals if key in m]
        if not values:
            continue
        counts = {int(m[POINTS[key]]) for m in finals if POINTS[key] in m}
        interval = accuracy_interval(values, counts.pop() if len(counts) == 1 else None)
        spread = f" ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else ""
        bounds = f" [{100 * interval[0]:.2f}, {100 * interval[1]:.2f}] ({interval[2]})" if interval else ""
        lines.append(f"  {label:<11} {100 * statistics.fmean(values):6.2f}{spread} %{bounds}")
    return lines


if __name__ == "__main__":
    from tune.process_exit import exit_now

    exit_now(main())
