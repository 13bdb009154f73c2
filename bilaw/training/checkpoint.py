"""Atomic checkpoint files and RNG state capture, so a killed run resumes exactly.

A training checkpoint keeps its previous version (`previous_path`: checkpoint.prev.pt next to
checkpoint.pt, replaced atomically like the latest), and `resume_checkpoint` falls back to it
when the latest is missing, damaged or does not fit the run: the run then redoes one epoch
instead of failing or starting over."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from bilaw.config.yaml_values import ConfigError
from bilaw.file_errors import DamagedFileError, check_file, one_line, require_mapping


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write via a temporary file in the same folder and `os.replace`: a kill mid-write leaves
    the old file whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def previous_path(path: str | os.PathLike) -> Path:
    """Where the checkpoint `path` replaced last is kept: DIR/checkpoint.pt -> DIR/checkpoint.prev.pt."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _damaged_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.damaged{path.suffix}")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike, *, keep_previous: bool = False) -> None:
    """torch.save `state` atomically. With `keep_previous`, the file it replaces becomes
    `previous_path(path)` first (a second name for the same data, swapped in atomically), so at
    every moment both names hold a whole checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        if keep_previous and path.is_file():
            _keep_as_previous(path)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _keep_as_previous(path: Path) -> None:
    prev = previous_path(path)
    tmp = path.with_name(f".{prev.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(path, tmp)  # no copy: the latest file's data under a second name
        except OSError:  # a file system without hard links
            shutil.copy2(path, tmp)
        os.replace(tmp, prev)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_OUT_OF_MEMORY = (MemoryError, torch.cuda.OutOfMemoryError)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                    fix: str = "delete it and run again to write it anew") -> dict[str, Any]:
    """Load with `weights_only=True`: a checkpoint can hold tensors and plain data, never code.

    A file that is missing, empty, cut short, garbage, or anything but a dict is a
    `DamagedFileError` naming it, the problem and `fix` (what to do about it)."""
    path = check_file(path, fix)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except _OUT_OF_MEMORY:
        raise  # the machine's problem, not the file's
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ... on a damaged file
        raise DamagedFileError(path, _load_problem(path, exc), fix) from None
    if not isinstance(state, dict):
        raise DamagedFileError(path, f"holds a {type(state).__name__}, not a checkpoint of this project", fix)
    return state


def _load_problem(path: Path, exc: Exception) -> str:
    """What torch.load's failure says about the file, in one line (without torch's advice)."""
    try:
        with open(path, "rb") as f:
            zipped = f.read(2) == b"PK"  # torch.save writes a zip archive
    except OSError:
        zipped = False
    unsupported = [line.strip() for line in str(exc).splitlines() if "Unsupported global" in line]
    if unsupported:  # a complete file, written by code that stored other objects
        return f"holds objects other than tensors and plain data, which are never loaded ({unsupported[0][:150]})"
    if zipped:
        return f"is cut short or damaged: not a complete PyTorch file ({one_line(exc).split('. ')[0]})"
    return "is not a PyTorch file (garbage bytes, or a file of another kind)"


TRAINING_KEYS = ("config", "epoch", "step", "model", "optimizer", "rng", "best", "history")


def resume_checkpoint(path: str | os.PathLike, apply: Callable[[dict[str, Any]], None],
                      map_location: str | torch.device, warn: Callable[[str], None]) -> bool:
    """Apply the training checkpoint `path` with `apply`, or its previous version when the latest
    is missing, damaged or does not fit the run; False when neither file exists.

    `apply` raises ConfigError for a checkpoint of another config: that is reported (with the
    file), never fallen back from, as the folder belongs to another run. After a fall-back the
    damaged latest is moved aside (checkpoint.damaged.pt), so the next save does not keep it as
    the previous one, and `warn` names both files."""
    path, prev = Path(path), previous_path(path)
    if not path.exists() and not prev.exists():
        return False
    try:
        _apply(path, apply, map_location)
        return True
    except DamagedFileError as exc:
        latest = exc
    if not prev.exists():
        raise DamagedFileError(path, latest.problem, f"there is no previous checkpoint ({prev.name}) to fall back "
                                                     f"to: delete it to train the run from the start") from None
    try:
        epochs = _apply(prev, apply, map_location)
    except DamagedFileError as exc:
        raise DamagedFileError(path, f"{latest.problem}; the previous checkpoint {prev} is no better: {exc.problem}",
                               "delete both to train the run from the start") from None
    kept = ""
    if path.exists():
        os.replace(path, _damaged_path(path))
        kept = f" (the damaged file is kept as {_damaged_path(path).name})"
    warn(f"warning: {path}: {latest.problem}; resumed from the previous checkpoint {prev} instead, at epoch "
         f"{epochs} (the epochs after it are trained again){kept}")
    return True


def _apply(path: Path, apply: Callable[[dict[str, Any]], None], map_location) -> int:
    """Load and apply one training checkpoint; the number of epochs it holds."""
    fix = "delete it to train the run from the start"
    state = load_checkpoint(path, map_location, fix=fix)
    require_mapping(path, state, TRAINING_KEYS, "a training checkpoint of this trainer", fix)
    try:
        apply(state)
    except ConfigError as exc:
        raise ConfigError([f"{path}: {e}" for e in exc.errors]) from None
    except _OUT_OF_MEMORY:
        raise
    except Exception as exc:  # wrong shapes, keys or types: a damaged or foreign state
        raise DamagedFileError(path, f"does not fit this run ({one_line(exc)})", fix) from None
    return int(state["epoch"])


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), **{k: g.get_state() for k, g in generators.items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    for k, g in generators.items():
        g.set_state(state[k])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
