"""The plan of a search: every command-line value, the space, workload and base config resolved
and validated before Ray starts (`Plan`), and the checks of the environment around it (storage,
resumability, data). `run_search.py` builds it; `search.py` runs it."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from bilaw.config.train_config import TrainConfig, parse_overrides
from bilaw.models import MODELS
from tune import spaces as sp
from tune.spaces.seeds import SeedsError
from tune.spaces.seeds import parse_seeds as seeds_rule
from tune.state_files import OPTUNA_DB, check_study, read_driver_record
from tune.storage import StorageError, is_uri, join, state_folder, storage_location
from tune.system_metrics import DEFAULT_INTERVAL_S
from tune.tracking.runs import absolute_tracking_uri, redact_uri

DEFAULT_CHECKPOINT_EVERY_S = 30.0  # seconds between the checkpoints a trial hands Ray


class SearchError(ValueError):
    """A bad command-line value or environment problem found before Ray starts."""


def parse_seeds(text: str | None, default: list[int]) -> list[int]:
    """--seeds (a count or a list, tune/spaces/seeds.py's rule), else the space's own seeds."""
    if text is None:
        return default
    try:
        return seeds_rule(text)
    except SeedsError as exc:
        raise SearchError(f"--seeds {text!r}: {exc}") from None


class Plan:
    """Everything a search needs, resolved and validated before Ray starts."""

    def __init__(self, args: Any) -> None:
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
        if "seed" in self.base:
            where = "--set seed" if "seed" in overrides else f"the workload {self.workload.name!r}'s seed"
            raise SearchError(f"{where}={self.base['seed']}: a search gives each trial its seed from --seeds; "
                              f"for that seed alone use --seeds '{self.base['seed']},'")
        sp.check_space_against_config(self.space, self.base)
        self.cfg = TrainConfig.from_dict(self.base).resolved()
        self.seeds = parse_seeds(args.seeds, self.space.seeds)
        if getattr(args, "register", False) and getattr(args, "log_models", "winner") == "none":
            raise SearchError("--register with --log-models none: there would be no model to register")
        interval = getattr(args, "system_metrics_interval", DEFAULT_INTERVAL_S)
        if not interval > 0:
            raise SearchError(f"--system-metrics-interval {interval:g}: must be > 0 seconds (--no-system-metrics "
                              f"turns them off)")
        self.system_metrics_interval_s = 0.0 if getattr(args, "no_system_metrics", False) else float(interval)
        self.sampler_seed = getattr(args, "sampler_seed", 0)
        if self.sampler_seed < 0:
            raise SearchError(f"--sampler-seed {self.sampler_seed}: must be >= 0")
        self.num_samples = self._num_samples()
        self._check_race()
        if self.space.scheduler and len(self.seeds) > 1:
            raise SearchError("an ASHA scheduler runs each config once: use one seed with it (--seeds 1)")
        if self.space.multi_objective and len(self.seeds) > 1:
            raise SearchError("the nsga2 (two-objective) sampler runs each config once: use one seed (--seeds 1)")
        self.experiment = args.experiment or self.space.name
        try:
            self.storage_location = storage_location(args.storage_path)  # what Ray Tune writes to
            self.state_dir = state_folder(self.storage_location, self.experiment, getattr(args, "state_dir", None))
        except StorageError as exc:
            raise SearchError(str(exc)) from None
        self.experiment_path = join(self.storage_location, self.experiment)  # Ray Tune's experiment
        self.storage = None if is_uri(self.storage_location) else Path(self.storage_location)
        self.tracking_uri = absolute_tracking_uri(args.tracking_uri)
        self.cpus = 1.0 if args.cpus_per_trial is None else args.cpus_per_trial
        if self.cpus <= 0:
            raise SearchError(f"--cpus-per-trial {self.cpus:g}: must be > 0")
        self.gpus = self._gpus_per_trial()
        if args.max_concurrent is not None and args.max_concurrent < 1:
            raise SearchError(f"--max-concurrent {args.max_concurrent}: must be >= 1")
        every = args.checkpoint_every  # on --resume, tune/resume_check.py refuses a changed value
        self.checkpoint_every = DEFAULT_CHECKPOINT_EVERY_S if every is None else every
        if not self.checkpoint_every >= 0:  # also NaN
            raise SearchError(f"--checkpoint-every {every:g}: must be >= 0 seconds (0 = a checkpoint every epoch)")

    def _check_race(self) -> None:
        """--race K / --race-seeds N (tune/race.py) against the space."""
        from tune.results.per_point_runs import can_pair

        k, most = getattr(self.args, "race", None), getattr(self.args, "race_seeds", 5)
        if k is None:
            return
        if k < 2:
            raise SearchError(f"--race {k}: a race needs at least 2 configs")
        from tune.results.paired import MIN_SEEDS_TO_DROP

        if most < MIN_SEEDS_TO_DROP:
            raise SearchError(f"--race-seeds {most}: a race drops a config only once it is distinguishably worse on "
                              f"{MIN_SEEDS_TO_DROP} seeds, so give at least {MIN_SEEDS_TO_DROP}")
        if most <= len(self.seeds):
            raise SearchError(f"--race-seeds {most}: the search already runs {len(self.seeds)} seed(s) per config; "
                              f"a race adds seeds, so give more than {len(self.seeds)}")
        if self.space.multi_objective:
            raise SearchError("--race: a two-objective (nsga2) search has a front, not one winner to race")
        if not can_pair(self.space.metric[0]):
            raise SearchError(f"--race: the space ranks by {self.space.metric[0]}, which has no per-point results "
                              f"to pair; a race needs best_val_pgd_acc or a test accuracy")

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
            self.gpus = MODELS.facts(self.cfg.model).get("gpu_share", 1.0) if available > 0 else 0.0
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
                 f"scheduler    {s.scheduler or 'none'}; sampler seed {self.sampler_seed}",
                 *([f"first trials {s.first_trials}"] if s.first_trials else []),
                 "searched:"]
        lines += [f"  {p.name:<18} {p.describe()}" for p in s.params.values()]
        lines.append("base config (every trial):")
        base = self.cfg.to_dict()
        lines += [f"  {k:<22} {base[k]!r}" for k in base]
        gpus = "decided at start" if self.gpus is None else f"{self.gpus:g}"
        lines.append(f"resources    {self.cpus:g} CPU and {gpus} GPU per trial"
                     + (f", at most {self.args.max_concurrent} at once" if self.args.max_concurrent else ""))
        lines.append(f"experiment   {self.experiment} -> {self.experiment_path}")
        lines.append(f"state        {self.state_dir} (Optuna study, driver.json, best_config.yaml)")
        lines.append(f"tracking     {redact_uri(self.tracking_uri)}")
        return "\n".join(lines)


def _check_writable(path: Path, flag: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise SearchError(f"{flag} {str(path)!r} cannot be written ({exc.strerror or exc}); "
                          f"pass a writable folder") from None


def check_storage(plan: Plan) -> None:
    """The storage (a local folder; a URI is checked once Ray is up) and the state folder can be written."""
    if plan.storage is not None:
        _check_writable(plan.storage, "--storage-path")
    _check_writable(plan.state_dir, "--state-dir")


def check_fresh(plan: Plan) -> None:
    from tune.search_lock import LOCK_FILE

    for folder in {plan.state_dir, *([plan.storage / plan.experiment] if plan.storage is not None else [])}:
        if folder.exists() and any(p.name != LOCK_FILE for p in folder.iterdir()):
            raise SearchError(f"experiment {plan.experiment!r} already has results in {folder}; use --experiment "
                              f"NEW_NAME for a new search or remove that folder")


def check_experiment_stored(plan: Plan) -> None:
    """--resume: the storage holds the Ray Tune experiment (checked first: with nothing there, that
    is the whole answer, whatever else is missing)."""
    if plan.storage is not None and not any((plan.storage / plan.experiment).glob("experiment_state-*.json")):
        raise SearchError(f"--resume: nothing to resume for experiment {plan.experiment!r}: "
                          f"{plan.storage / plan.experiment} holds no Ray Tune experiment state (check "
                          f"--storage-path and --experiment)")


def check_resumable(plan: Plan) -> None:
    folder = plan.state_dir
    check_experiment_stored(plan)
    check_study(folder / OPTUNA_DB, plan.experiment,
                "a search cannot resume without its Optuna study: start a new search with --experiment NEW_NAME "
                "(the finished trials stay in MLflow)")
    read_driver_record(folder)  # a damaged record stops the resume here, before Ray starts


ADDRESS_TIMEOUT_S = 30.0


def check_address(address: str | None, timeout_s: float | None = None) -> None:
    """A --address HOST:PORT must answer (a TCP connection to the cluster's GCS port) within
    `timeout_s`, before Ray is asked to join it; "auto" is left to Ray, which fails at once when
    it finds no cluster."""
    import socket
    import time

    if not address or address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise SearchError(f"--address {address!r}: expected HOST:PORT of the head node (e.g. 10.0.0.5:6379) or auto")
    timeout_s = ADDRESS_TIMEOUT_S if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=min(5.0, timeout_s)):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise SearchError(f"--address {address}: no Ray cluster answers there within {timeout_s:g} s "
                                  f"({exc.strerror or exc}); start its head with `ray start --head --port {port}` "
                                  f"or check the address") from None
            time.sleep(1.0)


def check_data(cfg: TrainConfig) -> None:
    """Load the dataset once in the driver so a missing one fails before Ray starts."""
    from bilaw.data.datasets import DATASETS

    DATASETS.get(cfg.dataset)(data_dir=cfg.data_dir)


def git_commit() -> str:
    """The repository's HEAD commit (recorded with every search), or "unknown"."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
