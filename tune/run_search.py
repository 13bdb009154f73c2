"""`python tune/run_search.py --space NAME`: a hyperparameter search over the BiLAW trainer.

Ray Tune schedules the trials (GPUs when Ray sees them, fractional for small models), Optuna
(through Ray Tune's OptunaSearch) samples them, MLflow tracks them (parent run per search, one
child run per trial). Every input is checked before Ray starts; see `--help`.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: import the package, not the script's folder
    _repo = Path(__file__).resolve().parents[1]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    sys.path.insert(0, str(_repo))

from bilaw.config import ConfigError, TrainConfig, parse_overrides  # noqa: E402
from bilaw.data import MissingDatasetError  # noqa: E402
from tune import spaces as sp  # noqa: E402
from tune.tracking import TrackingError, absolute_tracking_uri, check_tracking_uri, redact_uri  # noqa: E402

# Default GPU share per trial by model size: small models are host-bound (PERFORMANCE.md sec. 4),
# so several share one GPU.
DEFAULT_CHECKPOINT_EVERY_S = 30.0
GPU_SHARE = {"fc1": 0.25, "tiny_cnn": 0.25, "small_cnn": 0.5, "wrn": 1.0, "wrn32_10": 1.0, "wrn34_10": 1.0}



class SearchError(ValueError):
    """A bad command-line value or environment problem found before Ray starts."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_search.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Hyperparameter search over the BiLAW trainer (Ray Tune + Optuna + MLflow).",
        epilog="examples:\n"
               "  python tune/run_search.py --space ablation_capacity            # offline, digits, CPU\n"
               "  python tune/run_search.py --space ablation_capacity --workload paper --seeds 3\n"
               "  python tune/run_search.py --space bilaw_tpe --address auto      # on a running Ray cluster\n"
               "  python tune/run_search.py --list-spaces")
    p.add_argument("--space", help="a shipped space name (see --list-spaces) or the path of a space YAML file")
    p.add_argument("--workload", help="a workload from search_spaces/workloads.yaml, or 'paper' for the space's "
                                      "paper setting (default: the space's own, embedded `digits` data)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a TrainConfig key for every trial (repeatable; same keys as python -m bilaw.train)")
    p.add_argument("--num-samples", type=int, help="trials per seed for tpe/random/nsga2 (grid: the grid size)")
    p.add_argument("--seeds", help="seeds each sampled config runs with: a count N (seeds 0..N-1) or a list '0,3,7'")
    p.add_argument("--max-concurrent", type=int, help="at most this many trials at once (default: as resources allow)")
    p.add_argument("--epochs", type=int, help="override the workload's epochs")
    p.add_argument("--gpus-per-trial", type=float,
                   help="GPU share per trial, fractions allowed (default when GPUs exist: 0.25 fc1/tiny_cnn, "
                        "0.5 small_cnn, 1 wrn; 0 = CPU)")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (default 1)")
    p.add_argument("--checkpoint-every", type=float, metavar="SECONDS",
                   help="a trial hands Ray a checkpoint at the end of the first epoch that ends this long after "
                        "its last one, and after its last epoch; a crashed or resumed trial redoes at most this "
                        "long plus one epoch of training. 0: every epoch (default "
                        f"{DEFAULT_CHECKPOINT_EVERY_S:g}; short epochs pay for each checkpoint; a resumed search "
                        "keeps the value it started with)")
    p.add_argument("--address", help="join the running Ray cluster at this address (e.g. 'auto' or "
                                     "'HEAD_IP:6379'). Without it the search starts its own local Ray and "
                                     "never joins another: not a cluster running on this machine, not one "
                                     "that RAY_ADDRESS or Ray's cluster file (/tmp/ray/ray_current_cluster) "
                                     "names")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///mlruns.db in this folder)")
    p.add_argument("--experiment", help="MLflow experiment and Ray experiment name (default: the space name)")
    p.add_argument("--storage-path", default="ray_results",
                   help="folder for Ray results, checkpoints, the Optuna study and best_config.yaml "
                        "(default ./ray_results)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted search (same --space, --storage-path and --experiment): finished "
                        "trials are kept, unfinished ones continue from their last checkpoint")
    p.add_argument("--dry-run", action="store_true", help="print the resolved space and trial resources, then exit")
    p.add_argument("--list-spaces", action="store_true", help="list the shipped search spaces and exit")
    return p


def parse_seeds(text: str | None, default: list[int]) -> list[int]:
    if text is None:
        return default
    try:
        if "," in text or text.startswith("["):
            seeds = [int(s) for s in text.strip("[]").split(",") if s.strip()]
        else:
            n = int(text)
            if n < 1:
                raise ValueError
            seeds = list(range(n))
    except ValueError:
        raise SearchError(f"--seeds {text!r}: expected a count >= 1 or a list of seeds such as 0,1,2") from None
    if not seeds or any(s < 0 for s in seeds):
        raise SearchError(f"--seeds {text!r}: seeds must be integers >= 0")
    return seeds


class Plan:
    """Everything a search needs, resolved and validated before Ray starts."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.space = sp.load_space(args.space)
        self.workloads = sp.load_workloads()
        self.workload = sp.resolve_workload(self.space, args.workload, self.workloads)
        overrides = parse_overrides(args.set)
        if args.epochs is not None:
            overrides["epochs"] = args.epochs
        if "data_dir" in overrides and overrides["data_dir"]:
            overrides["data_dir"] = str(Path(overrides["data_dir"]).expanduser().resolve())
        self.base = sp.base_config(self.space, self.workload, overrides)
        sp.check_space_against_config(self.space, self.base)
        self.cfg = TrainConfig.from_dict(self.base).resolved()
        self.seeds = parse_seeds(args.seeds, self.space.seeds)
        self.num_samples = self._num_samples()
        if self.space.scheduler and len(self.seeds) > 1:
            raise SearchError("an ASHA scheduler runs each config once: use one seed with it (--seeds 1)")
        if self.space.multi_objective and len(self.seeds) > 1:
            raise SearchError("the nsga2 (two-objective) sampler runs each config once: use one seed (--seeds 1)")
        self.experiment = args.experiment or self.space.name
        self.storage = Path(args.storage_path).expanduser().resolve()
        self.tracking_uri = absolute_tracking_uri(args.tracking_uri)
        self.cpus = 1.0 if args.cpus_per_trial is None else args.cpus_per_trial
        if self.cpus <= 0:
            raise SearchError(f"--cpus-per-trial {self.cpus:g}: must be > 0")
        self.gpus = self._gpus_per_trial()
        if args.max_concurrent is not None and args.max_concurrent < 1:
            raise SearchError(f"--max-concurrent {args.max_concurrent}: must be >= 1")
        every = args.checkpoint_every
        if every is not None and args.resume:
            raise SearchError(f"--checkpoint-every {every:g} with --resume: a resumed search keeps the value it "
                              f"started with; drop the option")
        self.checkpoint_every = DEFAULT_CHECKPOINT_EVERY_S if every is None else every
        if not self.checkpoint_every >= 0:  # also NaN
            raise SearchError(f"--checkpoint-every {every:g}: must be >= 0 seconds (0 = a checkpoint every epoch)")

    def _num_samples(self) -> int:
        n = self.args.num_samples
        if self.space.sampler == "grid":
            if n is not None and n != self.space.grid_size():
                raise SearchError(f"--num-samples {n}: a grid space runs each of its {self.space.grid_size()} "
                                  f"values once per seed; change the seeds with --seeds instead")
            return self.space.grid_size() * len(self.seeds)
        n = self.space.num_samples if n is None else n
        if n is None or n < 1:
            raise SearchError(f"--num-samples {n}: must be >= 1")
        return n * len(self.seeds)

    def _gpus_per_trial(self) -> float:
        g = self.args.gpus_per_trial
        if g is None:
            g = self.space.resources.get("gpu")
        if g is None:
            return None  # decided from what Ray sees, once it is up (or the local CUDA count on dry runs)
        if g < 0 or (g > 1 and g != int(g)):
            raise SearchError(f"--gpus-per-trial {g:g}: allowed are 0 (CPU), a fraction in (0, 1], "
                              f"or a whole number of GPUs")
        return float(g)

    def resolve_gpus(self, available: float) -> float:
        """GPU share per trial given the GPUs the cluster has; a request it cannot meet is an error."""
        if self.gpus is None:
            self.gpus = GPU_SHARE.get(self.cfg.model, 1.0) if available > 0 else 0.0
        if self.gpus > available:
            raise SearchError(f"--gpus-per-trial {self.gpus:g}: the cluster has {available:g} GPUs; "
                              f"ask for at most {available:g} (0 runs trials on CPUs)")
        return self.gpus

    def describe(self) -> str:
        s = self.space
        lines = [f"space        {s.name}: {s.description}  ({s.path})",
                 f"workload     {self.workload.name}: {self.workload.description}",
                 f"sampler      {s.sampler}; metric {', '.join(f'{m} ({d})' for m, d in zip(s.metric, s.mode))}",
                 f"trials       {self.num_samples} ({self.num_samples // len(self.seeds)} configs x seeds {self.seeds})",
                 f"scheduler    {s.scheduler or 'none'}",
                 "searched:"]
        lines += [f"  {p.name:<18} {p.describe()}" for p in s.params.values()]
        lines.append("base config (every trial):")
        base = self.cfg.to_dict()
        lines += [f"  {k:<22} {base[k]!r}" for k in base]
        gpus = "decided at start" if self.gpus is None else f"{self.gpus:g}"
        lines.append(f"resources    {self.cpus:g} CPU and {gpus} GPU per trial"
                     + (f", at most {self.args.max_concurrent} at once" if self.args.max_concurrent else ""))
        lines.append(f"experiment   {self.experiment} -> {self.storage / self.experiment}")
        lines.append(f"tracking     {redact_uri(self.tracking_uri)}")
        return "\n".join(lines)


def check_storage(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise SearchError(f"--storage-path {str(path)!r} cannot be written ({exc.strerror or exc}); "
                          f"pass a writable folder") from None


def check_fresh(plan: Plan) -> None:
    folder = plan.storage / plan.experiment
    if folder.exists() and any(folder.iterdir()):
        raise SearchError(f"experiment {plan.experiment!r} already has results in {folder}; use --experiment "
                          f"NEW_NAME for a new search or remove that folder")


def check_resumable(plan: Plan) -> None:
    folder = plan.storage / plan.experiment
    if not any(folder.glob("experiment_state-*.json")):
        raise SearchError(f"--resume: nothing to resume for experiment {plan.experiment!r}: {folder} holds no "
                          f"Ray Tune experiment state (check --storage-path and --experiment)")


def check_data(cfg: TrainConfig) -> None:
    """Load the dataset once in the driver so a missing one fails before Ray starts."""
    from bilaw.data import DATASETS

    DATASETS.get(cfg.dataset)(data_dir=cfg.data_dir)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_spaces:
        for name, description in sp.list_spaces():
            print(f"{name:<24} {description}")
        return 0
    if not args.space:
        print("error: --space is required (see --list-spaces)", file=sys.stderr)
        return 2
    try:
        plan = Plan(args)
        if args.dry_run or not args.address:  # a cluster's GPUs are known once Ray is up
            plan.resolve_gpus(float(_local_gpu_count()))
        if args.dry_run:
            print(plan.describe())
            return 0
        check_data(plan.cfg)
        check_tracking_uri(plan.tracking_uri)
        check_storage(plan.storage)
        check_resumable(plan) if args.resume else check_fresh(plan)
    except (sp.SpaceError, ConfigError, SearchError, TrackingError, MissingDatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from tune.search import run_search

    try:
        return run_search(plan, argv if argv is not None else sys.argv[1:])
    except SearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _local_gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


if __name__ == "__main__":
    sys.exit(main())
