"""The plan of a search: the command line as typed options (`SearchOptions`, every option's
default in one place), resolved and validated into a frozen `Plan` before Ray starts (the space,
workload and base config, seeds, trials, storage, tracking and resources), and the checks of the
environment around it (storage, resumability, data). `run_search.py` parses the command line into
options and nothing past this module sees argparse; `search.py` runs the plan."""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, fields, replace
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


@dataclass(frozen=True)
class SearchOptions:
    """A search's command line, typed: one field per option of run_search.py (the argparse dest),
    with the option's default. None means "not given": the space, the workload or the stored
    search (on --resume) decides."""

    space: str
    workload: str | None = None
    set: tuple[str, ...] = ()          # --set KEY=VALUE overrides of the base config, in order
    num_samples: int | None = None
    seeds: str | None = None           # as typed: a count or a list (tune/spaces/seeds.py)
    max_concurrent: int | None = None
    epochs: int | None = None
    gpus_per_trial: float | None = None
    cpus_per_trial: float | None = None
    checkpoint_every: float | None = None   # None: DEFAULT_CHECKPOINT_EVERY_S
    log_models: str = "winner"
    register: bool = False
    system_metrics_interval: float = DEFAULT_INTERVAL_S
    no_system_metrics: bool = False
    allow_suspect: bool = False
    sampler_seed: int = 0
    address: str | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    storage_path: str = "ray_results"
    state_dir: str | None = None
    resume: bool = False
    time_budget: str | None = None
    break_lock: bool = False
    race: int | None = None
    race_seeds: int = 5
    dry_run: bool = False

    @classmethod
    def from_namespace(cls, args: Any) -> SearchOptions:
        """The options of a parsed command line (an argparse namespace with these dests)."""
        values = {f.name: getattr(args, f.name) for f in fields(cls)}
        return cls(**{**values, "set": tuple(values["set"] or ())})


def option_default(name: str) -> Any:
    """The default of option `name` (its SearchOptions field), for the parser's help and defaults."""
    return next(f.default for f in fields(SearchOptions) if f.name == name)


def parse_seeds(text: str | None, default: list[int]) -> list[int]:
    """--seeds (a count or a list, tune/spaces/seeds.py's rule), else the space's own seeds."""
    if text is None:
        return default
    try:
        return seeds_rule(text)
    except SeedsError as exc:
        raise SearchError(f"--seeds {text!r}: {exc}") from None


@dataclass(frozen=True)
class Plan:
    """Everything a search needs, resolved and validated before Ray starts (`Plan.build`)."""

    options: SearchOptions
    space: sp.SearchSpace
    workload: sp.Workload
    base: dict[str, Any]           # the base config every trial starts from (TrainConfig keys)
    cfg: TrainConfig               # `base`, resolved: what a trial with no searched value runs
    seeds: list[int]
    num_samples: int               # Ray trials: configs x seeds
    sampler_seed: int
    system_metrics_interval_s: float   # 0: no system metrics
    experiment: str
    storage_location: str          # what Ray Tune writes to: a local folder or a URI
    storage: Path | None           # that folder, or None for a URI
    experiment_path: str           # Ray Tune's experiment: storage_location/experiment
    state_dir: Path
    tracking_uri: str
    cpus: float
    gpus: float | None             # GPU share per trial; None until `with_gpus` decides it
    checkpoint_every: float

    @classmethod
    def build(cls, options: SearchOptions) -> Plan:
        """Resolve and check `options`; every problem is a SearchError (or the space's or
        config's own error) naming the option and what is allowed."""
        o = options
        space = sp.load_space(o.space)
        workload = sp.resolve_workload(space, o.workload, sp.load_workloads())
        overrides = parse_overrides(list(o.set))
        if o.epochs is not None:
            overrides["epochs"] = o.epochs
        if "data_dir" in overrides and overrides["data_dir"]:
            overrides["data_dir"] = str(Path(overrides["data_dir"]).expanduser().resolve())
        base = sp.base_config(space, workload, overrides)
        if "seed" in base:
            where = "--set seed" if "seed" in overrides else f"the workload {workload.name!r}'s seed"
            raise SearchError(f"{where}={base['seed']}: a search gives each trial its seed from --seeds; "
                              f"for that seed alone use --seeds '{base['seed']},'")
        sp.check_space_against_config(space, base)
        cfg = TrainConfig.from_dict(base).resolved()
        seeds = parse_seeds(o.seeds, space.seeds)
        if o.register and o.log_models == "none":
            raise SearchError("--register with --log-models none: there would be no model to register")
        if not o.system_metrics_interval > 0:
            raise SearchError(f"--system-metrics-interval {o.system_metrics_interval:g}: must be > 0 seconds "
                              f"(--no-system-metrics turns them off)")
        if o.sampler_seed < 0:
            raise SearchError(f"--sampler-seed {o.sampler_seed}: must be >= 0")
        if space.scheduler and len(seeds) > 1:
            raise SearchError("an ASHA scheduler runs each config once: use one seed with it (--seeds 1)")
        if space.multi_objective and len(seeds) > 1:
            raise SearchError("the nsga2 (two-objective) sampler runs each config once: use one seed (--seeds 1)")
        experiment = o.experiment or space.name
        try:
            location = storage_location(o.storage_path)
            state_dir = state_folder(location, experiment, o.state_dir)
        except StorageError as exc:
            raise SearchError(str(exc)) from None
        cpus = 1.0 if o.cpus_per_trial is None else o.cpus_per_trial
        if cpus <= 0:
            raise SearchError(f"--cpus-per-trial {cpus:g}: must be > 0")
        if o.max_concurrent is not None and o.max_concurrent < 1:
            raise SearchError(f"--max-concurrent {o.max_concurrent}: must be >= 1")
        every = DEFAULT_CHECKPOINT_EVERY_S if o.checkpoint_every is None else o.checkpoint_every
        if not every >= 0:  # also NaN; on --resume, tune/resume_check.py refuses a changed value
            raise SearchError(f"--checkpoint-every {o.checkpoint_every:g}: must be >= 0 seconds "
                              f"(0 = a checkpoint every epoch)")
        return cls(options=o, space=space, workload=workload, base=base, cfg=cfg, seeds=seeds,
                   num_samples=_num_samples(o.num_samples, space, seeds), sampler_seed=o.sampler_seed,
                   system_metrics_interval_s=0.0 if o.no_system_metrics else float(o.system_metrics_interval),
                   experiment=experiment, storage_location=location,
                   storage=None if is_uri(location) else Path(location), experiment_path=join(location, experiment),
                   state_dir=state_dir, tracking_uri=absolute_tracking_uri(o.tracking_uri), cpus=cpus,
                   gpus=_gpus_per_trial(o.gpus_per_trial, space), checkpoint_every=every)

    def resolve_gpus(self, available: float) -> float:
        """GPU share per trial given the GPUs the cluster has; a request it cannot meet is an error."""
        gpus = self.gpus
        if gpus is None:
            gpus = MODELS.facts(self.cfg.model).get("gpu_share", 1.0) if available > 0 else 0.0
        if gpus > available:
            raise SearchError(f"--gpus-per-trial {gpus:g}: the cluster has {available:g} GPUs; "
                              f"ask for at most {available:g} (0 runs trials on CPUs)")
        return gpus

    def with_gpus(self, available: float) -> Plan:
        """This plan with its GPU share decided for a cluster of `available` GPUs."""
        return replace(self, gpus=self.resolve_gpus(available))

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
        most = self.options.max_concurrent
        lines.append(f"resources    {self.cpus:g} CPU and {gpus} GPU per trial"
                     + (f", at most {most} at once" if most else ""))
        lines.append(f"experiment   {self.experiment} -> {self.experiment_path}")
        lines.append(f"state        {self.state_dir} (Optuna study, driver.json, best_config.yaml)")
        lines.append(f"tracking     {redact_uri(self.tracking_uri)}")
        return "\n".join(lines)


def _num_samples(n: int | None, space: sp.SearchSpace, seeds: list[int]) -> int:
    if space.sampler == "grid":
        if n is not None and n != space.grid_size():
            raise SearchError(f"--num-samples {n}: a grid space runs each of its {space.grid_size()} "
                              f"values once per seed; change the seeds with --seeds instead")
        return space.grid_size() * len(seeds)
    n = space.num_samples if n is None else n
    if n is None or n < 1:
        raise SearchError(f"--num-samples {n}: must be >= 1")
    return n * len(seeds)


def _gpus_per_trial(g: float | None, space: sp.SearchSpace) -> float | None:
    if g is None:
        g = space.resources.get("gpu")
    if g is None:
        return None  # decided from what Ray sees, once it is up (or the local CUDA count on dry runs)
    if g < 0 or (g > 1 and g != int(g)):
        raise SearchError(f"--gpus-per-trial {g:g}: allowed are 0 (CPU), a fraction in (0, 1], "
                          f"or a whole number of GPUs")
    return float(g)


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
    """Load the dataset once in the driver so a missing or damaged one fails before Ray starts.
    A dataset without files (digits ships inside scikit-learn) cannot be missing: not loaded."""
    from bilaw.data.datasets import DATASETS

    if DATASETS.facts(cfg.dataset).get("disk") is None:
        return
    DATASETS.get(cfg.dataset)(data_dir=cfg.data_dir)


def git_commit() -> str:
    """The repository's HEAD commit (recorded with every search), or "unknown"."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
