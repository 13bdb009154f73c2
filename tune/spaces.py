"""Search spaces and workloads: the YAML files a researcher edits, loaded and validated here.

A search space (`search_spaces/<name>.yaml`) says what to search: a base config (TrainConfig
overrides), the searched parameters with their distributions, the sampler, metric(s) and mode(s),
the number of samples, the seeds, the scheduler and resources. A workload
(`search_spaces/workloads.yaml`) says where to search: dataset, model, threat model, schedule.
Every problem is a `SpaceError` that names the file, the key, the bad value and what is allowed.

    space = load_space("ablation_capacity")
    workload = resolve_workload(space, None, load_workloads())      # or "paper", or a name
    base = base_config(space, workload, {"epochs": 3})
    check_space_against_config(space, base)
    fn = define_by_run(space, base)      # for OptunaSearch(space=fn, ...)
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml

from bilaw.config import KEYS, ConfigError, TrainConfig, load_yaml_mapping
from bilaw.metrics import METRICS, epoch_metrics
from bilaw.registry import unknown_name_message
from tune.seeds import SeedsError, parse_seeds

if TYPE_CHECKING:  # optuna is only needed by the caller that runs the study
    import optuna

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
WORKLOADS_FILE = SPACES_DIR / "workloads.yaml"
SAMPLERS = ("grid", "tpe", "random", "nsga2")
KINDS = ("choice", "uniform", "loguniform", "int")
MODES = ("max", "min")
TOP_KEYS = ("description", "workload", "paper_workload", "base", "search", "sampler", "metric", "mode",
            "num_samples", "seeds", "scheduler", "resources", "max_concurrent")
WORKLOAD_KEYS = ("description", "config")
PAPER = "paper"  # --workload paper: the space's paper_workload
DEFAULT_WORKLOAD = "digits"

_HINTS = typing.get_type_hints(TrainConfig)
_DEFAULTS = {k: f.default if f.default is not dataclasses.MISSING else f.default_factory() for k, f in KEYS.items()}


class SpaceError(ValueError):
    """An invalid search-space or workload file; the message names the file, key, value, allowed."""


def _err(path: Path | str, key: str, msg: str) -> SpaceError:
    return SpaceError(f"{path}: {key}: {msg}")


# ----- dataclasses -------------------------------------------------------------------------------
@dataclass
class Param:
    """One searched TrainConfig key and its distribution."""

    name: str
    kind: str                              # choice | uniform | loguniform | int
    values: list | None = None             # choice
    low: float | None = None               # uniform / loguniform / int
    high: float | None = None
    when: dict[str, list] | None = None    # sampled only when the trial's value of each key is listed

    def describe(self) -> str:
        text = f"choice {self.values!r}" if self.kind == "choice" else f"{self.kind} [{self.low!r}, {self.high!r}]"
        for key, allowed in (self.when or {}).items():
            text += f" when {key} in {allowed!r}"
        return text


@dataclass
class Workload:
    """Where a search runs: dataset, model, threat model, schedule (TrainConfig overrides)."""

    name: str
    description: str
    config: dict


@dataclass
class SearchSpace:
    """One search: base config, searched params, sampler, objective(s), budget."""

    name: str
    path: Path
    description: str
    workload: str
    paper_workload: str | None
    base: dict
    params: dict[str, Param]
    sampler: str
    metric: list[str]
    mode: list[str]
    num_samples: int | None
    seeds: list[int] = field(default_factory=lambda: [0])
    scheduler: dict | None = None
    resources: dict = field(default_factory=dict)
    max_concurrent: int | None = None

    @property
    def multi_objective(self) -> bool:
        return len(self.metric) > 1

    def grid_values(self) -> dict[str, list]:
        """Name -> values of the grid (grid sampler only); the input of Optuna's GridSampler."""
        if self.sampler != "grid":
            raise SpaceError(f"{self.path}: sampler: {self.sampler!r} has no grid (only sampler 'grid' does)")
        return {p.name: list(p.values or []) for p in self.params.values()}

    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.grid_values().values())

    def samples_per_seed(self) -> int:
        return self.grid_size() if self.sampler == "grid" else int(self.num_samples or 0)


# ----- public API --------------------------------------------------------------------------------
def list_spaces() -> list[tuple[str, str]]:
    """(name, description) of every shipped space, sorted by name."""
    out = []
    for name, path in sorted(_shipped().items()):
        description = _read(path).get("description", "")
        out.append((name, " ".join(str(description).split())))
    return out


def load_workloads(path: Path | None = None) -> dict[str, Workload]:
    """Every workload in `path` (default `WORKLOADS_FILE`), each config validated as a TrainConfig."""
    path = Path(path or WORKLOADS_FILE)
    workloads = {}
    for name, entry in _read(path).items():
        workloads[name] = _parse_workload(path, str(name), entry)
    if not workloads:
        raise _err(path, "(top level)", "no workloads; expected a mapping of name -> {description, config}")
    return workloads


def load_space(name_or_path: str) -> SearchSpace:
    """A shipped space by name (see `list_spaces`), or any YAML file in the same format."""
    path = _find_space(str(name_or_path))
    return _parse_space(path, _read(path), load_workloads())


def resolve_workload(space: SearchSpace, choice: str | None, workloads: dict[str, Workload]) -> Workload:
    """None -> the space's default workload; "paper" -> its paper_workload; else a workload name."""
    if choice is None:
        name, key = space.workload, "workload"
    elif choice == PAPER:
        if not space.paper_workload:
            raise _err(space.path, "paper_workload", f"space {space.name!r} names no paper workload, so "
                       f"--workload paper has nothing to select; give a workload name: {', '.join(sorted(workloads))}")
        name, key = space.paper_workload, "paper_workload"
    else:
        name, key = choice, "--workload"
    if name not in workloads:
        where = "--workload" if key == "--workload" else f"{space.path}: {key}"
        raise SpaceError(f"{where}: " + unknown_name_message("workload", name, [*workloads, PAPER]))
    return workloads[name]


def base_config(space: SearchSpace, workload: Workload, overrides: dict | None = None) -> dict:
    """workload.config, then space.base, then overrides (later wins); validated (ConfigError)."""
    merged = {**workload.config, **space.base, **(overrides or {})}
    TrainConfig.from_dict(merged).resolved()
    return merged


def check_space_against_config(space: SearchSpace, base: dict) -> None:
    """Each choice value and both bounds of each param, on top of `base`, must give a valid config.

    A param with `when` is tried with every listed value of its condition keys; one whose
    condition can never hold (an unsearched key whose base value is not listed) is an error.
    """
    _check_asha_epochs(space, base)
    for p in space.params.values():
        _check_reachable(space, p, base)
        probes = p.values if p.kind == "choice" else [p.low, p.high]
        for value, cond in itertools.product(probes, _when_assignments(p)):
            try:
                TrainConfig.from_dict({**base, **cond, p.name: value}).resolved()
            except ConfigError as exc:
                extra = "".join(f" with {k}={v!r}" for k, v in cond.items())
                raise _err(space.path, f"search.{p.name}", f"value {value!r}{extra} gives an invalid config: "
                           + "; ".join(exc.errors)) from None


class DefineByRun:
    """An Optuna define-by-run function suggesting every param of the space (a class, not a
    closure, because Ray pickles the searcher into its experiment snapshots).

    Unconditioned params come first (file order), then conditioned ones, each suggested only if
    its `when` holds for the value of its keys suggested in this trial, else their value in `base`
    (else the TrainConfig default). Returns None: constants come from Tune's param_space.
    """

    def __init__(self, space: SearchSpace, base: dict) -> None:
        params = list(space.params.values())
        self.ordered = [p for p in params if not p.when] + [p for p in params if p.when]
        self.base = dict(base)

    def __call__(self, trial: "optuna.trial.Trial") -> dict | None:
        chosen: dict[str, Any] = {}
        for p in self.ordered:
            if p.when and not _holds(p.when, chosen, self.base):
                continue
            if p.kind == "choice":
                chosen[p.name] = trial.suggest_categorical(p.name, p.values)
            elif p.kind == "int":
                chosen[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high))
            else:
                chosen[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.kind == "loguniform")
        return None


def define_by_run(space: SearchSpace, base: dict) -> Callable[["optuna.trial.Trial"], dict | None]:
    """The space as an Optuna define-by-run callable (picklable)."""
    return DefineByRun(space, base)


# ----- reading files -----------------------------------------------------------------------------
def _read(path: Path) -> dict:
    try:
        return load_yaml_mapping(path)
    except ConfigError as exc:  # missing file / malformed YAML (file, line, column) / not a mapping
        raise SpaceError("; ".join(exc.errors)) from None


def _shipped() -> dict[str, Path]:
    return {p.stem: p for p in SPACES_DIR.glob("*.yaml") if p != WORKLOADS_FILE}


def _find_space(name_or_path: str) -> Path:
    shipped = _shipped()
    if name_or_path in shipped:
        return shipped[name_or_path]
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.suffix in (".yaml", ".yml") or "/" in name_or_path:
        raise SpaceError(f"search space file {name_or_path!r} does not exist")
    raise SpaceError(unknown_name_message("search space", name_or_path, shipped)
                     + " (or give the path of a YAML file)")


def _parse_workload(path: Path, name: str, entry: Any) -> Workload:
    if name == PAPER:
        raise _err(path, name, "'paper' is reserved (--workload paper selects a space's paper_workload)")
    if not isinstance(entry, dict):
        raise _err(path, name, f"{entry!r} is not a mapping; expected {{description: ..., config: {{...}}}}")
    for key in entry:
        if key not in WORKLOAD_KEYS:
            raise _err(path, f"{name}.{key}", unknown_name_message("workload key", key, WORKLOAD_KEYS))
    description = _description(path, entry.get("description"), name + ".description")
    config = entry.get("config")
    if not isinstance(config, dict) or not config:
        raise _err(path, f"{name}.config", f"{config!r} is not a non-empty mapping of TrainConfig keys")
    try:
        TrainConfig.from_dict(config).resolved()
    except ConfigError as exc:
        raise _err(path, f"{name}.config", "; ".join(exc.errors)) from None
    return Workload(name, description, copy.deepcopy(config))  # YAML anchors share lists


def _description(path: Path, value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _err(path, key, f"{value!r}: a non-empty text is required")
    return " ".join(value.split())


def _parse_space(path: Path, data: dict, workloads: dict[str, Workload]) -> SearchSpace:
    for key in data:
        if key not in TOP_KEYS:
            raise _err(path, str(key), unknown_name_message("top-level key", key, TOP_KEYS))
    description = _description(path, data.get("description"), "description")
    workload = _workload_name(path, data, "workload", workloads, DEFAULT_WORKLOAD)
    paper_workload = _workload_name(path, data, "paper_workload", workloads, None)
    base = _parse_base(path, data.get("base"))
    params = _parse_search(path, data.get("search"))
    sampler = data.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise _err(path, "sampler", unknown_name_message("sampler", sampler, SAMPLERS))
    metric, mode = _parse_objectives(path, data, sampler)
    if sampler == "grid":
        _check_grid(path, params)
    seeds = _parse_seeds(path, data.get("seeds", [0]))
    space = SearchSpace(
        name=path.stem, path=path, description=description, workload=workload, paper_workload=paper_workload,
        base=base, params=params, sampler=sampler, metric=metric, mode=mode,
        num_samples=None, seeds=seeds, scheduler=_parse_scheduler(path, data.get("scheduler"), sampler, seeds, metric),
        resources=_parse_resources(path, data.get("resources")),
        max_concurrent=_positive_int(path, "max_concurrent", data.get("max_concurrent"), optional=True),
    )
    space.num_samples = _parse_num_samples(path, data.get("num_samples"), space)
    return space


def _workload_name(path: Path, data: dict, key: str, workloads: dict, default: str | None) -> str | None:
    name = data.get(key, default)
    if name is None:
        return None
    if name not in workloads:
        raise _err(path, key, unknown_name_message("workload", name, workloads))
    return name


def _parse_base(path: Path, base: Any) -> dict:
    if base is None:
        return {}
    if not isinstance(base, dict):
        raise _err(path, "base", f"{base!r} is not a mapping of TrainConfig keys")
    for key in base:
        _check_key(path, f"base.{key}", key)
    return dict(base)


def _check_key(path: Path, where: str, key: Any) -> None:
    if key not in KEYS:
        raise _err(path, where, unknown_name_message("config key", key, KEYS))
    if key == "seed":
        raise _err(path, where, "'seed' is set per trial by the top-level `seeds` list, e.g. seeds: [0, 1, 2]")


# ----- search params -----------------------------------------------------------------------------
_DIST_HELP = ("write {choice: [a, b]}, {uniform: [low, high]}, {loguniform: [low, high]} or {int: [low, high]}, "
              "optionally with when: {method: [...]}")


def _parse_search(path: Path, search: Any) -> dict[str, Param]:
    if not isinstance(search, dict) or not search:
        raise _err(path, "search", f"{search!r}: a non-empty mapping of TrainConfig key -> distribution is required")
    params = {str(name): _parse_param(path, name, spec) for name, spec in search.items()}
    for p in params.values():
        for key, allowed in (p.when or {}).items():
            other = params.get(key)
            if other is None:
                continue
            if other.when:
                raise _err(path, f"search.{p.name}.when.{key}", f"{key!r} is itself conditional; a condition "
                           "may only name an unconditioned searched key or a constant one")
            if other.kind == "choice":
                for value in allowed:
                    if not any(_same(value, v) for v in other.values):
                        raise _err(path, f"search.{p.name}.when.{key}",
                                   f"{value!r} is not among the searched values {other.values!r} of {key!r}")
    return params


def _parse_param(path: Path, name: Any, spec: Any) -> Param:
    key = f"search.{name}"
    _check_key(path, key, name)
    if not isinstance(spec, dict):
        raise _err(path, key, f"{spec!r} is not a distribution; {_DIST_HELP}")
    kinds = [k for k in spec if k != "when"]
    if len(kinds) != 1:
        raise _err(path, key, f"{kinds!r}: exactly one distribution is needed; {_DIST_HELP}")
    kind = kinds[0]
    if kind not in KINDS:
        raise _err(path, f"{key}.{kind}", unknown_name_message("distribution", kind, KINDS))
    when = _parse_when(path, name, spec["when"]) if "when" in spec else None
    if kind == "choice":
        return Param(name, kind, values=_parse_choice(path, name, spec[kind]), when=when)
    low, high = _parse_bounds(path, f"{key}.{kind}", kind, spec[kind])
    return Param(name, kind, low=low, high=high, when=when)


def _parse_choice(path: Path, name: str, values: Any) -> list:
    where = f"search.{name}.choice"
    if not isinstance(values, list) or not values:
        raise _err(path, where, f"{values!r}: a non-empty list of values is required, e.g. [a, b]")
    out = [_categorical(path, where, name, v) for v in values]
    for i, v in enumerate(out):
        if any(_same(v, w) for w in out[:i]):
            raise _err(path, where, f"{v!r} is listed twice; each value must appear once")
    return out


def _categorical(path: Path, where: str, name: str, value: Any) -> Any:
    """A choice value as a type Optuna accepts (None/bool/int/float/str), matching the key's type:
    128 -> "128" for a string key, 6 -> 6.0 for a float key, [0.3, 0.6] -> "[0.3, 0.6]" for a list key
    (TrainConfig reads that string back as a list)."""
    hint = _HINTS[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args and typing.get_origin(hint) is not list else hint
    if isinstance(value, (list, tuple)):
        if typing.get_origin(base) is not list:
            raise _err(path, where, f"{value!r} is a list, but {name!r} takes a single value")
        return yaml.safe_dump(list(value), default_flow_style=True).strip()
    if isinstance(value, dict):
        raise _err(path, where, f"{value!r}: a choice value must be a single value or a list")
    if value is None or isinstance(value, bool):
        return value
    if base is str and isinstance(value, (int, float)):
        return str(value)
    if base is float and isinstance(value, int):
        return float(value)
    return value


def _parse_bounds(path: Path, where: str, kind: str, bounds: Any) -> tuple[float, float]:
    def number(v: Any) -> float | None:
        if isinstance(v, bool):
            return None
        try:
            return float(v)  # YAML 1.1 reads 1e-4 (no dot) as a string
        except (TypeError, ValueError):
            return None

    nums = [number(v) for v in bounds] if isinstance(bounds, list) and len(bounds) == 2 else [None]
    if None in nums or not all(math.isfinite(n) for n in nums):
        raise _err(path, where, f"{bounds!r}: expected [low, high], two finite numbers")
    low, high = nums
    if kind == "int":
        if low != int(low) or high != int(high):
            raise _err(path, where, f"{bounds!r}: int bounds must be whole numbers")
        low, high = int(low), int(high)
    if low >= high:
        raise _err(path, where, f"{bounds!r}: low {low!r} >= high {high!r} (allowed: low < high)")
    if kind == "loguniform" and low <= 0:
        raise _err(path, where, f"{bounds!r}: loguniform needs low > 0, got {low!r}")
    return low, high


def _parse_when(path: Path, name: str, when: Any) -> dict[str, list]:
    where = f"search.{name}.when"
    if not isinstance(when, dict) or not when:
        raise _err(path, where, f"{when!r}: expected a mapping of config key -> list, e.g. {{method: [mail]}}")
    out = {}
    for key, allowed in when.items():
        if key not in KEYS:
            raise _err(path, f"{where}.{key}", unknown_name_message("config key", key, KEYS))
        if key == name:
            raise _err(path, f"{where}.{key}", "a parameter cannot be conditioned on itself")
        allowed = allowed if isinstance(allowed, list) else [allowed]
        if not allowed or any(isinstance(v, (list, dict)) for v in allowed):
            raise _err(path, f"{where}.{key}", f"{when[key]!r}: a non-empty list of single values is required")
        out[str(key)] = allowed
    return out


def _check_grid(path: Path, params: dict[str, Param]) -> None:
    for p in params.values():
        if p.kind != "choice":
            raise _err(path, f"search.{p.name}", f"sampler 'grid' needs choice lists; {p.kind!r} is not allowed "
                       "(use sampler tpe or random, or a choice list)")
        if p.when:
            raise _err(path, f"search.{p.name}.when", f"{p.when!r}: sampler 'grid' cannot take a conditional "
                       "parameter (every grid point sets every parameter); use tpe or random")


# ----- objectives, budget, scheduler, resources --------------------------------------------------
def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _parse_objectives(path: Path, data: dict, sampler: str) -> tuple[list[str], list[str]]:
    metric = _as_list(data.get("metric", "best_val_pgd_acc"))
    mode = _as_list(data.get("mode", "max"))
    for m in metric:
        if m not in METRICS:
            raise _err(path, "metric", unknown_name_message("metric", m, METRICS.names()))
    for m in mode:
        if m not in MODES:
            raise _err(path, "mode", f"{m!r} is not a mode; allowed: max, min")
    if len(metric) != len(mode):
        raise _err(path, "mode", f"{data.get('mode')!r} has {len(mode)} value(s) but metric "
                   f"{data.get('metric')!r} has {len(metric)}; give one mode per metric")
    want = 2 if sampler == "nsga2" else 1
    if len(metric) != want:
        raise _err(path, "metric", f"{data.get('metric')!r}: sampler {sampler!r} needs exactly {want} "
                   f"metric{'s' if want > 1 else ''}" + (" (two objectives, e.g. [best_val_pgd_acc, val_clean_acc])"
                                                         if want == 2 else " (nsga2 takes two)"))
    if len(set(metric)) != len(metric):
        raise _err(path, "metric", f"{metric!r} repeats a metric")
    return metric, mode


def _positive_int(path: Path, key: str, value: Any, optional: bool = False, minimum: int = 1) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _err(path, key, f"{value!r}: an integer >= {minimum} is required")
    return value


def _parse_num_samples(path: Path, value: Any, space: SearchSpace) -> int | None:
    if space.sampler == "grid":
        if value is not None and _positive_int(path, "num_samples", value) != space.grid_size():
            raise _err(path, "num_samples", f"{value!r}: with sampler 'grid' it must equal the grid size "
                       f"{space.grid_size()} (each grid point runs once per seed) or be left out")
        return None
    if value is None:
        raise _err(path, "num_samples", f"missing: sampler {space.sampler!r} needs a number of samples >= 1")
    return _positive_int(path, "num_samples", value)


def _parse_seeds(path: Path, seeds: Any) -> list[int]:
    try:
        return parse_seeds(seeds, allow_count=False)
    except SeedsError as exc:
        raise _err(path, "seeds", f"{seeds!r}: {exc}") from None


def _parse_scheduler(path: Path, value: Any, sampler: str, seeds: list[int], metric: list[str]) -> dict | None:
    if value is None or value == "none":
        return None
    if value == "asha":
        value = {"asha": None}
    if not isinstance(value, dict) or list(value) != ["asha"]:
        raise _err(path, "scheduler", f"{value!r}: allowed: none, asha, or "
                   "{asha: {grace_period: 2, reduction_factor: 2}}")
    opts = value["asha"] or {}
    if not isinstance(opts, dict):
        raise _err(path, "scheduler.asha", f"{opts!r} is not a mapping of grace_period, reduction_factor")
    for key in opts:
        if key not in ("grace_period", "reduction_factor"):
            raise _err(path, f"scheduler.asha.{key}",
                       unknown_name_message("ASHA option", key, ("grace_period", "reduction_factor")))
    grace = _positive_int(path, "scheduler.asha.grace_period", opts.get("grace_period", 1))
    factor = _positive_int(path, "scheduler.asha.reduction_factor", opts.get("reduction_factor", 2), minimum=2)
    if sampler == "nsga2":
        raise _err(path, "scheduler", "asha with sampler 'nsga2': stopped trials would enter the Pareto front "
                   "with their early values; use scheduler: none")
    if len(seeds) > 1:
        raise _err(path, "scheduler", f"asha with seeds {seeds!r}: ASHA would compare seeds of one config as "
                   "rivals; use one seed or scheduler: none")
    if metric[0] not in epoch_metrics():
        raise _err(path, "scheduler", f"asha needs a per-epoch metric ({', '.join(epoch_metrics())}); "
                   f"{metric[0]!r} is only reported after training")
    return {"asha": {"grace_period": grace, "reduction_factor": factor}}


def _parse_resources(path: Path, value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _err(path, "resources", f"{value!r}: expected a mapping like {{cpu: 1, gpu: 0.5}}")
    out = {}
    for key, amount in value.items():
        if key not in ("cpu", "gpu"):
            raise _err(path, f"resources.{key}", unknown_name_message("resource", key, ("cpu", "gpu")))
        number = isinstance(amount, (int, float)) and not isinstance(amount, bool)
        if not number or not (amount >= 0 if key == "gpu" else amount > 0):
            raise _err(path, f"resources.{key}", f"{amount!r}: a number {'>= 0' if key == 'gpu' else '> 0'} "
                       "is required")
        out[key] = float(amount)
    return out


# ----- conditions --------------------------------------------------------------------------------
def _same(a: Any, b: Any) -> bool:
    """Equal as numbers (6 and 6.0), as booleans, or else as text ("1" and 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return str(a).lower() == str(b).lower()
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return str(a) == str(b)


def _holds(when: dict[str, list], chosen: dict, base: dict) -> bool:
    for key, allowed in when.items():
        current = chosen[key] if key in chosen else base.get(key, _DEFAULTS[key])
        if not any(_same(current, v) for v in allowed):
            return False
    return True


def _when_assignments(p: Param) -> list[dict]:
    """Every combination of the condition keys' listed values ([{}] without a condition)."""
    keys = list(p.when or {})
    return [dict(zip(keys, combo)) for combo in itertools.product(*(p.when[k] for k in keys))] if keys else [{}]


def _check_reachable(space: SearchSpace, p: Param, base: dict) -> None:
    for key, allowed in (p.when or {}).items():
        if key in space.params:
            continue
        current = base.get(key, _DEFAULTS[key])
        if not any(_same(current, v) for v in allowed):
            raise _err(space.path, f"search.{p.name}.when.{key}", f"never holds: {key} is {current!r} in the "
                       f"base config and not searched, not one of {allowed!r}")


def _check_asha_epochs(space: SearchSpace, base: dict) -> None:
    """Ray's ASHA asserts grace_period <= max_t (the trial's epochs)."""
    asha = (space.scheduler or {}).get("asha")
    if not asha:
        return
    p = space.params.get("epochs")
    epochs = TrainConfig.from_dict(base).epochs if p is None else min(p.values) if p.values else p.low
    if asha["grace_period"] > epochs:
        raise _err(space.path, "scheduler.asha.grace_period", f"{asha['grace_period']} > epochs {epochs!r} of the "
                   "config; ASHA needs grace_period <= epochs (lower it, or train longer)")
