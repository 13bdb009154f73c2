"""What a search space and a workload are: the dataclasses a loaded file becomes, the names a
file may use, and `SpaceError`, the one error every problem with such a file is reported as.

This module holds no file reading and no validation (tune/spaces/loading.py does both) so that
the types can be imported, and pickled objects that hold them read back, without the loader.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"
WORKLOADS_FILE = SPACES_DIR / "workloads.yaml"
SAMPLERS = ("grid", "tpe", "random", "nsga2")
KINDS = ("choice", "uniform", "loguniform", "int")
MODES = ("max", "min")
TOP_KEYS = ("description", "workload", "paper_workload", "base", "search", "sampler", "metric", "mode",
            "num_samples", "seeds", "scheduler", "resources", "max_concurrent", "first_trials")
WORKLOAD_KEYS = ("description", "config")
PAPER = "paper"  # --workload paper: the space's paper_workload
DEFAULT_WORKLOAD = "digits"


class SpaceError(ValueError):
    """One or more problems with a search-space or workload file (or with a choice of workload).

    Each entry of `errors` names the file, the key, the bad value and what is allowed. A single
    problem is the whole message, as one line; several are listed one per line, as
    `bilaw.config.train_config.ConfigError` lists the errors of a config, so one run of the loader shows
    everything there is to fix in a file.
    """

    def __init__(self, errors: str | list[str]) -> None:
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        if len(self.errors) == 1:
            message = self.errors[0]
        else:
            message = f"{len(self.errors)} problems:\n  - " + "\n  - ".join(self.errors)
        super().__init__(message)

    def __reduce__(self) -> tuple:
        """Rebuilt from the list of errors (not the joined message), e.g. when Ray moves it
        between processes."""
        return (type(self), (self.errors,))


class Problems:
    """The problems found so far in one file; `raise_if_any` reports them all in one SpaceError.

    Every entry reads "FILE: KEY: MESSAGE", the format a single SpaceError always had.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = path
        self.errors: list[str] = []

    def add(self, key: str, message: str) -> None:
        self.errors.append(f"{self.path}: {key}: {message}")

    def count(self) -> int:
        """How many problems are recorded; compare two counts to see whether a step found any."""
        return len(self.errors)

    def raise_if_any(self) -> None:
        if self.errors:
            raise SpaceError(self.errors)


NOT_SEARCHED = "-"  # how summaries show a conditional parameter a trial does not have


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

    def admits(self, value: Any) -> bool:
        """Whether `value` is one this parameter can take (a choice, or inside its range)."""
        if self.kind == "choice":
            return any(v == value and isinstance(v, bool) == isinstance(value, bool) for v in self.values or [])
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and value != int(value):
            return False
        return self.low <= value <= self.high

    def shown_for(self, cfg: Any) -> Any:
        """This parameter's value in a trial's config, or NOT_SEARCHED where its `when` does not
        hold (the trial was never given a value: what it has is the default)."""
        if all(getattr(cfg, key) in allowed for key, allowed in (self.when or {}).items()):
            return getattr(cfg, self.name)
        return NOT_SEARCHED


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
    first_trials: list[dict] = field(default_factory=list)  # configs the searcher tries first, in order

    @property
    def multi_objective(self) -> bool:
        return len(self.metric) > 1

    def grid_values(self) -> dict[str, list]:
        """Name -> values of the grid (grid sampler only); the input of Optuna's GridSampler."""
        if self.sampler != "grid":
            raise SpaceError(f"{self.path}: sampler: {self.sampler!r} has no grid (only sampler 'grid' does)")
        return grid_of(self.params)

    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.grid_values().values())


def grid_of(params: dict[str, Any]) -> dict[str, list]:
    """Name -> choice values of each param: the grid the params span (used while loading, before
    a SearchSpace exists, and by `SearchSpace.grid_values`)."""
    return {p.name: list(p.values or []) for p in params.values()}
