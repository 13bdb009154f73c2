"""Search spaces and workloads: the YAML files a researcher edits, loaded and validated here.

A search space (`search_spaces/<name>.yaml`) says what to search: a base config (TrainConfig
overrides), the searched parameters with their distributions, the sampler, metric(s) and mode(s),
the number of samples, the seeds, the scheduler and resources. A workload
(`search_spaces/workloads.yaml`) says where to search: dataset, model, threat model, schedule.
Every problem is a `SpaceError` that names the file, the key, the bad value and what is allowed;
loading a file, or checking a space against a config, lists all its problems in one SpaceError.

    space = load_space("ablation_capacity")
    workload = resolve_workload(space, None, load_workloads())      # or "paper", or a name
    base = base_config(space, workload, {"epochs": 3})
    check_space_against_config(space, base)
    fn = define_by_run(space, base)      # for OptunaSearch(space=fn, ...)

The package `tune.spaces` re-exports this module's names, and callers import from there. This
module holds the entry points and where the shipped spaces are found; the work is done in
tune/spaces/schema.py (the dataclasses, the names a file may use, SpaceError), tune/spaces/loading.py
(parsing and validating a file) and tune/spaces/conditions.py (a param's `when`, and the
define-by-run function). `DefineByRun` pickles as `tune.spaces.DefineByRun`, the path Ray's
experiment snapshots name, so the package must keep exporting it.
"""
from __future__ import annotations

from pathlib import Path

from bilaw.config.train_config import ConfigError, TrainConfig
from bilaw.registry import unknown_name_message
from tune.spaces.conditions import DefineByRun, check_reachable, define_by_run, when_assignments
from tune.spaces.loading import parse_space, parse_workloads, read_mapping
from tune.spaces.schema import (DEFAULT_WORKLOAD, KINDS, MODES, PAPER, SAMPLERS, SPACES_DIR, TOP_KEYS, WORKLOAD_KEYS,
                                WORKLOADS_FILE, Param, Problems, SearchSpace, SpaceError, Workload)

__all__ = [
    "DEFAULT_WORKLOAD", "KINDS", "MODES", "PAPER", "SAMPLERS", "SPACES_DIR", "TOP_KEYS", "WORKLOAD_KEYS",
    "WORKLOADS_FILE", "DefineByRun", "Param", "SearchSpace", "SpaceError", "Workload", "base_config",
    "check_space_against_config", "define_by_run", "list_spaces", "load_space", "load_workloads",
    "resolve_workload",
]


def list_spaces() -> list[tuple[str, str]]:
    """(name, description) of every shipped space, sorted by name."""
    out = []
    for name, path in sorted(_shipped().items()):
        description = read_mapping(path).get("description", "")
        out.append((name, " ".join(str(description).split())))
    return out


def load_workloads(path: Path | None = None) -> dict[str, Workload]:
    """Every workload in `path` (default `WORKLOADS_FILE`), each config validated as a TrainConfig;
    one SpaceError lists the problems of every workload."""
    path = Path(path or WORKLOADS_FILE)
    return parse_workloads(path, read_mapping(path))


def load_space(name_or_path: str) -> SearchSpace:
    """A shipped space by name (see `list_spaces`), or any YAML file in the same format; one
    SpaceError lists every problem of the file (see tune/spaces/loading.py for what is checked)."""
    path = _find_space(str(name_or_path))
    return parse_space(path, read_mapping(path), load_workloads())


def resolve_workload(space: SearchSpace, choice: str | None, workloads: dict[str, Workload]) -> Workload:
    """None -> the space's default workload; "paper" -> its paper_workload; else a workload name."""
    if choice is None:
        name, key = space.workload, "workload"
    elif choice == PAPER:
        if not space.paper_workload:
            raise SpaceError(f"{space.path}: paper_workload: space {space.name!r} names no paper workload, so "
                             "--workload paper has nothing to select; give a workload name: "
                             + ", ".join(sorted(workloads)))
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
    Every failing param and value is listed in one SpaceError.
    """
    problems = Problems(space.path)
    _check_asha_epochs(problems, space, base)
    for p in space.params.values():
        check_reachable(problems, space, p, base)
        probes = p.values if p.kind == "choice" else [p.low, p.high]
        for value in probes:
            for cond in when_assignments(p):
                try:
                    TrainConfig.from_dict({**base, **cond, p.name: value}).resolved()
                except ConfigError as exc:
                    extra = "".join(f" with {k}={v!r}" for k, v in cond.items())
                    problems.add(f"search.{p.name}", f"value {value!r}{extra} gives an invalid config: "
                                 + "; ".join(exc.errors))
    problems.raise_if_any()


def _check_asha_epochs(problems: Problems, space: SearchSpace, base: dict) -> None:
    """Ray's ASHA asserts grace_period <= max_t (the trial's epochs)."""
    asha = (space.scheduler or {}).get("asha")
    if not asha:
        return
    p = space.params.get("epochs")
    epochs = TrainConfig.from_dict(base).epochs if p is None else min(p.values) if p.values else p.low
    if asha["grace_period"] > epochs:
        problems.add("scheduler.asha.grace_period", f"{asha['grace_period']} > epochs {epochs!r} of the "
                     "config; ASHA needs grace_period <= epochs (lower it, or train longer)")


def _shipped() -> dict[str, Path]:
    """Name -> file of every space in SPACES_DIR (every YAML file but the workloads)."""
    return {p.stem: p for p in SPACES_DIR.glob("*.yaml") if p != WORKLOADS_FILE}


def _find_space(name_or_path: str) -> Path:
    """The file of a shipped space name, or `name_or_path` itself if it is a file."""
    shipped = _shipped()
    if name_or_path in shipped:
        return shipped[name_or_path]
    path = Path(name_or_path)
    if path.exists():  # a folder or unreadable file is reported by the reader, with what is wrong
        return path
    if path.suffix in (".yaml", ".yml") or "/" in name_or_path:
        raise SpaceError(f"search space file {name_or_path!r} does not exist; check the path, or name a shipped "
                         f"space (see --list-spaces)")
    raise SpaceError(unknown_name_message("search space", name_or_path, shipped)
                     + " (or give the path of a YAML file)")
