"""Reading a search-space or workload file and turning it into the dataclasses of
tune/spaces/schema.py, validating every entry (tune/spaces/catalog.py finds the files and is the API).

Errors are collected, not raised one at a time: loading a file records every problem it finds
and raises one `SpaceError` that lists them all (file, key, bad value, what is allowed), as
`TrainConfig` does for a config. The rule for what is still checked after a problem:

* a file that is missing, is not valid YAML or is not a mapping stops at once (there is nothing
  to check);
* otherwise every part of the file is checked, and a check is skipped only when a value it
  depends on was itself reported as bad, so that no error is a guess built on another one: a
  param whose key is not a config key (or `seed`) or whose spec is not a mapping is not looked
  into further; an unknown sampler skips the checks that depend on the sampler (the grid rules,
  the number of metrics, asha with nsga2, num_samples against the grid); an unknown metric or
  bad seeds skip the asha checks that read them; a bad search skips the grid-size check.
"""
from __future__ import annotations

import copy
import math
import typing
from pathlib import Path
from typing import Any

import yaml

from bilaw.config.train_config import KEYS, TYPE_HINTS, ConfigError, TrainConfig, coerce, load_yaml_mapping
from bilaw.metrics import BEST_VAL_PGD_ACC, METRICS, epoch_metrics
from bilaw.registry import unknown_name_message
from tune.spaces.conditions import check_when_references, parse_first_trials, parse_when
from tune.spaces.schema import (DEFAULT_WORKLOAD, KINDS, MODES, PAPER, SAMPLERS, TOP_KEYS, WORKLOAD_KEYS, Param,
                                Problems, SearchSpace, SpaceError, Workload, grid_of)
from tune.spaces.seeds import SeedsError, parse_seeds

_BAD = object()  # a choice value that was reported as a problem


# ----- reading files -----------------------------------------------------------------------------
def read_mapping(path: Path) -> dict:
    """The YAML mapping in `path`; a missing, unreadable, binary or empty file, a folder,
    malformed YAML or a non-mapping stops here."""
    try:
        data = load_yaml_mapping(path)
    except ConfigError as exc:  # missing, unreadable or binary file / malformed YAML (file, line, column) / ...
        raise SpaceError("; ".join(exc.errors)) from None
    if not data:
        raise SpaceError(f"{path}: the file is empty (no YAML mapping in it); write the file again, or restore a "
                         f"shipped one with `git checkout search_spaces/`")
    return data


def parse_workloads(path: Path, data: dict) -> dict[str, Workload]:
    """The workloads of file `path` read as `data`; one SpaceError lists the problems of all."""
    problems, workloads = Problems(path), {}
    for name, entry in data.items():
        workload = _parse_workload(problems, str(name), entry)
        if workload is not None:
            workloads[name] = workload
    if not data:
        problems.add("(top level)", "no workloads; expected a mapping of name -> {description, config}")
    problems.raise_if_any()
    return workloads


def _parse_workload(problems: Problems, name: str, entry: Any) -> Workload | None:
    if name == PAPER:
        problems.add(name, "'paper' is reserved (--workload paper selects a space's paper_workload)")
        return None
    if not isinstance(entry, dict):
        problems.add(name, f"{entry!r} is not a mapping; expected {{description: ..., config: {{...}}}}")
        return None
    start = problems.count()
    for key in entry:
        if key not in WORKLOAD_KEYS:
            problems.add(f"{name}.{key}", unknown_name_message("workload key", key, WORKLOAD_KEYS))
    description = _description(problems, entry.get("description"), name + ".description")
    config = entry.get("config")
    if not isinstance(config, dict) or not config:
        problems.add(f"{name}.config", f"{config!r}: a non-empty mapping of TrainConfig keys is required, e.g. "
                     "{dataset: digits, epochs: 2}")
    else:
        try:
            TrainConfig.from_dict(config).resolved()
        except ConfigError as exc:
            for error in exc.errors:
                problems.add(f"{name}.config", error)
    if problems.count() > start:
        return None
    return Workload(name, description, copy.deepcopy(config))  # YAML anchors share lists


def _description(problems: Problems, value: Any, key: str) -> str | None:
    if not isinstance(value, str) or not value.strip():
        problems.add(key, f"{value!r}: a non-empty text is required")
        return None
    return " ".join(value.split())


def parse_space(path: Path, data: dict, workloads: dict[str, Workload]) -> SearchSpace:
    """The space of file `path` read as `data`; one SpaceError lists its problems."""
    problems = Problems(path)
    for key in data:
        if key not in TOP_KEYS:
            problems.add(str(key), unknown_name_message("top-level key", key, TOP_KEYS))
    description = _description(problems, data.get("description"), "description")
    workload = _workload_name(problems, data, "workload", workloads, DEFAULT_WORKLOAD)
    paper_workload = _workload_name(problems, data, "paper_workload", workloads, None)
    base = _parse_base(problems, data.get("base"))
    start = problems.count()
    params = _parse_search(problems, data.get("search"))
    search_ok = problems.count() == start
    sampler = data.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        problems.add("sampler", unknown_name_message("sampler", sampler, SAMPLERS))
        sampler = None
    metric, mode = _parse_objectives(problems, data, sampler)
    grid_ok = sampler == "grid" and _check_grid(problems, params) and search_ok
    grid_size = math.prod(len(v) for v in grid_of(params).values()) if grid_ok else None
    seeds = _parse_seeds(problems, data.get("seeds", [0]))
    scheduler = _parse_scheduler(problems, data.get("scheduler"), sampler, seeds, metric)
    resources = _parse_resources(problems, data.get("resources"))
    max_concurrent = _positive_int(problems, "max_concurrent", data.get("max_concurrent"), optional=True)
    num_samples = _parse_num_samples(problems, data.get("num_samples"), sampler, grid_size)
    first_trials = parse_first_trials(problems, data.get("first_trials"), params, base, sampler) if search_ok else []
    problems.raise_if_any()
    return SearchSpace(
        name=path.stem, path=path, description=description, workload=workload, paper_workload=paper_workload,
        base=base, params=params, sampler=sampler, metric=metric, mode=mode, num_samples=num_samples,
        seeds=seeds, scheduler=scheduler, resources=resources, max_concurrent=max_concurrent,
        first_trials=first_trials,
    )


def _workload_name(problems: Problems, data: dict, key: str, workloads: dict, default: str | None) -> str | None:
    name = data.get(key, default)
    if name is None:
        return None
    if name not in workloads:
        problems.add(key, unknown_name_message("workload", name, workloads))
        return None
    return name


def _parse_base(problems: Problems, base: Any) -> dict:
    if base is None:
        return {}
    if not isinstance(base, dict):
        problems.add("base", f"{base!r} is not a mapping of TrainConfig keys")
        return {}
    for key in base:
        _check_key(problems, f"base.{key}", key)
    return dict(base)


def _check_key(problems: Problems, where: str, key: Any) -> bool:
    """Whether `key` may be set by a space: a config key other than `seed` (recorded if not)."""
    if key not in KEYS:
        problems.add(where, unknown_name_message("config key", key, KEYS))
        return False
    if key == "seed":
        problems.add(where, "'seed' is set per trial by the top-level `seeds` list, e.g. seeds: [0, 1, 2]")
        return False
    return True


# ----- search params -----------------------------------------------------------------------------
_DIST_HELP = ("write {choice: [a, b]}, {uniform: [low, high]}, {loguniform: [low, high]} or {int: [low, high]}, "
              "optionally with when: {method: [...]}")


def _parse_search(problems: Problems, search: Any) -> dict[str, Param]:
    """The params that are valid; each invalid one is recorded and left out."""
    if not isinstance(search, dict) or not search:
        problems.add("search", f"{search!r}: a non-empty mapping of TrainConfig key -> distribution is required")
        return {}
    params = {}
    for name, spec in search.items():
        param = _parse_param(problems, name, spec)
        if param is not None:
            params[str(name)] = param
    check_when_references(problems, params)
    return params


def _parse_param(problems: Problems, name: Any, spec: Any) -> Param | None:
    key = f"search.{name}"
    if not _check_key(problems, key, name):
        return None
    if not isinstance(spec, dict):
        problems.add(key, f"{spec!r} is not a distribution; {_DIST_HELP}")
        return None
    start = problems.count()
    when = parse_when(problems, name, spec["when"]) if "when" in spec else None
    kinds = [k for k in spec if k != "when"]
    if len(kinds) != 1:
        problems.add(key, f"{kinds!r}: exactly one distribution is needed; {_DIST_HELP}")
        return None
    kind = kinds[0]
    if kind not in KINDS:
        problems.add(f"{key}.{kind}", unknown_name_message("distribution", kind, KINDS))
        return None
    if kind == "choice":
        param = Param(name, kind, values=_parse_choice(problems, name, spec[kind]), when=when)
    else:
        low, high = _parse_bounds(problems, name, f"{key}.{kind}", kind, spec[kind])
        param = Param(name, kind, low=low, high=high, when=when)
    return param if problems.count() == start else None


def _parse_choice(problems: Problems, name: str, values: Any) -> list:
    where = f"search.{name}.choice"
    if not isinstance(values, list) or not values:
        problems.add(where, f"{values!r}: a non-empty list of values is required, e.g. [a, b]")
        return []
    out: list = []
    for raw in values:
        value = _categorical(problems, where, name, raw)
        if value is _BAD:
            continue
        if value in out:
            problems.add(where, f"{value!r} is listed twice; each value must appear once")
            continue
        out.append(value)
    return out


def _categorical(problems: Problems, where: str, name: str, value: Any) -> Any:
    """A choice value as a type Optuna accepts (None/bool/int/float/str), converted to the key's
    type by `bilaw.config.yaml_values.coerce` (the conversion TrainConfig applies to the same value):
    128 -> "128" for a string key, 6 -> 6.0 for a float key, [0.3, 0.6] -> "[0.3, 0.6]" for a
    list key (TrainConfig reads that string back as a list). `_BAD` if it has no such value."""
    hint = TYPE_HINTS[name]
    is_list_key = any(typing.get_origin(t) is list for t in (hint, *typing.get_args(hint)))
    if isinstance(value, (list, tuple)) and not is_list_key:
        problems.add(where, f"{value!r} is a list, but {name!r} takes a single value")
        return _BAD
    if isinstance(value, dict):
        problems.add(where, f"{value!r}: a choice value must be a single value or a list")
        return _BAD
    try:
        value = coerce(name, list(value) if isinstance(value, tuple) else value, hint)
    except ValueError as exc:
        problems.add(where, str(exc))
        return _BAD
    return yaml.safe_dump(value, default_flow_style=True).strip() if isinstance(value, list) else value


def _parse_bounds(problems: Problems, name: str, where: str, kind: str, bounds: Any) -> tuple[Any, Any]:
    """(low, high) of a uniform, loguniform or int distribution; (None, None) after a problem."""
    def number(v: Any) -> float | None:
        try:
            n = coerce(name, v, float)  # YAML 1.1 reads 1e-4 (no dot) as a string
        except ValueError:
            return None
        return n if math.isfinite(n) else None

    nums = [number(v) for v in bounds] if isinstance(bounds, list) and len(bounds) == 2 else [None]
    if None in nums:
        problems.add(where, f"{bounds!r}: expected [low, high], two finite numbers")
        return None, None
    low, high = nums
    if kind == "int":
        if low != int(low) or high != int(high):
            problems.add(where, f"{bounds!r}: int bounds must be whole numbers")
            return None, None
        low, high = int(low), int(high)
    start = problems.count()
    if low >= high:
        problems.add(where, f"{bounds!r}: low {low!r} >= high {high!r} (allowed: low < high)")
    if kind == "loguniform" and low <= 0:
        problems.add(where, f"{bounds!r}: loguniform needs low > 0, got {low!r}")
    return (low, high) if problems.count() == start else (None, None)


def _check_grid(problems: Problems, params: dict[str, Param]) -> bool:
    """Whether every param fits a grid: a choice list without a condition (recorded if not)."""
    start = problems.count()
    for p in params.values():
        if p.kind != "choice":
            problems.add(f"search.{p.name}", f"sampler 'grid' needs choice lists; {p.kind!r} is not allowed "
                         "(use sampler tpe or random, or a choice list)")
        if p.when:
            problems.add(f"search.{p.name}.when", f"{p.when!r}: sampler 'grid' cannot take a conditional "
                         "parameter (every grid point sets every parameter); use tpe or random")
    return problems.count() == start


# ----- objectives, budget, scheduler, resources --------------------------------------------------
def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _parse_objectives(problems: Problems, data: dict, sampler: str | None) -> tuple[list[str] | None, list[str]]:
    """(metric, mode); metric is None if a metric is unknown (later checks read metric[0])."""
    metric = _as_list(data.get("metric", BEST_VAL_PGD_ACC))
    mode = _as_list(data.get("mode", "max"))
    known = True
    for m in metric:
        if m not in METRICS:
            problems.add("metric", unknown_name_message("metric", m, METRICS.names()))
            known = False
    for m in mode:
        if m not in MODES:
            problems.add("mode", f"{m!r} is not a mode; allowed: max, min")
    if len(metric) != len(mode):
        problems.add("mode", f"{data.get('mode')!r} has {len(mode)} value(s) but metric "
                     f"{data.get('metric')!r} has {len(metric)}; give one mode per metric")
    want = 2 if sampler == "nsga2" else 1
    if sampler is not None and len(metric) != want:
        problems.add("metric", f"{data.get('metric')!r}: sampler {sampler!r} needs exactly {want} "
                     f"metric{'s' if want > 1 else ''}" + (" (two objectives, e.g. [best_val_pgd_acc, val_clean_acc])"
                                                           if want == 2 else " (nsga2 takes two)"))
    if known and len(set(metric)) != len(metric):
        problems.add("metric", f"{metric!r} repeats a metric")
    return (metric if known and metric else None), mode


def _positive_int(problems: Problems, key: str, value: Any, optional: bool = False, minimum: int = 1) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        problems.add(key, f"{value!r}: an integer >= {minimum} is required")
        return None
    return value


def _parse_num_samples(problems: Problems, value: Any, sampler: str | None, grid_size: int | None) -> int | None:
    """None for a grid (its size is the number of samples) or an unknown sampler."""
    if sampler == "grid" or sampler is None:
        if value is None:
            return None
        n = _positive_int(problems, "num_samples", value)
        if sampler == "grid" and n is not None and grid_size is not None and n != grid_size:
            problems.add("num_samples", f"{value!r}: with sampler 'grid' it must equal the grid size "
                         f"{grid_size} (each grid point runs once per seed) or be left out")
        return None
    if value is None:
        problems.add("num_samples", f"missing: sampler {sampler!r} needs a number of samples >= 1")
        return None
    return _positive_int(problems, "num_samples", value)


def _parse_seeds(problems: Problems, seeds: Any) -> list[int] | None:
    try:
        return parse_seeds(seeds, allow_count=False)
    except SeedsError as exc:
        problems.add("seeds", f"{seeds!r}: {exc}")
        return None


def _parse_scheduler(problems: Problems, value: Any, sampler: str | None, seeds: list[int] | None,
                     metric: list[str] | None) -> dict | None:
    if value is None or value == "none":
        return None
    if value == "asha":
        value = {"asha": None}
    if not isinstance(value, dict) or list(value) != ["asha"]:
        problems.add("scheduler", f"{value!r}: allowed: none, asha, or "
                     "{asha: {grace_period: 2, reduction_factor: 2}}")
        return None
    opts = value["asha"] or {}
    if not isinstance(opts, dict):
        problems.add("scheduler.asha", f"{opts!r} is not a mapping of grace_period, reduction_factor")
        return None
    for key in opts:
        if key not in ("grace_period", "reduction_factor"):
            problems.add(f"scheduler.asha.{key}",
                         unknown_name_message("ASHA option", key, ("grace_period", "reduction_factor")))
    grace = _positive_int(problems, "scheduler.asha.grace_period", opts.get("grace_period", 1))
    factor = _positive_int(problems, "scheduler.asha.reduction_factor", opts.get("reduction_factor", 2), minimum=2)
    if sampler == "nsga2":
        problems.add("scheduler", "asha with sampler 'nsga2': stopped trials would enter the Pareto front "
                     "with their early values; use scheduler: none")
    if seeds is not None and len(seeds) > 1:
        problems.add("scheduler", f"asha with seeds {seeds!r}: ASHA would compare seeds of one config as "
                     "rivals; use one seed or scheduler: none")
    if metric is not None and metric[0] not in epoch_metrics():
        problems.add("scheduler", f"asha needs a per-epoch metric ({', '.join(epoch_metrics())}); "
                     f"{metric[0]!r} is only reported after training")
    return {"asha": {"grace_period": grace, "reduction_factor": factor}}


def _parse_resources(problems: Problems, value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.add("resources", f"{value!r}: expected a mapping like {{cpu: 1, gpu: 0.5}}")
        return {}
    out = {}
    for key, amount in value.items():
        if key not in ("cpu", "gpu"):
            problems.add(f"resources.{key}", unknown_name_message("resource", key, ("cpu", "gpu")))
            continue
        number = isinstance(amount, (int, float)) and not isinstance(amount, bool)
        if not number or not (amount >= 0 if key == "gpu" else amount > 0):
            problems.add(f"resources.{key}", f"{amount!r}: a number {'>= 0' if key == 'gpu' else '> 0'} is required")
            continue
        out[key] = float(amount)
    return out
