"""`python tune/run_search.py --space NAME`: a hyperparameter search over the BiLAW trainer.

Ray Tune schedules the trials (GPUs when Ray sees them, fractional for small models), Optuna
(through Ray Tune's OptunaSearch) samples them, MLflow tracks them (parent run per search, one
child run per trial). Every input is checked before Ray starts; see `--help`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

if __package__ in (None, ""):  # run as `python tune/run_search.py`
    import _script_path  # noqa: F401  (puts this repository first on sys.path)

from bilaw.config.train_config import ConfigError  # noqa: E402
from bilaw.data.datasets import MissingDatasetError  # noqa: E402
from bilaw.file_errors import DamagedFileError  # noqa: E402
from tune import resume_check  # noqa: E402
from tune import spaces as sp  # noqa: E402
from tune.disk_full import DISK_FULL_EXIT, disk_full_cause, keep_disk_full_tracebacks_out  # noqa: E402
from tune.plan import (DEFAULT_CHECKPOINT_EVERY_S, Plan, SearchError, SearchOptions, check_address,  # noqa: E402
                       check_data, check_experiment_stored, check_fresh, check_resumable, check_storage, option_default)
from tune.search_lock import LockError, SearchLock  # noqa: E402
from tune.stopping import (STOP, DurationError, disk_full_message, parse_duration, print_stopped,  # noqa: E402
                           resume_command)
from tune.store_checks import check_search_stores  # noqa: E402
from tune.tracking.model_store import LOG_MODELS  # noqa: E402
from tune.tracking.runs import TrackingError, check_tracking_uri  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_search.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Hyperparameter search over the BiLAW trainer (Ray Tune + Optuna + MLflow).",
        epilog="examples:\n"
               "  python tune/run_search.py --space ablation_capacity            # offline, digits, CPU\n"
               "  python tune/run_search.py --space ablation_capacity --workload paper --seeds 3\n"
               "  python tune/run_search.py --space bilaw_tpe --address auto      # on a running Ray cluster\n"
               "  python tune/run_search.py --space ablation_capacity --resume --race 2   # race the top 2 on more seeds\n"
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
    p.add_argument("--log-models", choices=LOG_MODELS, default=option_default("log_models"),
                   help="log trained models to MLflow (mlflow.pytorch, loadable with mlflow.pytorch.load_model): "
                        "the winner's best model (default), every finished trial's best and last model, or none")
    p.add_argument("--register", action="store_true",
                   help="register the winner's model in MLflow's Model Registry under the experiment's name")
    p.add_argument("--system-metrics-interval", type=float, default=option_default("system_metrics_interval"),
                   metavar="SECONDS",
                   help="how often a trial samples the machine's CPU, memory and GPU use, logged per epoch as "
                        f"MLflow system metrics (default {option_default('system_metrics_interval'):g})")
    p.add_argument("--no-system-metrics", action="store_true", help="log no system metrics")
    p.add_argument("--allow-suspect", action="store_true",
                   help="let trials flagged suspect_gradient_masking (PGD-20 well above AutoAttack on the same "
                        "points) win; by default they are shown but never picked")
    p.add_argument("--sampler-seed", type=int, default=option_default("sampler_seed"),
                   help=f"seed of the Optuna sampler (default {option_default('sampler_seed')}): the same seed draws the same trials, another "
                        "seed other ones")
    p.add_argument("--address", help="join the running Ray cluster at this address (e.g. 'auto' or "
                                     "'HEAD_IP:6379'). Without it the search starts its own local Ray and "
                                     "never joins another: not a cluster running on this machine, not one "
                                     "that RAY_ADDRESS or Ray's cluster file (/tmp/ray/ray_current_cluster) "
                                     "names")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///mlruns.db in this folder)")
    p.add_argument("--experiment", help="MLflow experiment and Ray experiment name (default: the space name)")
    p.add_argument("--storage-path", default=option_default("storage_path"),
                   help="where Ray Tune keeps trials' results and checkpoints: a folder (on a cluster, one every "
                        "node mounts at the same path) or a URI (s3://BUCKET/PATH, gs://..., file://...); "
                        f"default ./{option_default('storage_path')}")
    p.add_argument("--state-dir",
                   help="local folder for the driver's own files (Optuna study, driver.json, best_config.yaml); "
                        "default: the experiment's folder in --storage-path when that is a local disk, else "
                        "./ray_results/EXPERIMENT")
    p.add_argument("--resume", action="store_true",
                   help="continue a stopped search (same --space, --storage-path and --experiment): finished "
                        "trials are kept, unfinished ones continue from their last checkpoint; a finished search "
                        "is left as it is and its summary printed again. " + resume_check.RESUME_HELP
                        + "; a changed one is refused, naming old -> new")
    p.add_argument("--time-budget", metavar="DURATION",
                   help="stop the search gracefully once this long has passed since the driver started (e.g. "
                        "3h30m, 45m, 90s), as a SIGTERM would: running trials keep their last checkpoint and "
                        "--resume continues; exit code 75")
    p.add_argument("--break-lock", action="store_true",
                   help="take over the search's lock (driver.lock in its state folder) from a driver on another "
                        "host that is dead; a live driver on this host is never overridden")
    p.add_argument("--race", type=int, metavar="K",
                   help="after the search (with --resume: after a stored one), race its top K configs: each round "
                        "gives every config still in the race one more seed, and drops those distinguishably worse "
                        "than the leader on 3 or more seeds (paired, on the held-out points), until one is left "
                        "or --race-seeds are spent; prints the final paired table")
    p.add_argument("--race-seeds", type=int, default=option_default("race_seeds"), metavar="N",
                   help=f"seeds per config at most in a --race, the search's own included (default "
                        f"{option_default('race_seeds')}, at least 3)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved space and trial resources, then exit")
    p.add_argument("--list-spaces", action="store_true", help="list the shipped search spaces and exit")
    return p


def parse_options(argv: list[str] | None = None) -> tuple[SearchOptions | None, Any]:
    """The search's options from its command line (None for --list-spaces or without --space),
    and argparse's namespace for the few flags that are not a search's (--list-spaces)."""
    args = build_parser().parse_args(argv)
    return (SearchOptions.from_namespace(args) if args.space else None), args


def main(argv: list[str] | None = None) -> int:
    options, args = parse_options(argv)
    if args.list_spaces:
        for name, description in sp.list_spaces():
            print(f"{name:<24} {description}")
        return 0
    if options is None:
        print("error: --space is required (see --list-spaces)", file=sys.stderr)
        return 2
    argv = list(argv if argv is not None else sys.argv[1:])
    lock = None
    try:
        plan = Plan.build(options)
        if options.resume:  # a shaping option left out takes the stored search's value
            options = resume_check.fill_left_out(options, plan.state_dir)
            plan = Plan.build(options)
        if options.race is not None:  # tune/race.py imports Ray: a dry run without --race never does
            from tune.race import check_race

            check_race(plan)
        budget = parse_duration(options.time_budget) if options.time_budget is not None else None
        if options.dry_run or not options.address:  # a cluster's GPUs are known once Ray is up
            plan = plan.with_gpus(float(_local_gpu_count()))
        if options.dry_run:
            print(plan.describe())
            return 0
        if options.resume:
            check_experiment_stored(plan)
        check_search_stores(plan)  # a damaged MLflow or Optuna store: one error before anything is written
        check_data(plan.cfg)
        check_tracking_uri(plan.tracking_uri)
        check_address(options.address)
        check_storage(plan)
        if options.resume:
            check_resumable(plan)  # reads only: the state folder is not made where there is none
        lock = SearchLock(plan.state_dir)  # one driver per search, before anything is written
        lock.acquire(_command(argv), break_lock=options.break_lock)
        if lock.note:
            print(f"note: {lock.note}", flush=True)
        if options.resume:
            note = resume_check.check(plan)
            if note:
                print(note, flush=True)
        else:
            check_fresh(plan)
        resume_check.store(plan)  # on a resume, the options it may change are stored for the next one
    except (sp.SpaceError, ConfigError, SearchError, TrackingError, MissingDatasetError, DamagedFileError,
            LockError, resume_check.ResumeMismatch, DurationError) as exc:
        if lock is not None:
            lock.release()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from tune.search import run_search

    STOP.install()  # installed again once Ray is up (ray.init installs its own SIGTERM handler)
    STOP.start_budget(budget)
    keep_disk_full_tracebacks_out()
    try:
        return run_search(plan, argv)
    except (SearchError, DamagedFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP or the time budget (tune/stopping.py)
        return print_stopped(STOP.reason or "SIGINT", argv)
    except Exception as exc:  # a full disk, however wrapped, is one error line (tune/storage.py)
        cause = disk_full_cause(exc)
        if cause is None:
            raise
        print(f"error: {disk_full_message(plan, cause, resume_command(argv))}", file=sys.stderr)
        return DISK_FULL_EXIT
    finally:
        STOP.uninstall()
        STOP.reason = None
        lock.release()


def _command(argv: list[str]) -> str:
    import shlex

    from tune.tracking.runs import redact_uri

    return "python tune/run_search.py " + shlex.join(redact_uri(a) if "://" in a else a for a in argv)


def _local_gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


if __name__ == "__main__":
    from tune.process_exit import exit_now

    exit_now(main())
