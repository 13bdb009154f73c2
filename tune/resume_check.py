"""Resume checks what it resumes: the first run of a search stores what shapes it (`search.json`
in its state folder: the space file's content, the workload, every --set, the resolved base
config, epochs, seeds, trials, sampler seed, objectives, ...), and `--resume` with any of it
changed is refused with the differences (old -> new) and the two ways on.

Only the options in MAY_CHANGE may differ on a resume: they say how the search runs or what is
done with its results, not what it searches. Every other option must be what the search started
with (given again or left out: a left-out option takes the stored value).
"""
from __future__ import annotations

import difflib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from bilaw.file_errors import load_json, require_mapping
from bilaw.training.checkpoint import atomic_write_text
from tune.plan import Plan, SearchOptions, option_default
from tune.state_files import IDENTITY_FILE

# options (SearchOptions fields) that may differ on --resume, with what they change (for --help and messages)
MAY_CHANGE = {
    "max_concurrent": "--max-concurrent",
    "race": "--race",
    "race_seeds": "--race-seeds",
    "register": "--register",
    "log_models": "--log-models",
    "time_budget": "--time-budget",
    "address": "--address",
    "break_lock": "--break-lock",
    "system_metrics_interval": "--system-metrics-interval",
    "no_system_metrics": "--no-system-metrics",
}
RESUME_HELP = ("options a resume may change: " + ", ".join(MAY_CHANGE.values())
               + "; every other option must be as the search started (a left-out one keeps its stored value)")


class ResumeMismatch(ValueError):
    """--resume with settings that differ from the stored search's; the message lists them."""


# options (SearchOptions fields) whose value a resume that leaves them out takes from the stored search
STORED_ARGS = ("workload", "set", "num_samples", "seeds", "epochs", "gpus_per_trial", "cpus_per_trial",
               "checkpoint_every", "system_metrics_interval", "no_system_metrics", "allow_suspect", "sampler_seed")


def fill_left_out(options: SearchOptions, state_dir: Path) -> SearchOptions:
    """On --resume: every shaping option left at its default takes the stored search's value, so
    `--resume` alone continues what was started (nothing is stored: nothing changes)."""
    path = Path(state_dir) / IDENTITY_FILE
    if not path.exists():
        return options
    stored = require_mapping(path, load_json(path, _fix()), ("--space",), "a search's stored settings", _fix())
    given = stored.get("args", {})
    taken = {name: given[name] for name in STORED_ARGS
             if name in given and getattr(options, name) == option_default(name)}
    if "set" in taken:
        taken["set"] = tuple(taken["set"] or ())
    return replace(options, **taken)


def identity(plan: Plan) -> dict[str, Any]:
    """What shapes the search `plan` runs: option (as typed on the command line) -> value."""
    a = plan.options
    space_text = Path(plan.space.path).read_text() if plan.space.path else ""
    return {
        "--space": plan.space.name,
        "space file": {"path": str(plan.space.path), "content": space_text},
        "--workload": plan.workload.name,
        "--set": list(a.set),
        "--epochs": plan.cfg.epochs,
        "--seeds": list(plan.seeds),
        "--num-samples": plan.num_samples,
        "--sampler-seed": plan.sampler_seed,
        "objectives": [f"{m} ({d})" for m, d in zip(plan.space.metric, plan.space.mode)],
        "--checkpoint-every": plan.checkpoint_every,
        "--gpus-per-trial": a.gpus_per_trial,
        "--cpus-per-trial": plan.cpus,
        "--allow-suspect": bool(a.allow_suspect),
        "--experiment": plan.experiment,
        "--storage-path": plan.storage_location,
        "base config": {k: v for k, v in plan.base.items()},
        "args": {name: _plain(getattr(a, name)) for name in STORED_ARGS},
    }


def store(plan: Plan) -> None:
    """Write the search's identity (the first run, before Ray starts)."""
    atomic_write_text(Path(plan.state_dir) / IDENTITY_FILE, json.dumps(identity(plan), indent=1, default=str))


def _plain(value: Any) -> Any:
    """A value as JSON stores it (the --set tuple as a list)."""
    return list(value) if isinstance(value, tuple) else value


def _fix() -> str:
    return "delete it to resume without this check"


def _space_change(old: dict, new: dict) -> str:
    lines = [ln for ln in difflib.unified_diff(old.get("content", "").splitlines(), new["content"].splitlines(),
                                               "as stored", "now", n=0, lineterm="")
             if not ln.startswith(("---", "+++", "@@"))]
    shown = "; ".join(ln.strip() for ln in lines[:6]) + (" ..." if len(lines) > 6 else "")
    where = new["path"] if old.get("path") == new["path"] else f"{old.get('path')} -> {new['path']}"
    return f"  space file {where}: content changed ({shown})"


def differences(stored: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """One line per setting that differs, old -> new."""
    out = []
    for key, new in now.items():
        if key not in stored or key == "args":
            continue
        old = json.loads(json.dumps(stored[key], default=str))
        new = json.loads(json.dumps(new, default=str))
        if old == new:
            continue
        if key == "space file":
            if old.get("content") != new["content"]:
                out.append(_space_change(old, new))
        elif key == "base config":
            if any(stored.get(k) != now.get(k) for k in ("--set", "--epochs", "--workload")):
                continue  # the option that changed it is listed
            for k in sorted(set(old) | set(new)):  # e.g. the workload's entry in workloads.yaml was edited
                if old.get(k) != new.get(k):
                    out.append(f"  base config {k}: {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}")
        else:
            out.append(f"  {key}: {_show(old)} -> {_show(new)}")
    return out


def _show(value: Any) -> str:
    if value is None:
        return "(not given)"
    if isinstance(value, list):
        return " ".join(map(str, value)) if value else "(none)"
    return str(value)


def check(plan: Plan) -> str | None:
    """Refuse (ResumeMismatch) a resume whose settings differ from the stored ones; return a note
    when the search predates the check (nothing stored)."""
    path = Path(plan.state_dir) / IDENTITY_FILE
    if not path.exists():
        return (f"note: {path} does not exist (the search began before resumes were checked); "
                f"resuming without checking its settings")
    stored = require_mapping(path, load_json(path, _fix()), ("--space",), "a search's stored settings", _fix())
    lines = differences(stored, identity(plan))
    if not lines:
        return None
    raise ResumeMismatch(
        "--resume: this search started with other settings, and a resumed search must run what it started "
        "(old -> new):\n" + "\n".join(lines) + "\n"
        f"either undo the change (the stored settings are in {path}), or start a new search with "
        f"--experiment NEW_NAME (and without --resume). {RESUME_HELP}")

