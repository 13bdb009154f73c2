"""Conditional parameters: everything about a param's `when`.

A searched param may carry `when: {key: [values]}`: it is sampled only in trials where each
named key has one of the listed values (the key's value drawn in that trial if it is searched,
else its value in the base config, else the TrainConfig default). Here is all of it: parsing a
`when`, checking what it names against the other params, whether it holds, the assignments of
its keys that a space is checked with, whether it can hold at all on a base config, and
`DefineByRun`, the Optuna define-by-run function that samples the params in that order.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import TYPE_CHECKING, Any, Callable

from bilaw.config.train_config import KEYS
from bilaw.registry import unknown_name_message
from tune.spaces.schema import Param, Problems, SearchSpace

if TYPE_CHECKING:  # optuna is only needed by the caller that runs the study
    import optuna

_DEFAULTS = {k: f.default if f.default is not dataclasses.MISSING else f.default_factory() for k, f in KEYS.items()}


def same(a: Any, b: Any) -> bool:
    """Equal as numbers (6 and 6.0), as booleans, or else as text ("1" and 1): a condition's
    values are compared with values written in YAML, on the command line or drawn by Optuna."""
    if isinstance(a, bool) or isinstance(b, bool):
        return str(a).lower() == str(b).lower()
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return str(a) == str(b)


def parse_when(problems: Problems, name: str, when: Any) -> dict[str, list] | None:
    """The `when` of param `name` as {config key: [allowed values]}; a single value stands for a
    list of one. Each bad entry is recorded in `problems` and left out."""
    where = f"search.{name}.when"
    if not isinstance(when, dict) or not when:
        problems.add(where, f"{when!r}: expected a mapping of config key -> list, e.g. {{method: [mail]}}")
        return None
    out = {}
    for key, allowed in when.items():
        if key not in KEYS:
            problems.add(f"{where}.{key}", unknown_name_message("config key", key, KEYS))
            continue
        if key == name:
            problems.add(f"{where}.{key}", "a parameter cannot be conditioned on itself")
            continue
        allowed = allowed if isinstance(allowed, list) else [allowed]
        if not allowed or any(isinstance(v, (list, dict)) for v in allowed):
            problems.add(f"{where}.{key}", f"{when[key]!r}: a non-empty list of single values is required")
            continue
        out[str(key)] = allowed
    return out


def check_when_references(problems: Problems, params: dict[str, Param]) -> None:
    """A condition on a searched key must name an unconditioned one (so it is drawn first) and,
    for a choice, only values that can be drawn. Keys that are not searched are checked against
    the base config later (`check_reachable`), once the workload is known."""
    for p in params.values():
        for key, allowed in (p.when or {}).items():
            other = params.get(key)
            if other is None:
                continue
            where = f"search.{p.name}.when.{key}"
            if other.when:
                problems.add(where, f"{key!r} is itself conditional; a condition "
                             "may only name an unconditioned searched key or a constant one")
            elif other.kind == "choice":
                for value in allowed:
                    if not any(same(value, v) for v in other.values):
                        problems.add(where, f"{value!r} is not among the searched values {other.values!r} of {key!r}")


def current_value(key: str, chosen: dict, base: dict) -> Any:
    """A condition key's value in a trial: drawn in it, else in the base config, else the default."""
    return chosen[key] if key in chosen else base.get(key, _DEFAULTS[key])


def holds(when: dict[str, list], chosen: dict, base: dict) -> bool:
    """Whether every key of `when` has one of its listed values (see `current_value`)."""
    return all(any(same(current_value(key, chosen, base), v) for v in allowed) for key, allowed in when.items())


def when_assignments(p: Param) -> list[dict]:
    """Every combination of the condition keys' listed values ([{}] without a condition): the
    settings a conditional param's values must give a valid config under."""
    keys = list(p.when or {})
    return [dict(zip(keys, combo)) for combo in itertools.product(*(p.when[k] for k in keys))] if keys else [{}]


def check_reachable(problems: Problems, space: SearchSpace, p: Param, base: dict) -> None:
    """A condition on a key that is not searched can only hold if the base config's value is
    listed; otherwise the param would never be sampled, which is recorded as a problem."""
    for key, allowed in (p.when or {}).items():
        if key in space.params:
            continue
        current = current_value(key, {}, base)
        if not any(same(current, v) for v in allowed):
            problems.add(f"search.{p.name}.when.{key}", f"never holds: {key} is {current!r} in the "
                         f"base config and not searched, not one of {allowed!r}")


class DefineByRun:
    """An Optuna define-by-run function suggesting every param of the space (a class, not a
    closure, because Ray pickles the searcher into its experiment snapshots).

    Unconditioned params come first (file order), then conditioned ones, each suggested only if
    its `when` holds for the value of its keys suggested in this trial, else their value in `base`
    (else the TrainConfig default). Returns None: constants come from Tune's param_space.

    Pickles name it `tune.spaces.catalog.DefineByRun` (see `__module__` below): snapshots written before
    this module existed name that path, and naming the public facade keeps the snapshots written
    now readable if the class moves between the facade's modules again. The attributes
    (`ordered`, `base`) are the ones those snapshots hold; keep them.
    """

    def __init__(self, space: SearchSpace, base: dict) -> None:
        params = list(space.params.values())
        self.ordered = [p for p in params if not p.when] + [p for p in params if p.when]
        self.base = dict(base)

    def __call__(self, trial: "optuna.trial.Trial") -> dict | None:
        chosen: dict[str, Any] = {}
        for p in self.ordered:
            if p.when and not holds(p.when, chosen, self.base):
                continue
            if p.kind == "choice":
                chosen[p.name] = trial.suggest_categorical(p.name, p.values)
            elif p.kind == "int":
                chosen[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high))
            else:
                chosen[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.kind == "loguniform")
        return None


# Set here, not in the facade, so a pickle names the same path whichever module was imported
# first; pickle resolves it by importing tune.spaces, which re-exports this class.
DefineByRun.__module__ = "tune.spaces"


def parse_first_trials(problems: Problems, value: Any, params: dict[str, Param], base: dict,
                       sampler: str | None) -> list[dict]:
    """`first_trials:` a list of {param: value} the searcher tries first (Optuna's enqueued
    trials), e.g. the paper's setting. Each value must be one its param can take, and a
    conditional param may only be given where its `when` holds; params left out are sampled."""
    if value is None:
        return []
    if sampler == "grid":
        problems.add("first_trials", "a grid runs every value anyway; first_trials is for the other samplers")
        return []
    if not isinstance(value, list) or not all(isinstance(point, dict) for point in value):
        problems.add("first_trials", f"{value!r} is not a list of mappings {{param: value}}")
        return []
    points = []
    for i, point in enumerate(value):
        where, ok = f"first_trials[{i}]", True
        for key, v in point.items():
            if key not in params:
                problems.add(where, unknown_name_message("searched parameter", key, params))
                ok = False
            elif not params[key].admits(v):
                problems.add(where, f"{key}: {v!r} is not a value of {params[key].describe()}")
                ok = False
            elif params[key].when and not holds(params[key].when, point, base):
                problems.add(where, f"{key}: given, but its condition ({params[key].describe()}) does not hold "
                                    f"for this trial")
                ok = False
        if ok:
            points.append(dict(point))
    return points


def define_by_run(space: SearchSpace, base: dict) -> Callable[["optuna.trial.Trial"], dict | None]:
    """The space as an Optuna define-by-run callable (picklable)."""
    return DefineByRun(space, base)
